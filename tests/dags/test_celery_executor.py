"""The whole Asset chain on Celery workers: docker-compose.yml's deployment as local processes, with faults.

``celery_deployment.CeleryDeployment`` starts the compose topology without a Docker engine (PostgreSQL,
Redis, a moto S3 server for MinIO, airflow-init's script, api-server, scheduler, dag-processor, triggerer,
``airflow celery worker --queues default`` and a worker of the ``tensorflow`` queue with 2 slots), every
component with the environment and command docker-compose.yml gives it (read from the file itself). The
module starts it once and runs one chain, as an operator does from the UI: unpause the four DAGs through
the REST API (the FAB admin that airflow-init created) and trigger ``fashionnet_ingest``; the Assets run
``fashionnet_train``, ``fashionnet_repository_refresh`` (the ``test`` profile's 25-item shards: 3
``infer_shard`` tasks) and ``fashionnet_recommend``. Three faults are injected into that one chain, each
at its own phase, and each has its own test below:

1. scheduler SIGKILLed while a ``train`` task runs, a new scheduler started;
2. the ``tensorflow`` worker SIGKILLed (with its task processes: a machine lost) while two
   ``infer_shard`` tasks run; a replacement worker starts after (3);
3. Redis restarted while the third shard waits in the broker's ``tensorflow`` queue (no worker of that
   queue is alive then), before the replacement worker starts.

What recovers them is Airflow's: acks_late (a message is acknowledged only when its task ends: a worker
lost mid-task never acks it), the heartbeat timeout (the scheduler fails a try whose task stopped
heartbeating; ``AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT``) and task retries
(``AIRFLOW__CORE__DEFAULT_TASK_RETRIES``, docker-compose.yml), Redis' snapshot on shutdown, and the
state in PostgreSQL that a new scheduler reads. What FashionNet adds: every task is safe to run again
(a shard's outputs are staged under one key per shard and rewritten whole by a retry; the commit merges
by item_id and publishes atomically), so the retried run has every item exactly once and no staging left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery_deployment import (
    COMPOSE,
    COMPOSE_HOSTS,
    DEFAULT_WORKER,
    INIT,
    LOCAL_ONLY,
    REPO_ROOT,
    SERVERS,
    TENSORFLOW_WORKER,
    CeleryDeployment,
    Endpoints,
    compose_environment,
    compose_services,
    interpolate,
    make_dotenv,
)

CHAIN = ["fashionnet_ingest", "fashionnet_train", "fashionnet_repository_refresh", "fashionnet_recommend"]
PRODUCTS = 60  # -> ~60 catalog items: 3 shards of <= 25 (the test profile's shard_size)
TENSORFLOW_TASKS = {"predict_for_review", "train", "infer_shard", "recommend"}
CHAIN_TIMEOUT_S = 900
PHASE_TIMEOUT_S = 420
LOG_UPLOAD_TIMEOUT_S = 90
TF_QUEUE = "tensorflow"


def _parse(moment: str | None) -> datetime | None:
    return datetime.fromisoformat(moment.replace("Z", "+00:00")) if moment else None


def broker_queue_length(deployment: CeleryDeployment, queue: str) -> int:
    """Messages waiting in the broker's lists of ``queue`` (kombu: one Redis list per queue and priority)."""
    client = deployment.redis.client()
    return sum(client.llen(key) for key in client.keys(f"{queue}*") if client.type(key) == b"list")


def _latest_run(deployment: CeleryDeployment, dag_id: str) -> dict | None:
    runs = deployment.api.runs(dag_id)
    return runs[-1] if runs else None


def _running(deployment: CeleryDeployment, dag_id: str, task_id: str, min_seconds: float = 0.0) -> list[dict]:
    run = _latest_run(deployment, dag_id)
    if run is None:
        return []
    now = datetime.now().astimezone()
    return [
        t
        for t in deployment.api.task_instances(dag_id, run["dag_run_id"])
        if t["task_id"] == task_id
        and t["state"] == "running"
        and t["start_date"]
        and (now - _parse(t["start_date"])).total_seconds() >= min_seconds
    ]


