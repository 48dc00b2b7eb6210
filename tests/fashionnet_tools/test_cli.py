"""The ``fashionnet`` command (fashionnet_tools.cli): installed by ``make``, five subcommands, each handing
its options to the code that did the job before it existed."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fashionnet_tools import airflow_local, cli, demo
from pipeline.review.web import __main__ as review_cli

COMMANDS = ("demo", "crawl", "review", "recommend", "airflow")
FASHIONNET = Path(sys.executable).parent / "fashionnet"


@pytest.fixture
def clean_env(monkeypatch):
    """The environment ``--store``/``--profile`` write to, restored after the test."""
    monkeypatch.setattr(os, "environ", dict(os.environ))
    return os.environ


def captured(monkeypatch, module, name: str, result=0) -> list:
    calls: list = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return result

    monkeypatch.setattr(module, name, fake)
    return calls


def options(namespace: argparse.Namespace) -> dict:
    """A parsed Namespace without the dispatcher's own fields."""
    return {k: v for k, v in vars(namespace).items() if k not in ("tool", "handler")}


# -- installed --------------------------------------------------------------------------------------
def test_the_console_script_is_installed_by_make():
    """`make venv`/`demo`/`test` install the project editable: the entry point and its script exist."""
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="fashionnet")
    assert entry.value == "fashionnet_tools.cli:main"
    assert FASHIONNET.is_file() and os.access(FASHIONNET, os.X_OK), f"{FASHIONNET}: run make venv"


