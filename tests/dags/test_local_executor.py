"""The whole Asset chain on a real multi-process Airflow, from one trigger: `make airflow` on a fresh
embedded default, with PostgreSQL as the metadata database.

``fashionnet_tools.airflow_local`` (``make airflow``) starts ``airflow standalone`` (scheduler, dag-processor,
triggerer, api-server, 4 LocalExecutor worker processes) with its metadata database on a throwaway
PostgreSQL cluster from Debian's packages (``postgres_server.py``), the project's ``dags/`` and a fresh
folder store; the launcher itself serves the demo shop, gives the store the demo user's photos and lets the
DAGs start unpaused (the embedded default). The test does what a new user does, and nothing else: it
triggers ``fashionnet_ingest`` once through the REST API (the admin login of the simple auth manager), then
waits. The chain runs every task for real: the query crawl (a Scrapy subprocess), curation, the
auto_accept gate, the dataset Asset -> ``fashionnet_train`` (one network per attribute, the ``test``
profile's tiny recipe) -> ``fashionnet_repository_refresh``, whose models-triggered run crawls the catalog
because the repository is empty, with ``infer_shard`` mapped over several shards (the ``test`` profile's
``shard_size`` 25) -> ``fashionnet_recommend`` for every user, which writes the demo user's HTML page.

It checks, from PostgreSQL itself, that mapped shards ran at the same time in different worker processes,
and that the repository holds a vector per curated catalog item. The same server then serves the trigger
form test (a real headless Chromium: what a user types, what the form shows, which run is created), and the
last test stops Airflow and PostgreSQL and checks that no process of either, nor the demo shop, is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from postgres_server import PostgresServer, unavailable_reason

from tests.conftest import REPO_ROOT, free_port, processes_with_airflow_home

pytestmark = pytest.mark.slow

CHAIN = ["fashionnet_ingest", "fashionnet_train", "fashionnet_repository_refresh", "fashionnet_recommend"]
REFRESH = "fashionnet_repository_refresh"
PRODUCTS = 70  # -> ~70 catalog items, 3 shards of <= 25
PARALLELISM = 4
START_TIMEOUT_S = 240  # migrating a fresh PostgreSQL database and starting four components on two shared cores
CHAIN_TIMEOUT_S = 1200  # ingest, training four networks, the refresh and the recommendations, on two shared cores
STOP_TIMEOUT_S = 90
DEMO_USER = "demo-user"


# -- helpers ------------------------------------------------------------------------------------------------
class Api:
    """The REST API as the admin user of the simple auth manager."""

    def __init__(self, base: str, password_file: Path) -> None:
        self.base = base
        password = json.loads(password_file.read_text())["admin"]
        status, body = self.call("POST", "/auth/token", {"username": "admin", "password": password}, auth=False)
        assert status == 201, body
        self.token = body["access_token"]

    def call(self, method: str, path: str, payload: Any = None, auth: bool = True) -> tuple[int, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")


def _get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def _wait(predicate, timeout_s: float, what: str, proc: subprocess.Popen, log: Path, every: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the launcher exited {proc.returncode} while waiting for {what}:\n{log.read_text()[-6000:]}")
        time.sleep(every)
    pytest.fail(f"no {what} after {timeout_s:.0f}s:\n{log.read_text()[-6000:]}")


def failed_task_logs(home: Path, dag_id: str, instances: list[dict]) -> str:
    """The ends of the task logs of the instances that did not succeed (AIRFLOW_HOME/logs/dag_id=.../*.log)."""
    tails = []
    for instance in instances:
        if instance["state"] == "success":
            continue
        for log in sorted((home / "logs").glob(f"dag_id={dag_id}/**/task_id={instance['task_id']}/**/*.log")):
            tails.append(f"--- {log.relative_to(home)}\n{log.read_text(errors='replace')[-3000:]}")
    return "\n".join(tails)


def overlaps(intervals: list[tuple[datetime, datetime]]) -> list[tuple[int, int, float]]:
    """(i, j, seconds) for every pair of intervals that ran at the same time."""
    found = []
    for i, (start_i, end_i) in enumerate(intervals):
        for j in range(i + 1, len(intervals)):
            start_j, end_j = intervals[j]
            shared = (min(end_i, end_j) - max(start_i, start_j)).total_seconds()
            if shared > 0:
                found.append((i, j, shared))
    return found


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_overlaps_and_most_at_once():
    t = [datetime(2026, 1, 1, 0, 0, s) for s in range(10)]
    assert overlaps([(t[0], t[3]), (t[2], t[5]), (t[5], t[6])]) == [(0, 1, 1.0)]  # touching is not overlapping
    assert most_at_once([(t[0], t[3]), (t[2], t[5]), (t[5], t[6])]) == 2
    assert most_at_once([(t[0], t[9]), (t[1], t[8]), (t[2], t[7])]) == 3


def dag_runs(api: Api, dag_id: str) -> list[dict]:
    status, body = api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=start_date")
    assert status == 200, body
    return body["dag_runs"]


def task_instances(postgres: PostgresServer, dag_id: str, run_id: str) -> list[dict]:
    """What the scheduler recorded, read from PostgreSQL itself."""
    conn = postgres.connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT task_id, map_index, state, start_date, end_date, pid, hostname, queue "
                "FROM task_instance WHERE dag_id = %s AND run_id = %s ORDER BY start_date",
                (dag_id, run_id),
            )
            return [
                dict(zip(["task_id", "map_index", "state", "start", "end", "pid", "hostname", "queue"], row))
                for row in cursor.fetchall()
            ]
    finally:
        conn.close()


