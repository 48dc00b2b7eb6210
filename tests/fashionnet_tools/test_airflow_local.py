"""`make airflow` (fashionnet_tools.airflow_local): Airflow standalone with the project's DAGs, stopped cleanly on Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from fashionnet_tools.airflow_local import (
    PASSWORD_FILE,
    airflow_environment,
    database_label,
    demo_store_base,
    demo_store_command,
    embedded_default,
    ensure_demo_user,
    parse_args,
    private_password_file,
    start_demo_store,
    write_airflow_wrapper,
)
from pipeline.settings import REPO_ROOT
from tests.conftest import free_port, processes_with_airflow_home

START_TIMEOUT_S = 180  # a cold first start migrates a fresh SQLite database on two shared cores
STOP_TIMEOUT_S = 90


def test_environment_points_airflow_at_the_project(tmp_path: Path):
    args = parse_args(["--port", "18080", "--home", str(tmp_path / "home"), "--parallelism", "3"])
    env = airflow_environment(args, base={"PATH": "/usr/bin", "FASHIONNET_REVIEW_SECRET": "s"})
    assert env["AIRFLOW_HOME"] == str((tmp_path / "home").resolve())
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO_ROOT / "dags")
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(REPO_ROOT / "plugins")
    assert env["AIRFLOW__CORE__PARALLELISM"] == "3"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__API__PORT"] == "18080" and env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO_ROOT)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)  # standalone runs `airflow ...`
    assert env["FASHIONNET_PROFILE"] == "demo"
    assert env["FASHIONNET_REVIEW_SECRET"] == "s"


def test_metadata_database_is_sqlite_in_home_unless_a_url_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", raising=False)
    base = {"FASHIONNET_REVIEW_SECRET": "s", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:////elsewhere.db"}
    env = airflow_environment(parse_args(["--home", str(tmp_path)]), base=base)
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env  # standalone's default: SQLite in AIRFLOW_HOME
    assert database_label(env) == f"SQLite in {tmp_path.resolve()}"

    url = "postgresql+psycopg2://airflow:s3cret@127.0.0.1:5433/airflow"
    env = airflow_environment(parse_args(["--home", str(tmp_path), "--sql-alchemy-conn", url]), base=base)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == url
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert database_label(env) == "postgresql+psycopg2://airflow:***@127.0.0.1:5433/airflow"  # printed: no password

    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", url)  # the usual Airflow variable is the default
    assert parse_args([]).sql_alchemy_conn == url


def test_review_secret_is_generated_once_and_kept(tmp_path: Path):
    args = argparse.Namespace(**{**vars(parse_args(["--home", str(tmp_path)])), "store": None})
    first = airflow_environment(args, base={})["FASHIONNET_REVIEW_SECRET"]
    assert len(first) >= 32
    assert airflow_environment(args, base={})["FASHIONNET_REVIEW_SECRET"] == first
    assert (tmp_path / "fashionnet_review_secret").stat().st_mode & 0o077 == 0


def test_the_password_file_is_private_before_the_api_server_fills_it(tmp_path: Path):
    """Issue 12: Airflow's generated password file was 0644."""
    path = private_password_file(tmp_path)
    assert path == tmp_path / PASSWORD_FILE and path.stat().st_mode & 0o777 == 0o600 and path.read_text() == ""
    path.write_text('{"admin": "x"}\n')
    path.chmod(0o644)
    private_password_file(tmp_path)  # a restart keeps the passwords and makes the file private again
    assert path.read_text() == '{"admin": "x"}\n' and path.stat().st_mode & 0o777 == 0o600


def test_the_airflow_wrapper_starts_no_log_server(tmp_path: Path):
    """Issue 12: the scheduler's and triggerer's log servers listened on 0.0.0.0 beside a 127.0.0.1 UI."""
    folder = write_airflow_wrapper(tmp_path, python="/venv/bin/python")
    script = (folder / "airflow").read_text().splitlines()
    assert os.access(folder / "airflow", os.X_OK) and script[0] == "#!/bin/sh"
    assert (
        'case "$1" in scheduler|triggerer) exec "/venv/bin/python" -m airflow "$@" --skip-serve-logs ;; esac' in script
    )
    assert script[-1] == 'exec "/venv/bin/python" -m airflow "$@"'  # every other command as it is
    # standalone runs `airflow <command>` from PATH: the wrapper comes first (checked for real by the slow test)


