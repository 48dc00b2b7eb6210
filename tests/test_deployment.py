"""The Docker deployment, checked as far as a machine without a Docker engine allows.

``docker-compose config`` (Debian's docker-compose 1.29, installed by scripts/install-test-system-packages.sh)
validates and resolves docker-compose.yml with an .env made from .env.example by scripts/make-dotenv.py in a
temporary folder (never a committed .env). The resolved file is then checked against itself, the Dockerfile
and the installed Airflow: the services the DAGs need, healthchecks, restart policies, start order, and the
wiring (executor, database, broker, the task logs' own bucket and account on MinIO, the store's bucket, DAG and plugins folders,
secrets, the TensorFlow queue). The one-shot jobs' scripts run here too: airflow-init's against SQLite
with the real Airflow CLI, minio-init's against a stand-in `mc`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
MAKE_DOTENV = REPO_ROOT / "scripts" / "make-dotenv.py"

LONG_RUNNING = [
    "postgres",
    "redis",
    "minio",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-tensorflow",
]
ONE_SHOT = ["minio-init", "airflow-init"]
AIRFLOW_SERVICES = [
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-tensorflow",
]
OPTIONAL = ["flower", "demo-store"]  # behind compose profiles
SECRETS = [
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_SECRET_KEY",
    "AIRFLOW_JWT_SECRET",
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "FASHIONNET_S3_SECRET_KEY",
    "AIRFLOW_LOGS_S3_SECRET_KEY",
    "FASHIONNET_REVIEW_SECRET",
]
# Every Airflow container must see the same value of these.
SHARED_AIRFLOW_ENV = [
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__AUTH_MANAGER",
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__CORE__PLUGINS_FOLDER",
    "AIRFLOW_CONN_AIRFLOW_LOGS",
    "FASHIONNET_STORE",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "FASHIONNET_TENSORFLOW_QUEUE",
]


def _docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.skip(
            "docker-compose is not installed (scripts/install-test-system-packages.sh installs Debian's "
            "docker-compose with apt; needs root)"
        )
    return path


def _compose_config(folder: Path, *args: str) -> subprocess.CompletedProcess:
    # Only PATH and HOME: a variable in the caller's environment would override the .env under test.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder)}
    return subprocess.run(
        [_docker_compose(), "-f", str(folder / "docker-compose.yml"), *args, "config"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _dotenv(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", path.read_text(), re.M))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with docker-compose.yml and a fresh .env made from .env.example."""
    _docker_compose()
    folder = tmp_path_factory.mktemp("compose")
    shutil.copy(COMPOSE, folder / "docker-compose.yml")
    made = subprocess.run(
        [
            sys.executable,
            str(MAKE_DOTENV),
            "--example",
            str(REPO_ROOT / ".env.example"),
            "--output",
            str(folder / ".env"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    return folder


@pytest.fixture(scope="module")
def dotenv(project: Path) -> dict[str, str]:
    return _dotenv(project / ".env")


@pytest.fixture(scope="module")
def config(project: Path) -> dict:
    result = _compose_config(project, "--profile", "demo", "--profile", "flower")
    assert result.returncode == 0, result.stderr
    assert "is not set" not in result.stderr, result.stderr  # every variable the file uses is in .env.example
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def services(config: dict) -> dict[str, dict]:
    return config["services"]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _command(service: dict) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else list(command)


def _port_targets(service: dict) -> list[int]:
    """Container ports a service publishes (docker-compose 1.29 prints "host:published:target", v2 mappings)."""
    return [
        int(p["target"]) if isinstance(p, dict) else int(str(p).rsplit(":", 1)[-1].split("/")[0])
        for p in service.get("ports") or []
    ]


def import_string(path: str):
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _script(text: str) -> str:
    """A command as the container runs it: compose turns the file's "$$" escapes into "$" at run time
    (`docker-compose config` prints them still escaped)."""
    return text.replace("$$", "$")


def _dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", line))
    return env


# -- the file itself -------------------------------------------------------------------------------------------


def test_env_example_is_the_template_and_env_is_never_committed():
    example = _dotenv(REPO_ROOT / ".env.example")
    for name in SECRETS:
        assert example.get(name) == "", f"{name} must be empty in .env.example (secrets are made per install)"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT)
    assert ignored.returncode == 0, ".env must be in .gitignore"
    assert ".env" in (REPO_ROOT / ".dockerignore").read_text().split()  # nor baked into the image


def test_make_dotenv_fills_every_secret_and_never_overwrites(project: Path, dotenv: dict[str, str]):
    from cryptography.fernet import Fernet

    for name in SECRETS:
        assert re.fullmatch(r"[A-Za-z0-9_=-]{32,}", dotenv[name]), f"{name}: {dotenv[name]!r}"
    assert len({dotenv[name] for name in SECRETS}) == len(SECRETS)
    Fernet(dotenv["AIRFLOW_FERNET_KEY"].encode())  # a valid key, or Airflow refuses to start
    assert (project / ".env").stat().st_mode & 0o077 == 0
    again = subprocess.run(
        [sys.executable, str(MAKE_DOTENV), "--output", str(project / ".env")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode != 0 and "not overwriting" in again.stderr
    assert _dotenv(project / ".env") == dotenv


def test_compose_refuses_to_start_without_a_secret(tmp_path: Path, project: Path):
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    text = (project / ".env").read_text()
    (tmp_path / ".env").write_text(re.sub(r"^POSTGRES_PASSWORD=.*$", "POSTGRES_PASSWORD=", text, flags=re.M))
    result = _compose_config(tmp_path)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_every_service_the_dags_need_is_there(services: dict):
    assert set(LONG_RUNNING + ONE_SHOT) <= set(services), sorted(services)
    assert set(services) <= set(LONG_RUNNING + ONE_SHOT + OPTIONAL), sorted(services)
    assert _command(services["airflow-apiserver"]) == ["api-server"]
    assert _command(services["airflow-scheduler"]) == ["scheduler"]
    assert _command(services["airflow-dag-processor"]) == ["dag-processor"]
    assert _command(services["airflow-triggerer"]) == ["triggerer"]
    assert _command(services["airflow-worker"])[:2] == ["celery", "worker"]
    assert _command(services["airflow-worker-tensorflow"])[:2] == ["celery", "worker"]
    assert set(services["flower"]["profiles"]) == {"flower"} and set(services["demo-store"]["profiles"]) == {"demo"}


def test_airflow_services_run_the_project_image_with_the_airflow_version_we_pin(services: dict, project: Path):
    pinned = re.search(r"^apache-airflow==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.M).group(1)
    base = re.search(r"^FROM apache/airflow:(\S+)$", DOCKERFILE.read_text(), re.M).group(1)
    assert base == f"{pinned}-python3.11"
    images = {services[name]["image"] for name in AIRFLOW_SERVICES + OPTIONAL}
    assert len(images) == 1, images
    for name in AIRFLOW_SERVICES + OPTIONAL:  # built from the Dockerfile beside docker-compose.yml
        assert Path(services[name]["build"]["context"]) == project, name
    text = DOCKERFILE.read_text()
    assert "requirements-deploy.txt" in text
    deploy = (REPO_ROOT / "requirements-deploy.txt").read_text().splitlines()
    assert "-r requirements.txt" in deploy
    pins = [line for line in deploy if line and not line.startswith(("#", "-r"))]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\[\]-]+==\S+", line) for line in pins), pins
    for package in (
        "apache-airflow-providers-celery",
        "apache-airflow-providers-postgres",
        "apache-airflow-providers-fab",
        "psycopg2-binary",
        "celery",
        "redis",
    ):
        assert any(line.startswith(f"{package}==") for line in pins), package


def test_healthchecks_and_restart_policies(services: dict):
    for name in LONG_RUNNING + OPTIONAL:
        health = services[name].get("healthcheck")
        assert health and health.get("test") and not health.get("disable"), f"{name} has no healthcheck"
        assert services[name].get("restart") == "always", f"{name}: restart {services[name].get('restart')!r}"
    for name in ONE_SHOT:
        assert services[name].get("restart") == "no", f"{name} is a one-shot job"
    # The api-server healthcheck URL is served without authentication (tests/fashionnet_tools/test_airflow_local.py
    # fetches it from a live api-server) on the port the service publishes.
    api_health = " ".join(services["airflow-apiserver"]["healthcheck"]["test"])
    assert "http://localhost:8080/api/v2/version" in api_health
    assert _port_targets(services["airflow-apiserver"]) == [8080]


def _depends(service: dict) -> dict[str, str]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return {name: "service_started" for name in depends}
    return {name: spec.get("condition", "service_started") for name, spec in depends.items()}


def test_start_order(services: dict):
    assert _depends(services["minio-init"]) == {"minio": "service_healthy"}
    assert _depends(services["airflow-init"]) == {"postgres": "service_healthy"}
    core = {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "airflow-init": "service_completed_successfully",
        "minio-init": "service_completed_successfully",
    }
    for name in ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "flower"]:
        assert _depends(services[name]) == core, name
    for name in ["airflow-worker", "airflow-worker-tensorflow"]:  # tasks talk to the api-server's execution API
        assert _depends(services[name]) == {**core, "airflow-apiserver": "service_healthy"}, name
    # A start order exists (no cycle), and it is the one the dependencies above say.
    order: list[str] = []
    pending = dict.fromkeys(services)
    while pending:
        ready = [n for n in pending if set(_depends(services[n])) <= set(order)]
        assert ready, f"dependency cycle among {sorted(pending)}"
        order += sorted(ready)
        for name in ready:
            del pending[name]
    assert (
        order.index("postgres")
        < order.index("airflow-init")
        < order.index("airflow-apiserver")
        < order.index("airflow-worker")
    )


# -- the wiring ------------------------------------------------------------------------------------------------


def test_every_airflow_container_shares_the_same_settings(services: dict):
    reference = _env(services["airflow-apiserver"])
    for name in AIRFLOW_SERVICES + ["flower"]:
        env = _env(services[name])
        for key in SHARED_AIRFLOW_ENV:
            assert env.get(key) == reference[key], f"{name}: {key}"


def test_celery_executor_postgres_and_redis(services: dict, dotenv: dict[str, str]):
    env = _env(services["airflow-scheduler"])
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"

    db = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    postgres = _env(services["postgres"])
    assert db.scheme == "postgresql+psycopg2" and db.hostname == "postgres" and db.port == 5432
    assert (db.username, db.password, db.path) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        "/" + postgres["POSTGRES_DB"],
    )
    assert db.password == dotenv["POSTGRES_PASSWORD"]
    backend = urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"])
    assert backend.scheme == "db+postgresql" and backend.netloc == db.netloc and backend.path == db.path

    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert broker.scheme == "redis" and broker.hostname == "redis" and broker.port == 6379
    assert broker.password == _env(services["redis"])["REDIS_PASSWORD"] == dotenv["REDIS_PASSWORD"]
    assert "$REDIS_PASSWORD" in " ".join(_command(services["redis"])).replace("{", "").replace("}", "")
    assert _env(services["redis"])["REDISCLI_AUTH"] == dotenv["REDIS_PASSWORD"]  # the healthcheck's login

    api = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert (api.hostname, api.port, api.path) == ("airflow-apiserver", 8080, "/execution/")

    for key, name in [
        ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW_FERNET_KEY"),
        ("AIRFLOW__API__SECRET_KEY", "AIRFLOW_SECRET_KEY"),
        ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW_JWT_SECRET"),
    ]:
        assert env[key] == dotenv[name], key


def test_task_logs_have_their_own_bucket_and_account_on_minio(services: dict, dotenv: dict[str, str]):
    """Issue 17: the logs were in the store's bucket under the store's read-write key, so any task could
    rewrite them (or review/reviewers.json). Now: another bucket, another account, and each account's
    MinIO policy names only its own bucket (checked in the minio-init test below)."""
    from airflow.models.connection import Connection
    from airflow.providers.amazon.aws.utils.connection_wrapper import AwsConnectionWrapper

    env = _env(services["airflow-worker"])
    store = urlsplit(env["FASHIONNET_STORE"])
    assert store.scheme == "s3" and store.hostname == dotenv["FASHIONNET_BUCKET"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        dotenv["FASHIONNET_S3_ACCESS_KEY"],
        dotenv["FASHIONNET_S3_SECRET_KEY"],
    )
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"

    assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "True"
    logs = urlsplit(env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"])
    assert logs.scheme == "s3" and logs.hostname == dotenv["AIRFLOW_LOGS_BUCKET"] != store.hostname
    conn_id = env["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"]
    connection = AwsConnectionWrapper(Connection.from_json(env[f"AIRFLOW_CONN_{conn_id.upper()}"], conn_id=conn_id))
    assert connection.conn_type == "aws" and connection.endpoint_url == "http://minio:9000"
    assert connection.get_service_config("s3")["bucket_name"] == logs.hostname
    assert (connection.aws_access_key_id, connection.aws_secret_access_key) == (
        dotenv["AIRFLOW_LOGS_S3_ACCESS_KEY"],
        dotenv["AIRFLOW_LOGS_S3_SECRET_KEY"],
    )
    assert connection.aws_access_key_id != env["AWS_ACCESS_KEY_ID"]
    assert connection.aws_secret_access_key not in (env["AWS_SECRET_ACCESS_KEY"], "")
    # no other connection carries the pipeline's key (the old `aws` connection did, for the logs)
    for name in AIRFLOW_SERVICES:
        assert not [
            k for k in _env(services[name]) if k.startswith("AIRFLOW_CONN_") and k != "AIRFLOW_CONN_AIRFLOW_LOGS"
        ]

    # MinIO listens where the endpoint says, and minio-init makes those buckets and those accounts.
    assert 9000 in _port_targets(services["minio"])
    init = _env(services["minio-init"])
    assert (init["FASHIONNET_BUCKET"], init["AIRFLOW_LOGS_BUCKET"]) == (store.hostname, logs.hostname)
    assert (init["FASHIONNET_S3_ACCESS_KEY"], init["FASHIONNET_S3_SECRET_KEY"]) == (
        env["AWS_ACCESS_KEY_ID"],
        env["AWS_SECRET_ACCESS_KEY"],
    )
    assert (init["AIRFLOW_LOGS_S3_ACCESS_KEY"], init["AIRFLOW_LOGS_S3_SECRET_KEY"]) == (
        connection.aws_access_key_id,
        connection.aws_secret_access_key,
    )
    assert (init["MINIO_ROOT_USER"], init["MINIO_ROOT_PASSWORD"]) == (
        _env(services["minio"])["MINIO_ROOT_USER"],
        _env(services["minio"])["MINIO_ROOT_PASSWORD"],
    )


def test_dags_plugins_and_packages_come_from_the_image_layout(services: dict):
    image_env = _dockerfile_env()
    env = _env(services["airflow-dag-processor"])
    dags, plugins = env["AIRFLOW__CORE__DAGS_FOLDER"], env["AIRFLOW__CORE__PLUGINS_FOLDER"]
    assert (dags, plugins) == (image_env["AIRFLOW__CORE__DAGS_FOLDER"], image_env["AIRFLOW__CORE__PLUGINS_FOLDER"])
    copies = dict(
        (dst, src) for src, dst in re.findall(r"^COPY --chown=\S+ (\S+) (\S+)$", DOCKERFILE.read_text(), re.M)
    )
    assert copies[dags] == "dags" and copies[plugins] == "plugins"
    root = str(Path(dags).parent)
    for package in ("pipeline", "models", "scrapers", "config"):
        assert copies[f"{root}/{package}"] == package
    assert image_env["PYTHONPATH"] == root  # tasks and the review plugin import the project's packages
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    # Nothing mounts over the baked-in project.
    for name in AIRFLOW_SERVICES:
        for volume in services[name].get("volumes") or []:
            target = volume["target"] if isinstance(volume, dict) else volume.split(":")[1]
            assert not target.startswith(root), f"{name} mounts over the project: {target}"


def test_secrets_come_from_the_env_file(services: dict, dotenv: dict[str, str]):
    assert _env(services["airflow-apiserver"])["FASHIONNET_REVIEW_SECRET"] == dotenv["FASHIONNET_REVIEW_SECRET"]
    for name in [*AIRFLOW_SERVICES, *OPTIONAL]:  # issue 17: only the api-server, where the review page runs
        if name != "airflow-apiserver":
            assert "FASHIONNET_REVIEW_SECRET" not in _env(services[name]), name
    init = _env(services["airflow-init"])
    assert init["_AIRFLOW_ADMIN_PASSWORD"] == dotenv["AIRFLOW_ADMIN_PASSWORD"]
    assert init["_AIRFLOW_ADMIN_USER"] == dotenv["AIRFLOW_ADMIN_USER"]
    compose_text = COMPOSE.read_text()
    for name in SECRETS:  # no default value for a secret in the file: it must come from .env
        assert re.search(r"\$\{" + name + r":-", compose_text) is None, name


@pytest.mark.filterwarnings("ignore::Warning")  # importing the FAB auth manager warns about its web stack
def test_airflow_settings_are_ones_this_airflow_knows(services: dict):
    from airflow.configuration import conf

    known = {section: set(body.get("options", {})) for section, body in conf.configuration_description.items()}
    for name in AIRFLOW_SERVICES:
        for key in _env(services[name]):
            match = re.fullmatch(r"AIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)", key)
            if match:
                section, option = match.group(1).lower(), match.group(2).lower()
                assert option in known.get(section, set()), f"{name}: {key} is not an Airflow {conf_version()} setting"
    env = _env(services["airflow-apiserver"])
    import_string(env["AIRFLOW__CORE__AUTH_MANAGER"])
    import_string("airflow.providers.celery.executors.celery_executor.CeleryExecutor")


def conf_version() -> str:
    import airflow

    return airflow.__version__


def test_commands_and_healthchecks_are_valid_airflow_cli(services: dict):
    from airflow.cli.cli_parser import get_parser
    from airflow.configuration import conf

    parser = get_parser()
    for name in AIRFLOW_SERVICES[1:] + ["flower"]:
        parser.parse_args(_command(services[name]))  # exits (SystemExit) on an unknown command or option
    for name in ["airflow-dag-processor", "airflow-triggerer"]:
        test = services[name]["healthcheck"]["test"]
        job_type = re.search(r"airflow jobs check --job-type (\w+)", " ".join(test)).group(1)
        parser.parse_args(["jobs", "check", "--job-type", job_type, "--hostname", "x"])
    port = conf.get("scheduler", "scheduler_health_check_server_port")
    assert f"http://localhost:{port}/health" in " ".join(services["airflow-scheduler"]["healthcheck"]["test"])
    celery_app = re.search(
        r"celery --app (\S+) inspect ping", " ".join(services["airflow-worker"]["healthcheck"]["test"])
    )
    import_string(celery_app.group(1))


# -- scale-out: the TensorFlow queue ------------------------------------------------------------------------------


def _queues(service: dict) -> list[str]:
    command = _command(service)
    return command[command.index("--queues") + 1].split(",")


def test_tensorflow_tasks_have_workers_of_their_own(services: dict, dotenv: dict[str, str]):
    from airflow.configuration import conf

    queue = _env(services["airflow-dag-processor"])["FASHIONNET_TENSORFLOW_QUEUE"]
    assert queue == dotenv["FASHIONNET_TENSORFLOW_QUEUE"] == "tensorflow"
    assert _queues(services["airflow-worker-tensorflow"]) == [queue]
    assert _queues(services["airflow-worker"]) == [conf.get("operators", "default_queue")]
    command = _command(services["airflow-worker-tensorflow"])
    assert command[command.index("--concurrency") + 1] == dotenv["TENSORFLOW_WORKER_CONCURRENCY"]
    # Scalable: no fixed container name or host port on a worker (docker compose --scale airflow-worker=N).
    for name in ["airflow-worker", "airflow-worker-tensorflow"]:
        assert "container_name" not in services[name] and not services[name].get("ports")


QUEUE_PROBE = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {dags!r})
    from airflow.dag_processing.dagbag import BundleDagBag
    result = {{}}
    for value in (None, "tensorflow"):
        if value is None:
            os.environ.pop("FASHIONNET_TENSORFLOW_QUEUE", None)
        else:
            os.environ["FASHIONNET_TENSORFLOW_QUEUE"] = value
        sys.modules.pop("fashionnet_common", None)  # the queue is read when the DAG files are parsed
        bag = BundleDagBag(dag_folder={dags!r}, bundle_path={dags!r})
        assert not bag.import_errors, bag.import_errors
        result[str(value)] = {{f"{{d.dag_id}}.{{t.task_id}}": t.queue for d in bag.dags.values() for t in d.tasks}}
    print(json.dumps(result))
""")


def test_tensorflow_tasks_are_routed_by_the_environment():
    dags = str(REPO_ROOT / "dags")
    out = subprocess.run(
        [sys.executable, "-c", QUEUE_PROBE.format(dags=dags)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    queues = json.loads(out.stdout.strip().splitlines()[-1])
    # Unset (LocalExecutor, airflow standalone, dag.test): every task on Airflow's default queue.
    assert set(queues["None"].values()) == {"default"}
    routed = {task for task, queue in queues["tensorflow"].items() if queue == "tensorflow"}
    assert {
        "fashionnet_train.train",
        "fashionnet_ingest.predict_for_review",
        "fashionnet_repository_refresh.infer_shard",
        "fashionnet_recommend.recommend",
    } <= routed
    # Only TensorFlow work leaves the default queue: crawls, curation, planning and commits stay there.
    assert routed <= {
        "fashionnet_train.train",
        "fashionnet_ingest.predict_for_review",
        "fashionnet_repository_refresh.infer_shard",
        "fashionnet_recommend.recommend",
    }, routed
    assert {t for t, q in queues["tensorflow"].items() if q not in ("tensorflow", "default")} == set()


# -- the one-shot jobs' scripts -----------------------------------------------------------------------------------

FAKE_MC = """#!/bin/sh
echo "$*" >> "$MC_LOG"
case "$*" in
  "admin policy create "*) cp "$6" "$MC_POLICY.$5" ;;
esac
exit 0
"""


def test_minio_init_makes_each_bucket_and_an_account_limited_to_it(tmp_path: Path, services: dict):
    service = services["minio-init"]
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    script = _script(_command(service)[0])
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "mc").write_text(FAKE_MC)
    (tmp_path / "bin" / "mc").chmod(0o755)
    env = {
        **_env(service),
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
        "MC_LOG": str(tmp_path / "mc.log"),
        "MC_POLICY": str(tmp_path / "policy"),
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        ["/bin/sh", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "mc.log").read_text().splitlines()
    assert calls[0] == f"alias set local http://minio:9000 {env['MINIO_ROOT_USER']} {env['MINIO_ROOT_PASSWORD']}"
    accounts = {
        "fashionnet-rw": (env["FASHIONNET_BUCKET"], env["FASHIONNET_S3_ACCESS_KEY"], env["FASHIONNET_S3_SECRET_KEY"]),
        "airflow-logs-write": (
            env["AIRFLOW_LOGS_BUCKET"],
            env["AIRFLOW_LOGS_S3_ACCESS_KEY"],
            env["AIRFLOW_LOGS_S3_SECRET_KEY"],
        ),
    }
    for policy_name, (bucket, user, secret) in accounts.items():
        assert f"mb --ignore-existing local/{bucket}" in calls
        assert f"admin user add local {user} {secret}" in calls
        assert f"admin policy attach local {policy_name} --user {user}" in calls
        policy = json.loads((tmp_path / f"policy.{policy_name}").read_text())
        resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
        assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}, policy_name  # that bucket only
    assert env["FASHIONNET_BUCKET"] != env["AIRFLOW_LOGS_BUCKET"]
    logs_policy = json.loads((tmp_path / "policy.airflow-logs-write").read_text())
    actions = {a for statement in logs_policy["Statement"] for a in statement["Action"]}
    assert not [a for a in actions if "Delete" in a or a == "s3:*"]  # a log can be added to, never removed
    assert f"version enable local/{env['AIRFLOW_LOGS_BUCKET']}" in calls  # and a rewrite keeps the old version


@pytest.mark.slow
def test_airflow_init_migrates_and_creates_the_admin_once(tmp_path: Path, services: dict):
    """airflow-init's own script, with the real Airflow CLI and FAB, against SQLite instead of PostgreSQL."""
    service = services["airflow-init"]
    command = [_script(part) for part in _command(service)]
    assert command[:2] == ["bash", "-c"]  # the image's entrypoint runs `bash ...` as it is
    env = {**os.environ, **_env(service)}
    for key in list(env):
        if key.startswith(("AIRFLOW__CELERY__", "AIRFLOW__LOGGING__REMOTE", "AIRFLOW_CONN_")):
            del env[key]
    env.update(
        {
            "AIRFLOW_HOME": str(tmp_path),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(tmp_path / "plugins"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    for attempt in (1, 2):  # every `docker compose up` runs it again
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"run {attempt}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "already exist" in (result.stdout + result.stderr)
    users = subprocess.run(
        ["airflow", "users", "list", "--output", "json"], env=env, capture_output=True, text=True, timeout=120
    )
    listed = json.loads(next(line for line in users.stdout.splitlines() if line.startswith("[")))
    assert [(u["username"], u["roles"]) for u in listed] == [(env["_AIRFLOW_ADMIN_USER"], ["Admin"])]