@pytest.fixture(scope="module")
def chain(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory):
    """The deployment, one chain with the three faults, and what was recorded; stops everything after."""
    reason = CeleryDeployment.unavailable_reason()
    if reason:
        pytest.skip(reason)
    from fashionnet_tools.demo import upload_user_images
    from fashionnet_tools.demo_store.server import DemoStoreServer
    from fashionnet_tools.demo_store.site import build_site
    from pipeline.storage import ObjectStore

    root = tmp_path_factory.mktemp("celery")
    build_site(root / "site", n_products=PRODUCTS, seed=7)
    record: dict[str, Any] = {"faults": {}, "timings": {}}
    began = time.monotonic()
    with DemoStoreServer(root / "site", host="127.0.0.1", port=0) as shop, pytest.MonkeyPatch.context() as patch:
        deployment = CeleryDeployment(
            root / "deployment",
            moto_endpoint,
            shop.base_url,
            dotenv={"FASHIONNET_BUCKET": f"fn-{uuid.uuid4().hex[:10]}"},
        )
        try:
            deployment.start()
            record["timings"]["start"] = time.monotonic() - began
            env = deployment.dotenv
            # The store as the workers see it: FASHIONNET_STORE with the FashionNet account's keys.
            patch.setenv("AWS_ACCESS_KEY_ID", env["FASHIONNET_S3_ACCESS_KEY"])
            patch.setenv("AWS_SECRET_ACCESS_KEY", env["FASHIONNET_S3_SECRET_KEY"])
            patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
            store = ObjectStore(f"s3://{env['FASHIONNET_BUCKET']}/store", endpoint_url=moto_endpoint)
            upload_user_images(store, root / "site")  # the recommend DAG's user
            deployment.unpause(*CHAIN)
            chain_began = time.monotonic()
            record["ingest_run"] = deployment.trigger("fashionnet_ingest")

            # Fault (3): the scheduler is SIGKILLed while training runs on the tensorflow worker.
            training = deployment.wait(
                lambda: _running(deployment, "fashionnet_train", "train", 2.0), PHASE_TIMEOUT_S, "a running train task"
            )
            old_pid = deployment.components["airflow-scheduler"].proc.pid
            gap = deployment.restart_component("airflow-scheduler", kill=True)
            deployment.note(
                f"fault: scheduler {old_pid} SIGKILLed while {training[0]['task_id']}"
                f"[{training[0]['map_index']}] ran; new scheduler "
                f"{deployment.components['airflow-scheduler'].proc.pid} after {gap:.1f}s"
            )
            record["faults"]["scheduler"] = {
                "running": training,
                "old_pid": old_pid,
                "gap_s": gap,
                "new_pid": deployment.components["airflow-scheduler"].proc.pid,
            }

            # Fault (1): the tensorflow worker is SIGKILLed, with its task processes, while two shards run.
            shards = deployment.wait(
                lambda: (lambda r: r if len(r) >= 2 else None)(
                    _running(deployment, "fashionnet_repository_refresh", "infer_shard", 3.0)
                ),
                PHASE_TIMEOUT_S,
                "two infer_shard tasks running",
                every=1.0,
            )
            refresh_run = _latest_run(deployment, "fashionnet_repository_refresh")["dag_run_id"]
            tf_worker = f"{TENSORFLOW_WORKER}-1"
            killed = deployment.components[tf_worker].kill()
            staged = [k for k in store.list("repository/_staging/")]
            deployment.note(
                f"fault: {tf_worker} SIGKILLed ({len(killed)} processes) while infer_shard "
                f"{sorted(t['map_index'] for t in shards)} ran"
            )
            record["faults"]["worker"] = {
                "running": shards,
                "processes": len(killed),
                "staged_at_kill": staged,
                "refresh_run": refresh_run,
                "at": time.monotonic(),
            }

            # Fault (2): Redis restarted while a shard waits in the tensorflow queue (no worker serves it now).
            waiting = deployment.wait(
                lambda: broker_queue_length(deployment, TF_QUEUE),
                60,
                "a message in the tensorflow queue",
                every=0.5,
                watch=["airflow-scheduler", "airflow-apiserver", f"{DEFAULT_WORKER}-1"],
            )
            queued = [
                t
                for t in deployment.api.task_instances("fashionnet_repository_refresh", refresh_run)
                if t["state"] == "queued"
            ]
            down = deployment.redis.restart()
            after = broker_queue_length(deployment, TF_QUEUE)
            deployment.note(
                f"fault: redis restarted ({down:.1f}s down) with {waiting} message(s) queued; {after} after"
            )
            record["faults"]["redis"] = {"before": waiting, "after": after, "down_s": down, "queued": queued}

            replacement = deployment.start_worker(TENSORFLOW_WORKER)
            record["faults"]["worker"]["replacement"] = replacement.name
            record["faults"]["worker"]["replacement_after_s"] = time.monotonic() - record["faults"]["worker"]["at"]

            recommend = deployment.wait(
                lambda: _latest_run(deployment, "fashionnet_recommend"), PHASE_TIMEOUT_S, "a fashionnet_recommend run"
            )
            deployment.wait_run("fashionnet_recommend", recommend["dag_run_id"], PHASE_TIMEOUT_S)
            record["timings"]["chain"] = time.monotonic() - chain_began
            record["runs"] = {}
            for dag_id in CHAIN:
                runs = deployment.api.runs(dag_id)
                record["runs"][dag_id] = [
                    {**run, "task_instances": deployment.api.task_instances(dag_id, run["dag_run_id"])} for run in runs
                ]
            record["tries"] = {
                t["map_index"]: deployment.api.tries(
                    "fashionnet_repository_refresh", refresh_run, "infer_shard", t["map_index"]
                )
                for t in record["runs"]["fashionnet_repository_refresh"][-1]["task_instances"]
                if t["task_id"] == "infer_shard"
            }
            record["train_tries"] = {
                t["map_index"]: deployment.api.tries("fashionnet_train", t["dag_run_id"], "train", t["map_index"])
                for t in record["runs"]["fashionnet_train"][-1]["task_instances"]
                if t["task_id"] == "train"
            }
            record["samples"] = dict(deployment.sampler.samples)
            record["component_memory"] = deployment.component_memory()
            import boto3  # the task logs the workers uploaded (remote logging, as on MinIO)

            logs = boto3.client(
                "s3",
                endpoint_url=moto_endpoint,
                region_name="us-east-1",
                aws_access_key_id=env["AIRFLOW_LOGS_S3_ACCESS_KEY"],
                aws_secret_access_key=env["AIRFLOW_LOGS_S3_SECRET_KEY"],
            )

            def listed() -> list[str]:
                return [
                    o["Key"]
                    for page in logs.get_paginator("list_objects_v2").paginate(
                        Bucket=env["AIRFLOW_LOGS_BUCKET"], Prefix="logs/"
                    )
                    for o in page.get("Contents", [])
                ]

            # A task reports success before its supervisor uploads the log, so the last task's log can
            # arrive a moment after its run ends: wait for every successful task's log (or 90 s).
            wanted = _wanted_logs(record["runs"])
            logs_began = time.monotonic()
            deadline = logs_began + LOG_UPLOAD_TIMEOUT_S
            while True:
                record["remote_logs"] = listed()
                if not _missing_logs(wanted, record["remote_logs"]) or time.monotonic() >= deadline:
                    break
                time.sleep(2.0)
            record["timings"]["logs"] = time.monotonic() - logs_began
            record["store"] = store
            record["deployment"] = deployment
            yield record
        finally:
            stopping = time.monotonic()
            left = deployment.stop()
            record["timings"]["stop"] = time.monotonic() - stopping
            record["left"] = left
    record["timings"]["module"] = time.monotonic() - began
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in record["timings"].items()))
    assert not left, f"left running after the deployment stopped: {left}"


