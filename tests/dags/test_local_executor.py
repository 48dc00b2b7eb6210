"""The refresh DAG on a real multi-process Airflow: LocalExecutor workers, PostgreSQL as the metadata database.

``pipeline.airflow_local`` (``make airflow``) starts ``airflow standalone`` (scheduler, dag-processor,
triggerer, api-server, 4 LocalExecutor worker processes) with its metadata database on a throwaway
PostgreSQL cluster from Debian's packages (``postgres_server.py``), the project's ``dags/`` and a folder
store. The store holds published (untrained, small) networks for the taxonomy's four attributes; the demo
shop runs in this process. ``fashionnet_repository_refresh`` is triggered through the REST API as an
operator would (the admin login of the simple auth manager) and runs every task for real: the catalog
crawl (a Scrapy subprocess), curation, the plan, ``infer_shard`` mapped over 3 shards (the ``test``
profile's ``shard_size`` 25), the commit. The test then reads the task instances from PostgreSQL and
checks that mapped shards ran at the same time in different worker processes, and that the run wrote
the repository. Last it stops Airflow and PostgreSQL and checks that no process of either is left.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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

DAG_ID = "fashionnet_repository_refresh"
PRODUCTS = 70  # -> ~70 catalog items, 3 shards of <= 25
PARALLELISM = 4
START_TIMEOUT_S = 240  # migrating a fresh PostgreSQL database and starting four components on two shared cores
RUN_TIMEOUT_S = 420
STOP_TIMEOUT_S = 90


# -- helpers ------------------------------------------------------------------------------------------------
def publish_small_networks(store_uri: str) -> dict[str, str]:
    """Untrained networks (VGG16 at 32 px, 8 head units) with the taxonomy's classes, published as version
    v1 of every attribute: what the refresh needs from training, in seconds. (VGG16 rather than the
    smaller EfficientNet-Lite0: at 32 px it builds, loads and traces its first batch about twice as fast,
    measured, and every shard task loads all four.)"""
    import keras

    from models.network import build_attribute_network
    from models.registry import publish
    from models.train import metrics_key, model_key, save_model
    from pipeline.settings import load_settings
    from pipeline.storage import ObjectStore

    store = ObjectStore(store_uri)
    taxonomy = load_settings({"FASHIONNET_PROFILE": "test"}).taxonomy
    versions = {}
    for seed, attribute in enumerate(taxonomy.names):
        keras.utils.set_random_seed(seed)
        classes = list(taxonomy.classes(attribute))
        model = build_attribute_network(len(classes), backbone="vgg16", image_size=32, dense_units=8)
        save_model(store, model_key(attribute, "v1"), model)
        store.write_json(metrics_key(attribute, "v1"), {"classes": classes, "image_size": 32, "val_accuracy": 0.5,
                                                         "test": {"accuracy": 0.25}})
        versions[attribute] = publish(store, attribute, "v1")["version"]
    return versions


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
            with urllib.request.urlopen(request, timeout=30) as response:
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


def failed_task_logs(home: Path, instances: list[dict]) -> str:
    """The ends of the task logs of the instances that did not succeed (AIRFLOW_HOME/logs/dag_id=.../*.log)."""
    tails = []
    for instance in instances:
        if instance["state"] == "success":
            continue
        for log in sorted((home / "logs").glob(f"dag_id={DAG_ID}/**/task_id={instance['task_id']}/**/*.log")):
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


# -- the run ------------------------------------------------------------------------------------------------
@pytest.fixture
def postgres():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server
    assert not server.running()


def test_refresh_runs_mapped_shards_in_parallel_on_local_executor_and_postgres(postgres: PostgresServer, tmp_path: Path):
    from scrapers.demo_store.server import DemoStoreServer
    from scrapers.demo_store.site import build_site

    began = time.monotonic()
    timings: dict[str, float] = {}
    store_uri = f"file://{tmp_path / 'store'}"
    home = (tmp_path / "airflow-home").resolve()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "launcher.log"
    build_site(tmp_path / "site", n_products=PRODUCTS, seed=7)

    with DemoStoreServer(tmp_path / "site", host="127.0.0.1", port=0) as shop:
        # The database URL (with its password) in Airflow's own variable, as docs/operations.md advises: not
        # on a command line, where `ps` shows it.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FASHIONNET_SHOP_URL": shop.base_url,
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url}
        for name in ("FASHIONNET_REVIEW_SECRET", "FASHIONNET_TENSORFLOW_QUEUE"):
            env.pop(name, None)
        with open(log_path, "w") as log:
            launcher = subprocess.Popen(
                [sys.executable, "-m", "pipeline.airflow_local", "--port", str(port), "--home", str(home),
                 "--parallelism", str(PARALLELISM), "--profile", "test", "--store", store_uri, "--stop-timeout", "30"],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        seen: list[psutil.Process] = []
        try:
            # While Airflow migrates its database and starts: the networks the refresh infers with.
            versions = publish_small_networks(store_uri)
            timings["models"] = time.monotonic() - began

            _wait(lambda: _get_status(f"{base}/api/v2/version") == 200, START_TIMEOUT_S, "api-server", launcher, log_path)
            _wait(lambda: (home / "simple_auth_manager_passwords.json.generated").exists(), 30, "password file",
                  launcher, log_path, every=0.5)
            api = Api(base, home / "simple_auth_manager_passwords.json.generated")
            _wait(lambda: api.call("GET", f"/api/v2/dags/{DAG_ID}")[0] == 200, START_TIMEOUT_S, f"parsed {DAG_ID}",
                  launcher, log_path)
            timings["airflow_ready"] = time.monotonic() - began
            output = log_path.read_text()
            assert "metadata database: postgresql+psycopg2://airflow:***@127.0.0.1" in output
            assert postgres.password not in output

            seen = psutil.Process(launcher.pid).children(recursive=True)
            names = " ".join(" ".join(p.cmdline()) for p in seen if p.is_running())
            assert names.count("LocalExecutor") == PARALLELISM, names  # worker processes

            status, body = api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
            assert status == 200, body
            status, body = api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {}})
            assert status == 200, body
            run_id = body["dag_run_id"]
            triggered = time.monotonic()

            def finished() -> str | None:
                state = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")[1]["state"]
                return state if state in ("success", "failed") else None

            state = _wait(finished, RUN_TIMEOUT_S, f"end of run {run_id}", launcher, log_path)
            timings["run"] = time.monotonic() - triggered

            # What the scheduler recorded, read from PostgreSQL itself.
            conn = postgres.connect()
            try:
                with conn.cursor() as cursor:
                    cursor.execute(
                        "SELECT task_id, map_index, state, start_date, end_date, pid, hostname, queue "
                        "FROM task_instance WHERE dag_id = %s AND run_id = %s ORDER BY start_date",
                        (DAG_ID, run_id))
                    instances = [dict(zip(["task_id", "map_index", "state", "start", "end", "pid", "hostname",
                                           "queue"], row)) for row in cursor.fetchall()]
                    cursor.execute("SELECT state, start_date, end_date FROM dag_run WHERE dag_id = %s AND run_id = %s",
                                   (DAG_ID, run_id))
                    run_state, run_start, run_end = cursor.fetchone()
            finally:
                conn.close()
            table = "\n".join(f"{t['task_id']}[{t['map_index']}] {t['state']} {t['start']} -> {t['end']} pid {t['pid']}"
                              for t in instances)
            assert state == "success" == run_state, \
                f"run {state}:\n{table}\n{failed_task_logs(home, instances)}\n{log_path.read_text()[-4000:]}"
            assert {t["task_id"] for t in instances} == {"retailers_to_crawl", "crawl_catalog", "curate", "plan",
                                                         "infer_shard", "commit", "check_retailers"}
            assert all(t["state"] == "success" for t in instances), table

            shards = sorted((t for t in instances if t["task_id"] == "infer_shard"), key=lambda t: t["map_index"])
            assert [t["map_index"] for t in shards] == list(range(len(shards))) and len(shards) >= 3, table
            intervals = [(t["start"], t["end"]) for t in shards]
            pairs = overlaps(intervals)
            assert pairs, f"no two infer_shard instances ran at the same time:\n{table}"
            for i, j, _ in pairs:  # at the same time, so in different LocalExecutor task processes
                assert shards[i]["pid"] != shards[j]["pid"]
            peak = most_at_once(intervals)
            plan_end = max(t["end"] for t in instances if t["task_id"] == "plan")
            commit_start = min(t["start"] for t in instances if t["task_id"] == "commit")
            assert min(s for s, _ in intervals) >= plan_end and max(e for _, e in intervals) <= commit_start
            shard_wall = (max(e for _, e in intervals) - min(s for s, _ in intervals)).total_seconds()
            shard_sum = sum((e - s).total_seconds() for s, e in intervals)

            # The outputs: every curated catalog item has its fashion vector, from the published networks.
            from pipeline.repository import read_repository
            from pipeline.storage import ObjectStore

            store = ObjectStore(store_uri)
            accepted_keys = [k for k in store.list("curation/") if k.startswith("curation/catalog-")
                             and k.endswith("accepted.parquet")]
            assert len(accepted_keys) == 1
            accepted = store.read_parquet(accepted_keys[0])
            commit_id = accepted_keys[0].split("/")[1][:len("catalog-YYYYMMDD")]  # batch catalog-<night>-<retailer>
            record = store.read_json(f"repository/commits/{commit_id}.json")
            repository = read_repository(store)
            assert repository.num_rows == accepted.num_rows == record["inferred"] == record["repository_rows"]
            assert record["actions"]["new"] == accepted.num_rows and record["versions"] == versions
            assert sorted(repository.column("item_id").to_pylist()) == sorted(accepted.column("item_id").to_pylist())
            assert not store.list("repository/_staging")
            assert len(shards) == -(-accepted.num_rows // 25)  # the test profile's shard_size
            summaries = [api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/infer_shard/"
                                         f"xcomEntries/return_value?map_index={t['map_index']}")
                         for t in shards]
            assert all(status == 200 for status, _ in summaries), summaries
            assert sum(body["value"]["vectorized"] for _, body in summaries) == accepted.num_rows

            seen += [p for p in psutil.Process(launcher.pid).children(recursive=True) if p not in seen]
            seen += processes_with_airflow_home(str(home))
            stopping = time.monotonic()
            launcher.send_signal(signal.SIGINT)
            launcher.wait(timeout=STOP_TIMEOUT_S)
            timings["stop"] = time.monotonic() - stopping
            assert launcher.returncode == 0, log_path.read_text()[-4000:]
            left = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            left += [p for p in processes_with_airflow_home(str(home)) if p not in left]
            assert not left, f"left running: {[(p.pid, p.cmdline()) for p in left]}"
            conn = postgres.connect("postgres")
            try:
                with conn.cursor() as cursor:  # every Airflow session closed
                    cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (postgres.database,))
                    assert cursor.fetchone()[0] == 0
            finally:
                conn.close()
        finally:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait(timeout=10)
            for process in seen + processes_with_airflow_home(str(home)):
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass

    timings["total"] = time.monotonic() - began
    print(f"\n{table}")
    print(f"run {run_id}: {run_state} in {(run_end - run_start).total_seconds():.1f}s (dag_run start -> end); "
          f"{len(shards)} infer_shard instances, at most {peak} at once, {len(pairs)} overlapping pair(s) "
          f"({', '.join(f'{i}&{j} {s:.1f}s' for i, j, s in pairs)}); shards: {shard_wall:.1f}s wall for "
          f"{shard_sum:.1f}s of task time; pids {[t['pid'] for t in shards]}")
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