def test_help_lists_the_five_commands_from_any_directory(tmp_path):
    proc = subprocess.run([str(FASHIONNET), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("    ") and line.split()]
    assert tuple(name for name in listed if name in COMMANDS) == COMMANDS
    for name in COMMANDS:
        sub = cli.build_parser()._subparsers._group_actions[0].choices[name]
        assert sub.description, f"fashionnet {name} --help says nothing about what it does"


def test_review_serve_help_runs_for_real_outside_the_repository(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(FASHIONNET), "review", "serve", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: fashionnet review serve")
    for option in ("--host", "--port", "--root-path"):
        assert option in proc.stdout


def test_recommend_for_an_unknown_user_runs_for_real_and_says_why(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    store = f"file://{tmp_path / 'store'}"
    proc = subprocess.run(
        [str(FASHIONNET), "recommend", "nobody", "--store", store, "--profile", "test"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "user 'nobody' has no images under users/nobody/" in proc.stderr


# -- each subcommand: its options, to the right function ---------------------------------------------
def test_demo_gets_the_demo_drivers_own_options(monkeypatch, tmp_path):
    calls = captured(monkeypatch, demo, "run")
    argv = ["--work-dir", str(tmp_path), "--products", "9", "--profile", "test", "--k", "3", "--port", "0"]
    assert cli.main(["demo", *argv]) == 0
    ((args,), _kwargs) = calls[0]
    assert options(args) == vars(demo.parse_args(argv))
    assert (args.work_dir, args.products, args.k, args.port) == (tmp_path, 9, 3, 0)
    assert options(cli.build_parser().parse_args(["demo"])) == vars(demo.parse_args([]))  # the same defaults


def test_airflow_gets_the_launchers_own_options(monkeypatch, tmp_path):
    calls = captured(monkeypatch, airflow_local, "run", result=0)
    argv = ["--port", "8099", "--home", str(tmp_path), "--demo-store", "off", "--paused", "--parallelism", "2"]
    assert cli.main(["airflow", *argv]) == 0
    ((args,), _kwargs) = calls[0]
    assert options(args) == vars(airflow_local.parse_args(argv))
    assert (args.port, args.home, args.demo_store, args.paused) == (8099, tmp_path, "off", True)


def test_airflow_passes_the_launchers_exit_status_on(monkeypatch):
    captured(monkeypatch, airflow_local, "run", result=3)
    assert cli.main(["airflow"]) == 3


def test_airflow_runs_the_launcher_that_restores_sigint_and_starts_standalone(monkeypatch, clean_env, tmp_path):
    """`fashionnet airflow` is the launcher's own run(): an inherited ignored SIGINT is replaced by its
    handler before `airflow standalone` starts (a shell's background job would ignore Ctrl-C otherwise)."""

    class Started(Exception):
        pass

    def start_standalone(env):
        raise Started(env)

    monkeypatch.setattr(airflow_local, "start_standalone", start_standalone)
    monkeypatch.setattr(airflow_local, "embedded_default", lambda args, env: (None, []))
    monkeypatch.setattr(airflow_local, "become_subreaper", lambda: None)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(Started) as started:
            cli.main(["airflow", "--home", str(tmp_path / "home"), "--demo-store", "off"])
        assert callable(signal.getsignal(signal.SIGINT)) and callable(signal.getsignal(signal.SIGTERM))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    (env,) = started.value.args
    assert env["AIRFLOW_HOME"] == str((tmp_path / "home").resolve())


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--host", "0.0.0.0", "--port", "9000", "--root-path", "/review"],
        ["--store", "file:///tmp/x", "serve"],
        ["serve", "--store", "file:///tmp/x"],
        ["add-reviewer", "alice", "--password-stdin", "--replace"],
        ["remove-reviewer", "bob"],
        ["list-reviewers"],
    ],
)
def test_review_gets_the_review_pages_own_options(monkeypatch, argv):
    calls = captured(monkeypatch, review_cli, "run")
    assert cli.main(["review", *argv]) == 0
    ((args,), _kwargs) = calls[0]
    assert options(args) == vars(review_cli.parse_args(argv))


def test_review_without_a_subcommand_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["review"])
    assert exit_info.value.code == 2


def test_crawl_of_a_sitemap_runs_the_product_spider_as_the_readme_does(monkeypatch, clean_env):
    from scrapers import crawl

    calls = captured(monkeypatch, crawl, "run_crawl", result={"products": 2, "pages": 3, "finish_reason": "finished"})
    code = cli.main(
        [
            "crawl",
            "--retailer",
            "my-shop",
            "--crawl-id",
            "my-shop-20261202",
            "--sitemap-url",
            "https://www.my-shop.example/sitemap.xml",
            "--url-pattern",
            "/products/",
            "--store",
            "file:///tmp/fashionnet-cli-store",
        ]
    )
    assert code == 0
    (args, kwargs) = calls[0]
    assert args == ("product", "my-shop-20261202", "my-shop")
    assert kwargs == {
        "timeout_s": None,
        "incremental": None,
        "spider_args": {"sitemap_url": "https://www.my-shop.example/sitemap.xml", "url_pattern": "/products/"},
    }
    assert clean_env["FASHIONNET_STORE"] == "file:///tmp/fashionnet-cli-store"  # the crawl child reads it


def test_crawl_of_a_url_list_or_file(monkeypatch, clean_env, tmp_path):
    from scrapers import crawl

    calls = captured(monkeypatch, crawl, "run_crawl", result={})
    urls = "https://www.my-shop.example/p/1,https://www.my-shop.example/p/2"
    assert cli.main(["crawl", "--retailer", "my-shop", "--urls", urls, "--no-images", "--incremental"]) == 0
    (args, kwargs) = calls[0]
    assert args[0] == "product" and args[2] == "my-shop"
    assert args[1].startswith("my-shop-") and len(args[1]) == len("my-shop-20261202")  # <retailer>-<YYYYMMDD>
    assert kwargs == {"timeout_s": None, "incremental": True, "spider_args": {"urls": urls, "images": "false"}}

    (tmp_path / "my-shop-urls.txt").write_text("https://www.my-shop.example/p/1\n")
    monkeypatch.chdir(tmp_path)
    argv = ["crawl", "--retailer", "my-shop", "--urls-file", "my-shop-urls.txt", "--timeout-s", "3600"]
    assert cli.main([*argv, "--no-incremental"]) == 0
    (_args, kwargs) = calls[1]
    # The crawl runs at the repository root: a relative file is made absolute where it was named.
    assert kwargs["spider_args"] == {"urls_file": str(tmp_path / "my-shop-urls.txt")}
    assert (kwargs["timeout_s"], kwargs["incremental"]) == (3600.0, False)


def test_crawl_refuses_two_entry_points_or_none_and_a_pattern_without_a_sitemap(monkeypatch, clean_env, capsys):
    from scrapers import crawl

    calls = captured(monkeypatch, crawl, "run_crawl", result={})
    for argv in (
        ["crawl", "--retailer", "s", "--urls", "https://s.example/p", "--sitemap-url", "https://s.example/s.xml"],
        ["crawl", "--retailer", "s"],
        ["crawl", "--sitemap-url", "https://s.example/s.xml"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
    assert cli.main(["crawl", "--retailer", "s", "--urls", "https://s.example/p", "--url-pattern", "/p/"]) == 2
    assert "needs --sitemap-url" in capsys.readouterr().err
    assert calls == []


def test_crawl_reports_a_failed_crawl_in_one_line(monkeypatch, clean_env, capsys):
    from scrapers import crawl

    def unreachable(*args, **kwargs):
        raise crawl.CrawlUnreachable("crawl c of s reached nothing at s.example: connection refused x3", {})

    monkeypatch.setattr(crawl, "run_crawl", unreachable)
    assert cli.main(["crawl", "--retailer", "s", "--urls", "https://s.example/p"]) == 1
    assert "reached nothing at s.example" in capsys.readouterr().err


def test_recommend_passes_the_dags_params_to_recommend_for_user(monkeypatch, clean_env, tmp_path, capsys):
    from pipeline.recommend import recommendations as recommend

    summary = {
        "user_id": "demo-user",
        "score_kind": "embedding",
        "n_recommended": 1,
        "top_k": [{"rank": 1, "score": 0.5, "title": "Striped tee", "price": 9.5, "currency": "EUR"}],
        "keys": {"html": "recommendations_html/2026-12-01/run=r1/demo-user.html"},
    }
    calls = captured(monkeypatch, recommend, "recommend_for_user", result=summary)
    store = f"file://{tmp_path / 'store'}"
    argv = ["recommend", "demo-user", "--k", "5", "--score", "embedding", "--mmr-lambda", "0.5"]
    argv += ["--retailer", "a", "--retailer", "b", "--category", "tops", "--price-min", "1", "--price-max", "50"]
    argv += ["--image-key", "users/demo-user/1.jpg", "--date", "2026-12-01", "--run-id", "r1"]
    argv += ["--store", store, "--profile", "test"]
    assert cli.main(argv) == 0
    ((opened, request), _) = calls[0]
    assert (request.user_id, request.image_keys, request.run_date) == (
        "demo-user",
        ["users/demo-user/1.jpg"],
        "2026-12-01",
    )
    assert opened.uri == store and request.run_id == "r1"
    options = request.options
    assert (options.k, options.score_kind, options.mmr_lambda) == (5, "embedding", 0.5)
    filters = options.filters
    assert (filters.retailers, filters.categories, filters.price_min, filters.price_max) == (
        ("a", "b"),
        ("tops",),
        1,
        50,
    )
    assert clean_env["FASHIONNET_PROFILE"] == "test"
    out = capsys.readouterr().out
    assert "Striped tee" in out and str(tmp_path / "store" / summary["keys"]["html"]) in out


def test_recommend_defaults_are_the_dags_empty_fields(monkeypatch, clean_env, tmp_path):
    from pipeline.recommend import recommendations as recommend
    from pipeline.recommend.options import options_from_params

    calls = captured(
        monkeypatch,
        recommend,
        "recommend_for_user",
        result={"user_id": "u", "score_kind": "hybrid", "n_recommended": 0, "top_k": [], "keys": {}},
    )
    assert cli.main(["recommend", "u", "--store", f"file://{tmp_path}"]) == 0
    ((_, request), _) = calls[0]
    assert request.image_keys is None and len(request.run_date) == len("2026-12-01") and request.run_id is None
    assert request.options == options_from_params({})  # the settings' k, score and lambda


def test_recommend_refuses_a_bad_request_with_the_reason(monkeypatch, clean_env, tmp_path, capsys):
    from pipeline.recommend import recommendations as recommend

    calls = captured(monkeypatch, recommend, "recommend_for_user")
    assert cli.main(["recommend", "u", "--k", "500", "--store", f"file://{tmp_path}"]) == 2
    assert "k must be an integer from 1 to 100" in capsys.readouterr().err
    assert calls == []


def test_crawl_runs_for_real_from_another_directory_on_a_relative_url_file(tmp_path, monkeypatch):
    """README "Crawl your own shop" with `fashionnet crawl`: a shop of one's own (the demo store on
    127.0.0.1, configured in a profile file as the README says), two product URLs in a file named
    relative to a directory outside the repository."""
    import urllib.request

    from fashionnet_tools.demo_store.server import DemoStoreServer
    from fashionnet_tools.demo_store.site import build_site
    from scrapers.spiders.base import sitemap_entries

    with DemoStoreServer(build_site(tmp_path / "site", n_products=4, seed=3)) as shop:
        with urllib.request.urlopen(f"{shop.base_url}/sitemap.xml", timeout=5) as response:
            urls = sitemap_entries(response.read())[1][:2]
        (tmp_path / "my-shop-urls.txt").write_text("# two products\n" + "\n".join(urls) + "\n")
        profile = tmp_path / "my-shops.yaml"
        profile.write_text(
            f"retailers:\n  my-shop:\n    kind: sitemap\n    base_url: {shop.base_url}\n"
            f"    entry_points: [{shop.base_url}/sitemap.xml]\n"
        )
        store = tmp_path / "store"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SCRAPY_SETTINGS_MODULE")}
        argv = ["crawl", "--retailer", "my-shop", "--crawl-id", "my-shop-1", "--urls-file", "my-shop-urls.txt"]
        argv += ["--no-images", "--store", f"file://{store}", "--profile", str(profile)]
        proc = subprocess.run(
            [str(FASHIONNET), *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
        )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "crawl my-shop-1 of my-shop: 2 products" in proc.stdout
    import pyarrow.parquet as pq

    products = pq.read_table(store / "crawls" / "my-shop-1" / "products.parquet")
    assert sorted(products.column("product_url").to_pylist()) == sorted(urls)