def _wanted_logs(runs: dict[str, list[dict]]) -> list[str]:
    """The log-key fragment of every successful task of each DAG's last run."""
    return [
        f"dag_id={dag_id}/run_id={t['dag_run_id']}/task_id={t['task_id']}/"
        for dag_id in CHAIN
        for t in runs[dag_id][-1]["task_instances"]
        if t["state"] == "success"
    ]


def _missing_logs(wanted: list[str], keys: list[str]) -> list[str]:
    return [w for w in wanted if not any(w in key for key in keys)]


def _table(instances: list[dict]) -> str:
    return "\n".join(
        f"{t['dag_id']:32} {t['task_id']:24} [{t['map_index']:>2}] {t['state']:8} try {t['try_number']} "
        f"{t['queue'] or '-':10} {t['hostname'] or '-':28} {t['start_date']} -> {t['end_date']}"
        for t in instances
    )


def _all_instances(chain: dict) -> list[dict]:
    return [t for dag_id in CHAIN for run in chain["runs"][dag_id] for t in run["task_instances"]]


# -- one source: the deployment's settings are docker-compose.yml's ---------------------------------------
def test_interpolation_follows_compose():
    variables = {"SET": "v", "EMPTY": ""}
    assert interpolate("a${SET}b$SET $$HOME", variables) == "avbv $HOME"
    assert interpolate("${EMPTY:-d} ${EMPTY-d} ${MISSING-d} ${MISSING:-}", variables) == "d  d "
    with pytest.raises(ValueError, match="nested"):
        interpolate("${MISSING:-${SET}}", variables)
    assert interpolate("${SET:?must} ${EMPTY?fine}", variables) == "v "
    with pytest.raises(ValueError, match="EMPTY: set it"):
        interpolate("${EMPTY:?set it}", variables)
    with pytest.raises(ValueError, match="MISSING"):
        interpolate("${MISSING?x}", variables)