def table_of(instances: list[dict]) -> str:
    return "\n".join(
        f"{t['task_id']}[{t['map_index']}] {t['state']} {t['start']} -> {t['end']} pid {t['pid']}" for t in instances
    )


# -- the Airflow of `make airflow`, shared by the tests of this module ----------------------------------------
@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory):
    """PostgreSQL and the launcher on a fresh embedded default (own home, store, demo shop on a free port)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    tmp_path = tmp_path_factory.mktemp("local-executor")
    home = (tmp_path / "airflow-home").resolve()
    port = free_port()
    log_path = tmp_path / "launcher.log"
    with PostgresServer() as postgres:
        # The database URL (with its password) in Airflow's own variable, as docs/operations.md advises: not
        # on a command line, where `ps` shows it.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url}
        for name in (
            "FASHIONNET_REVIEW_SECRET",
            "FASHIONNET_TENSORFLOW_QUEUE",
            "FASHIONNET_SHOP_URL",
            "FASHIONNET_REVIEW_URL",
            "FASHIONNET_DEMO_STORE",
        ):
            env.pop(name, None)
        began = time.monotonic()
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
                    str(PARALLELISM),
                    "--profile",
                    "test",
                    "--store",
                    f"file://{tmp_path / 'store'}",
                    "--stop-timeout",
                    "30",
                    "--demo-store-port",
                    "0",
                    "--demo-site",
                    str(tmp_path / "site"),
                    "--demo-products",
                    str(PRODUCTS),
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        state = types.SimpleNamespace(
            postgres=postgres,
            launcher=launcher,
            home=home,
            log=log_path,
            began=began,
            base=f"http://127.0.0.1:{port}",
            store_uri=f"file://{tmp_path / 'store'}",
            tmp=tmp_path,
            timings={},
            seen=[],
            api=None,
            chain={},
        )
        try:
            yield state
        finally:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait(timeout=10)
            for process in state.seen + processes_with_airflow_home(str(home)):
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
    assert not postgres.running()


def test_one_ingest_trigger_runs_the_chain_to_a_recommendations_page(airflow):
    """Issue 12: the first automatic chain ended green with 0 rows and 0 users (the models-triggered refresh
    only re-scored an empty repository, and there was no user); the DAGs started paused; the demo shop was
    not started."""
    began, home, log_path, launcher = airflow.began, airflow.home, airflow.log, airflow.launcher
    _wait(
        lambda: _get_status(f"{airflow.base}/api/v2/version") == 200, START_TIMEOUT_S, "api-server", launcher, log_path
    )
    password_file = home / "simple_auth_manager_passwords.json.generated"
    _wait(
        lambda: password_file.exists() and password_file.stat().st_size > 0,
        30,
        "password file",
        launcher,
        log_path,
        every=0.5,
    )
    assert password_file.stat().st_mode & 0o077 == 0  # not 0644
    airflow.api = api = Api(airflow.base, password_file)
    _wait(
        lambda: all(api.call("GET", f"/api/v2/dags/{d}")[0] == 200 for d in CHAIN),
        START_TIMEOUT_S,
        "parsed DAGs",
        launcher,
        log_path,
    )
    airflow.timings["airflow_ready"] = time.monotonic() - began
    output = log_path.read_text()
    assert "metadata database: postgresql+psycopg2://airflow:***@127.0.0.1" in output
    assert airflow.postgres.password not in output
    shop = next(line for line in output.splitlines() if "[airflow-local] demo shop: http://127.0.0.1:" in line)
    airflow.shop_url = shop.split("demo shop: ", 1)[1].split("/ ", 1)[0]
    assert _get_status(f"{airflow.shop_url}/sitemap.xml") == 200  # the launcher serves the shop

    airflow.seen = psutil.Process(launcher.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in airflow.seen if p.is_running())
    assert names.count("LocalExecutor") == PARALLELISM, names  # worker processes
    # No log server on every address (the UI itself is on 127.0.0.1): every listening socket of Airflow's
    # processes is on the loopback address.
    listening = [
        c.laddr
        for p in airflow.seen
        if p.is_running()
        for c in p.net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening and all(addr.ip in ("127.0.0.1", "::1") for addr in listening), listening
    for dag_id in CHAIN:  # nobody unpaused anything
        assert api.call("GET", f"/api/v2/dags/{dag_id}")[1]["is_paused"] is False

    status, body = api.call("POST", "/api/v2/dags/fashionnet_ingest/dagRuns", {"logical_date": None, "conf": {}})
    assert status == 200, body
    triggered = time.monotonic()

    def chain_done() -> dict | None:
        try:
            runs = {dag_id: dag_runs(api, dag_id) for dag_id in CHAIN}
        except OSError:  # an api-server too busy to answer within the timeout (two shared cores): ask again
            return None
        if any(r["state"] == "failed" for rs in runs.values() for r in rs):
            return runs
        return runs if runs["fashionnet_recommend"] and runs["fashionnet_recommend"][-1]["state"] == "success" else None

    runs = _wait(chain_done, CHAIN_TIMEOUT_S, "end of the chain", launcher, log_path, every=5)
    airflow.timings["chain"] = time.monotonic() - triggered
    problems = []
    for dag_id in CHAIN:
        for run in runs[dag_id]:
            if run["state"] != "success":
                instances = task_instances(airflow.postgres, dag_id, run["dag_run_id"])
                problems.append(
                    f"{dag_id} {run['dag_run_id']} {run['state']}:\n{table_of(instances)}\n"
                    f"{failed_task_logs(home, dag_id, instances)}"
                )
    assert not problems, "\n".join(problems) + f"\n{log_path.read_text()[-3000:]}"
    assert [len(runs[d]) for d in CHAIN] == [1, 1, 1, 1], {d: [r["run_type"] for r in runs[d]] for d in CHAIN}
    assert [runs[d][0]["run_type"] for d in CHAIN] == [
        "manual",
        "asset_triggered",
        "asset_triggered",
        "asset_triggered",
    ]
    airflow.chain = {d: runs[d][0] for d in CHAIN}

    # The demo user's page of recommendations, with items of the repository.
    from models.registry import current
    from pipeline.repository.dataset import read_repository
    from pipeline.storage import ObjectStore

    store = ObjectStore(airflow.store_uri)
    pages = [k for k in store.list("recommendations_html/") if k.endswith(f"{DEMO_USER}.html")]
    assert len(pages) == 1, store.list("recommendations_html/")
    page = store.get_bytes(pages[0]).decode()
    repository = read_repository(store)
    shown = {title for title in repository.column("title").to_pylist() if title and title in page}
    assert "<img" in page and len(shown) >= 3, page[:2000]  # recommended repository items, by their titles

    # The refresh: models-triggered, it crawled the empty repository's catalog; mapped shards in parallel.
    refresh = airflow.chain[REFRESH]
    instances = task_instances(airflow.postgres, REFRESH, refresh["dag_run_id"])
    table = table_of(instances)
    assert {t["task_id"] for t in instances} == {
        "retailers_to_crawl",
        "crawl_catalog",
        "curate",
        "plan",
        "infer_shard",
        "commit",
        "check_retailers",
    }, table
    shards = sorted((t for t in instances if t["task_id"] == "infer_shard"), key=lambda t: t["map_index"])
    assert [t["map_index"] for t in shards] == list(range(len(shards))) and len(shards) >= 3, table
    intervals = [(t["start"], t["end"]) for t in shards]
    pairs = overlaps(intervals)
    assert pairs, f"no two infer_shard instances ran at the same time:\n{table}"
    for i, j, _ in pairs:  # at the same time, so in different LocalExecutor task processes
        assert shards[i]["pid"] != shards[j]["pid"]
    plan_end = max(t["end"] for t in instances if t["task_id"] == "plan")
    commit_start = min(t["start"] for t in instances if t["task_id"] == "commit")
    assert min(s for s, _ in intervals) >= plan_end and max(e for _, e in intervals) <= commit_start

    # Every curated catalog item has its fashion vector, from the networks the chain trained.
    accepted_keys = [
        k for k in store.list("curation/") if k.startswith("curation/catalog-") and k.endswith("accepted.parquet")
    ]
    assert len(accepted_keys) == 1
    accepted = store.read_parquet(accepted_keys[0])
    commit_id = accepted_keys[0].split("/")[1][: len("catalog-YYYYMMDD")]  # batch catalog-<night>-<retailer>
    record = store.read_json(f"repository/commits/{commit_id}.json")
    assert repository.num_rows == accepted.num_rows == record["inferred"] == record["repository_rows"] > 0
    assert record["versions"] == {a: current(store, a)["version"] for a in record["versions"]}
    assert len(shards) == -(-accepted.num_rows // 25)  # the test profile's shard_size
    summaries = [
        api.call(
            "GET",
            f"/api/v2/dags/{REFRESH}/dagRuns/{refresh['dag_run_id']}/taskInstances/"
            f"infer_shard/xcomEntries/return_value?map_index={t['map_index']}",
        )
        for t in shards
    ]
    assert all(status == 200 for status, _ in summaries), summaries
    assert sum(body["value"]["vectorized"] for _, body in summaries) == accepted.num_rows
    wall = {
        d: (
            datetime.fromisoformat(r["end_date"].replace("Z", "+00:00"))
            - datetime.fromisoformat(r["start_date"].replace("Z", "+00:00"))
        ).total_seconds()
        for d, r in airflow.chain.items()
    }
    print(
        f"\n{table}\nDAG run wall times: "
        + ", ".join(f"{d} {s:.0f}s" for d, s in wall.items())
        + f"; {len(shards)} shards, at most {most_at_once(intervals)} at once"
    )
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in airflow.timings.items()))


def test_the_recommend_trigger_form_in_a_real_browser(airflow):
    """Issue 12: optional Params carried a required asterisk, review_policy showed "null", k=0 was silently
    changed to 1. In headless Chromium: the form shows the Params' titles and no required field; k=0 stays 0
    and is refused with its reason, creating no run; a good form creates the run it shows."""
    from trigger_form import open_trigger_form, submit

    if airflow.api is None or not airflow.chain:
        pytest.skip("the chain test did not get Airflow running")
    sync_playwright = trigger_form_browser()
    before = len(dag_runs(airflow.api, "fashionnet_recommend"))
    password = json.loads((airflow.home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
    with (
        sync_playwright() as playwright,
        open_trigger_form(playwright, airflow.base, "admin", password, "fashionnet_recommend") as form,
    ):
        assert form.required_fields() == []
        assert {
            "User",
            "Photos",
            "How many",
            "Score",
            "Relevance vs. diversity",
            "Retailers",
            "Categories",
            "Lowest price",
            "Highest price",
        } <= set(form.labels())
        assert form.dropdown_text("Score") == "as configured (recommend.score: hybrid)"  # not "null"
        form.fill("User", DEMO_USER)
        form.fill("How many", "0")
        assert form.value("How many") == "0"  # not clamped to 1
        status, shown = submit(form)
        assert status == 400 and "Invalid input for param k: 0 is less than the minimum of 1" in shown, shown
        assert len(dag_runs(airflow.api, "fashionnet_recommend")) == before  # no run

        form.fill("How many", "3")
        status, shown = submit(form)
        assert status == 200, shown
    runs = dag_runs(airflow.api, "fashionnet_recommend")
    assert len(runs) == before + 1
    conf = runs[-1]["conf"]
    assert conf["user_id"] == DEMO_USER and conf["k"] == 3 and not conf.get("image_keys"), conf
    with sync_playwright() as playwright:  # the ingest form: the policy's empty choice is labelled
        with open_trigger_form(playwright, airflow.base, "admin", password, "fashionnet_ingest") as form:
            assert form.required_fields() == []
            assert form.dropdown_text("Review policy") == "as configured (curation.review_policy)"
        # The detector itself: train's force_promotion is a plain boolean (always has a value), which the form
        # marks required: were the selector wrong, the empty lists above would prove nothing.
        with open_trigger_form(playwright, airflow.base, "admin", password, "fashionnet_train") as form:
            assert len(form.required_fields()) == 1


def trigger_form_browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -r requirements-browser.txt)")
    from tests.pipeline.review.web.test_review_web_browser import chromium_path

    if chromium_path() is None:
        pytest.skip("no Chromium: neither /usr/bin/chromium nor `chromium` on PATH")
    return sync_playwright


def test_stopping_airflow_leaves_no_process_and_no_session(airflow):
    launcher, home, postgres = airflow.launcher, airflow.home, airflow.postgres
    if launcher.poll() is not None:
        pytest.fail(f"the launcher exited {launcher.returncode}:\n{airflow.log.read_text()[-4000:]}")
    airflow.seen += [p for p in psutil.Process(launcher.pid).children(recursive=True) if p not in airflow.seen]
    airflow.seen += processes_with_airflow_home(str(home))
    stopping = time.monotonic()
    launcher.send_signal(signal.SIGINT)
    launcher.wait(timeout=STOP_TIMEOUT_S)
    airflow.timings["stop"] = time.monotonic() - stopping
    assert launcher.returncode == 0, airflow.log.read_text()[-4000:]
    left = [p for p in airflow.seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    left += [p for p in processes_with_airflow_home(str(home)) if p not in left]
    assert not left, f"left running: {[(p.pid, p.cmdline()) for p in left]}"
    if getattr(airflow, "shop_url", None):
        assert _get_status(f"{airflow.shop_url}/sitemap.xml") is None  # the demo shop stopped with it
    conn = postgres.connect("postgres")
    try:
        with conn.cursor() as cursor:  # every Airflow session closed
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (postgres.database,))
            assert cursor.fetchone()[0] == 0
    finally:
        conn.close()
    print(f"stopped in {airflow.timings['stop']:.1f}s")