def test_the_embedded_default_gets_its_shop_a_demo_user_and_unpaused_dags(tmp_path: Path):
    args = parse_args(
        [
            "--home",
            str(tmp_path / "home"),
            "--store",
            f"file://{tmp_path / 'store'}",
            "--demo-store-port",
            "0",
            "--demo-site",
            str(tmp_path / "site"),
            "--demo-products",
            "6",
        ]
    )
    env = airflow_environment(args, base={"PATH": "/usr/bin"})
    assert env["FASHIONNET_REVIEW_URL"] == "http://127.0.0.1:8080/fashionnet-review/"  # the approval's link
    assert demo_store_base(env) == "http://127.0.0.1:8765"  # the settings' demo-store: on this machine
    shop, written = embedded_default(args, env)
    try:
        base = shop.base_url
        assert env["FASHIONNET_SHOP_URL"] == base and env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
        status, _ = _get(f"{base}/sitemap.xml")
        assert status == 200
        assert len(written) == 4 and all(k.startswith("users/demo-user/") for k in written)
        assert ensure_demo_user(env, tmp_path / "site") == []  # the user's photos are kept, not added twice
    finally:
        shop.stop()
    with pytest.raises(OSError):
        _get(f"{base}/sitemap.xml")
    # Elsewhere (a shop of one's own): no demo shop, and the banner's command works from anywhere.
    remote = {**env, "FASHIONNET_SHOP_URL": "https://shop.example"}
    assert demo_store_base(remote) is None and start_demo_store(args, remote) is None
    assert start_demo_store(parse_args(["--demo-store", "off"]), dict(env)) is None
    command = demo_store_command(args, env)
    assert command.startswith(f"cd {REPO_ROOT} && {sys.executable} -m fashionnet_tools.demo_store --site ")


def _ignore_sigint() -> None:
    # What a shell does to a background job: the launcher must cope with an inherited, ignored SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, ""


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_make_airflow_serves_the_project_and_stops_cleanly(tmp_path: Path, stop_signal: int):
    port = free_port()
    home = tmp_path / "airflow-home"
    log_path = tmp_path / "launcher.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FASHIONNET_STORE": f"file://{tmp_path / 'store'}"}
    env.pop("FASHIONNET_REVIEW_SECRET", None)
    with open(log_path, "w") as log:
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fashionnet_tools.airflow_local",
                "--port",
                str(port),
                "--home",
                str(home),
                "--parallelism",
                "2",
                "--stop-timeout",
                "20",
                "--demo-store-port",
                "0",
                "--demo-site",
                str(tmp_path / "site"),
                "--demo-products",
                "6",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_ignore_sigint,
        )
    base = f"http://127.0.0.1:{port}"
    seen: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        status = None
        while time.monotonic() < deadline and launcher.poll() is None:
            try:
                status, body = _get(f"{base}/api/v2/version")
            except OSError:
                status = None
            if status == 200:
                break
            time.sleep(2)
        output = log_path.read_text()
        assert status == 200, f"api-server not answering after {START_TIMEOUT_S}s:\n{output[-4000:]}"
        assert '"version"' in body  # unauthenticated: docker-compose.yml's api-server healthcheck URL

        # The launcher told where to go and where the admin password is; the file is there.
        assert f"{base}/" in output
        assert str(home / PASSWORD_FILE) in output
        deadline = time.monotonic() + 30
        while not (home / PASSWORD_FILE).exists() and time.monotonic() < deadline:
            time.sleep(1)
        assert (home / PASSWORD_FILE).exists() and (home / PASSWORD_FILE).stat().st_mode & 0o077 == 0
        # The demo shop runs beside Airflow (the embedded default), on the URL the banner gives.
        shop = output.split("[airflow-local] demo shop: ", 1)[1].split("/ ", 1)[0]
        assert _get(f"{shop}/sitemap.xml")[0] == 200
        # The plugins folder is the project's: the review page answers inside the api-server.
        status, page = _get(f"{base}/fashionnet-review/login")
        assert status == 200 and "<form" in page.lower(), page[:500]

        seen = psutil.Process(launcher.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in seen if p.is_running())
        # (the api-server renames its process "airflow api_server -- ..."; LocalExecutor workers "airflow worker")
        for component in ("standalone", "scheduler", "dag-processor", "api_server", "triggerer", "LocalExecutor"):
            assert component in names, f"{component} not running: {names}"
        assert names.count("LocalExecutor") == 2  # --parallelism 2, not 32 workers
        # Nothing of Airflow listens beyond 127.0.0.1 (no log server on 0.0.0.0: serve-logs is not started).
        listening = [
            c.laddr for p in seen if p.is_running() for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN
        ]
        assert listening and all(a.ip in ("127.0.0.1", "::1") for a in listening), listening
        assert "airflow serve-logs" not in names and "--skip-serve-logs" in names  # the wrapper was used
        seen += processes_with_airflow_home(str(home.resolve()))

        started = time.monotonic()
        launcher.send_signal(stop_signal)  # SIGINT: what Ctrl-C in `make airflow`'s terminal delivers to it
        launcher.wait(timeout=STOP_TIMEOUT_S)
        stop_s = time.monotonic() - started
        output = log_path.read_text()
        assert launcher.returncode == 0, output[-4000:]
        assert "stopping Airflow" in output and "stopped" in output
        left = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        left += [p for p in processes_with_airflow_home(str(home.resolve())) if p not in left]
        assert not left, f"left running: {[(p.pid, p.cmdline()) for p in left]}"
        with pytest.raises(OSError):  # the demo shop stopped with Airflow
            _get(f"{shop}/sitemap.xml")
        print(f"stopped in {stop_s:.1f}s")
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
        for process in seen + processes_with_airflow_home(str(home.resolve())):
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