@pytest.fixture(scope="module")
def compose_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("compose-env")
    return folder, make_dotenv(folder, {})


def test_every_component_runs_with_its_compose_environment_and_command(compose_env):
    """Each variable of each service is there, with its compose value but for the host names the compose
    network resolves and the image's paths; nothing local overrides a compose setting."""
    _, dotenv = compose_env
    services = compose_services(dotenv)
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    endpoints = Endpoints(
        postgres="127.0.0.1:5",
        redis="127.0.0.1:6",
        s3="http://127.0.0.1:7",
        api="http://127.0.0.1:8",
        shop="http://127.0.0.1:9",
    )
    for name in [INIT, *SERVERS, DEFAULT_WORKER, TENSORFLOW_WORKER]:
        compose_values = services[name]["environment"]
        local = compose_environment(services[name], endpoints)
        assert set(local) == set(raw[name]["environment"]) and not set(local) & LOCAL_ONLY, name
        for variable, value in local.items():
            assert not COMPOSE_HOSTS.search(value), (name, variable, value)
            expected = compose_values[variable]
            for old, new in endpoints.rewrites():
                expected = expected.replace(old, new)
            assert value == expected
        assert local["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert local["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:{dotenv['REDIS_PASSWORD']}@127.0.0.1:6/0"
        assert local["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO_ROOT / "dags")
    deployment = CeleryDeployment(compose_env[0], "http://127.0.0.1:7", "http://127.0.0.1:9")
    deployment.services = services
    assert deployment.argv(DEFAULT_WORKER, "w-1")[1:] == [
        "celery",
        "worker",
        "--queues",
        "default",
        "--celery-hostname",
        "w-1@%h",
    ]
    assert deployment.argv(TENSORFLOW_WORKER, "t-1")[1:5] == ["celery", "worker", "--queues", "tensorflow"]
    assert deployment.argv("airflow-scheduler")[1:] == ["scheduler"]
    assert services[INIT]["command"][:2] == ["bash", "-c"] and "airflow db migrate" in services[INIT]["command"][2]


def test_compose_reads_the_file_as_docker_compose_does(compose_env):
    """docker-compose's own resolution of every Airflow service's environment and command is ours."""
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (scripts/install-test-system-packages.sh installs it)")
    folder, dotenv = compose_env
    shutil.copy(COMPOSE, folder / "docker-compose.yml")
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    done = subprocess.run(
        [compose, "-f", str(folder / "docker-compose.yml"), "config"],
        cwd=folder,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    ours = compose_services(dotenv)

    def unescaped(value: object) -> str:  # `config` prints a literal $ as $$, to stay a valid compose file
        return "" if value is None else str(value).replace("$$", "$")

    for name in [INIT, *SERVERS, DEFAULT_WORKER, TENSORFLOW_WORKER]:
        theirs = {k: unescaped(v) for k, v in resolved[name]["environment"].items()}
        assert ours[name]["environment"] == theirs, name
        command = resolved[name]["command"]
        command = command.split() if isinstance(command, str) else command
        assert ours[name]["command"] == [unescaped(word) for word in command], name


# -- the chain ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_chain_runs_on_the_celery_workers_of_each_queue(chain):
    runs = chain["runs"]
    for dag_id in CHAIN:
        assert runs[dag_id], f"no {dag_id} run"
        assert all(run["state"] == "success" for run in runs[dag_id]), (
            dag_id,
            [(r["dag_run_id"], r["state"]) for r in runs[dag_id]],
            _table(_all_instances(chain)),
        )
    assert [run["run_type"] for run in runs["fashionnet_train"]] == ["asset_triggered"]
    instances = [t for t in _all_instances(chain) if t["state"] != "skipped"]
    table = _table(instances)
    assert all(t["state"] == "success" for t in instances), table
    on_tf = {t["task_id"] for t in instances if t["queue"] == TF_QUEUE}
    assert on_tf == TENSORFLOW_TASKS, table
    for t in instances:
        if t["queue"] == TF_QUEUE:
            assert t["hostname"].startswith(f"{TENSORFLOW_WORKER}-"), table
        else:
            assert t["queue"] == "default" and t["hostname"] == f"{DEFAULT_WORKER}-1", table
    shards = [t for t in instances if t["task_id"] == "infer_shard"]
    assert len(shards) >= 3, table
    print(f"\n{table}")


@pytest.mark.slow
def test_task_logs_reach_the_logs_bucket(chain):
    """Remote logging as docker-compose.yml sets it: every finished task's log is in AIRFLOW_LOGS_BUCKET."""
    logs = chain["remote_logs"]
    wanted = _wanted_logs(chain["runs"])
    assert len(wanted) >= len(CHAIN)
    missing = _missing_logs(wanted, logs)
    assert not missing, (missing, logs[:20])
    shard_logs = [k for k in logs if "task_id=infer_shard" in k]
    assert any("attempt=2" in k for k in shard_logs), shard_logs  # the retried shards' second tries


@pytest.mark.slow
def test_shards_ran_at_the_same_time_on_the_tensorflow_worker(chain):
    """Its 2 slots: two shards were running together (on the first tensorflow worker) when it was killed."""
    running = chain["faults"]["worker"]["running"]
    assert len(running) >= 2
    assert {t["hostname"] for t in running} == {f"{TENSORFLOW_WORKER}-1"}
    first_tries = [min(tries, key=lambda t: t["try_number"]) for tries in chain["tries"].values()]
    starts = sorted(_parse(t["start_date"]) for t in first_tries if t["start_date"])
    ends = sorted(_parse(t["end_date"]) for t in first_tries if t["end_date"])
    assert starts[1] < ends[0], "the first two shard tries did not overlap"


@pytest.mark.slow
def test_worker_killed_mid_shard_the_shard_is_retried_and_every_item_is_in_the_repository_once(chain):
    from pipeline.repository.dataset import read_repository

    fault = chain["faults"]["worker"]
    killed = {t["map_index"] for t in fault["running"]}
    tries = chain["tries"]
    for index in killed:
        history = sorted(tries[index], key=lambda t: t["try_number"])
        assert history[0]["hostname"] == f"{TENSORFLOW_WORKER}-1", history
        assert history[0]["state"] in ("failed", "up_for_retry"), history
        assert history[-1]["state"] == "success" and history[-1]["hostname"] == fault["replacement"], history
        assert history[-1]["try_number"] >= 2
    store = chain["store"]
    refresh = chain["runs"]["fashionnet_repository_refresh"][-1]
    commit = next(t for t in refresh["task_instances"] if t["task_id"] == "commit")
    assert commit["state"] == "success"
    accepted_keys = [
        k for k in store.list("curation/") if k.startswith("curation/catalog-") and k.endswith("accepted.parquet")
    ]
    accepted = sorted(set().union(*(store.read_parquet(k).column("item_id").to_pylist() for k in accepted_keys)))
    items = read_repository(store, columns=["item_id"]).column("item_id").to_pylist()
    assert len(items) == len(set(items)), "an item is in the repository more than once"
    assert sorted(items) == accepted
    assert not store.list("repository/_staging/"), store.list("repository/_staging/")
    print(
        f"\nworker fault: killed {fault['processes']} processes while shards {sorted(killed)} ran; "
        f"{len(fault['staged_at_kill'])} staged object(s) then; {len(items)} items, each once, none staged after"
    )


@pytest.mark.slow
def test_redis_restart_loses_no_queued_task(chain):
    fault = chain["faults"]["redis"]
    assert fault["before"] >= 1 and fault["after"] == fault["before"], fault
    waiting = {t["map_index"] for t in fault["queued"] if t["task_id"] == "infer_shard"}
    assert waiting, fault["queued"]
    for index in waiting:  # it ran once, from the message that survived the restart
        history = chain["tries"][index]
        assert [t["state"] for t in history] == ["success"], history


@pytest.mark.slow
def test_scheduler_killed_mid_run_the_run_finishes(chain):
    fault = chain["faults"]["scheduler"]
    assert fault["new_pid"] != fault["old_pid"]
    train = chain["runs"]["fashionnet_train"][-1]
    assert train["state"] == "success"
    interrupted = fault["running"][0]["map_index"]
    history = chain["train_tries"][interrupted]
    assert history[-1]["state"] == "success", history
    print(f"\nscheduler fault: train[{interrupted}] tries {[(t['try_number'], t['state']) for t in history]}")


@pytest.mark.slow
def test_report_resources_per_task_kind(chain):
    """Peak memory and CPU time of each task kind's processes (docs/operations.md sizes workers with them)."""
    by_id = {t["id"]: t for t in _all_instances(chain)}
    kinds: dict[str, list[dict]] = {}
    for ti_id, sample in chain["samples"].items():
        if ti_id in by_id:
            kinds.setdefault(f"{by_id[ti_id]['dag_id']}.{by_id[ti_id]['task_id']}", []).append(sample)
    assert any(kind.endswith(".infer_shard") for kind in kinds), sorted(kinds)
    lines = [
        f"{kind:48} n={len(s):2} peak RSS {max(x['rss_mb'] for x in s):7.0f} MiB  peak USS "
        f"{max(x['uss_mb'] for x in s):7.0f} MiB  CPU {max(x['cpu_s'] for x in s):6.1f} s (max)"
        for kind, s in sorted(kinds.items())
    ]
    print("\n" + "\n".join(lines))
    print(
        "components (RSS, MiB, task processes excluded): "
        + ", ".join(f"{name} {size:.0f}" for name, size in sorted(chain["component_memory"].items()))
    )
    for dag_id in CHAIN:
        for run in chain["runs"][dag_id]:
            took = (_parse(run["end_date"]) - _parse(run["start_date"])).total_seconds()
            print(
                f"{dag_id:32} {run['run_type']:16} {run['state']:8} {took:6.1f}s  {run['start_date']} -> {run['end_date']}"
            )
    print(json.dumps({k: round(v, 1) for k, v in chain["timings"].items()}))
