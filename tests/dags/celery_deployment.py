"""docker-compose.yml's topology without a Docker engine: the CeleryExecutor deployment as local processes.

``CeleryDeployment`` starts what ``docker compose up`` starts, each piece on 127.0.0.1 on a free port:
PostgreSQL (``postgres_server.py``) as the metadata database and Celery result backend, Redis
(``redis_server.py``, with a password) as the broker, a moto S3 server in place of MinIO (the store's
bucket and the task logs' bucket, as ``minio-init`` makes them), then ``airflow-init``'s script
(``airflow db migrate``, ``airflow users create``), the api-server, scheduler, dag-processor and
triggerer, and the Celery workers: ``airflow celery worker --queues default`` and one on the
TensorFlow queue.

One source: every component's environment and command are read from docker-compose.yml itself (its
``environment:`` maps, merged as Compose merges them, and ``command:``), interpolated with an ``.env``
that ``scripts/make-dotenv.py`` makes from ``.env.example`` (fresh secrets), exactly as ``docker compose``
would; then only what a container gives for free is changed, and each change is listed here:

* ``Endpoints.rewrites``: the service names the containers resolve (``postgres:5432``, ``redis:6379``,
  ``minio:9000``, ``airflow-apiserver:8080``, ``demo-store:8765``) become this machine's ports, and the image's
  ``/opt/fashionnet`` the checkout;
* ``local_environment``: what the image sets (``PYTHONPATH``, ``AIRFLOW_HOME``) and what a container's
  own network namespace makes unnecessary: each component's listening ports (the api-server's, the
  workers' log servers', the triggerer's, the scheduler's health check), and a ``hostname_callable`` per
  worker (containers have their own hostnames; two workers of one machine would otherwise record the
  same one in their task instances);
* workers get ``--celery-hostname <service>-<n>@%h`` (Celery node names must differ on one host).

Settings the test changes are the ``.env`` knobs docker-compose.yml offers (``TEST_DOTENV``): the ``test``
profile, the worker concurrencies, a short retry delay and heartbeat timeout. ``compose_environment`` is
checked by tests/dags/test_celery_executor.py against docker-compose.yml (every variable of every
service is there, with its compose value unless listed above).

Every wait is bounded: a component that hangs or exits fails with its log tail (``DeploymentError``).
Teardown stops each component's process group (SIGTERM, then SIGKILL), then every process left that
carries this deployment's ``AIRFLOW_HOME`` (tasks run in process groups of their own), then Redis,
PostgreSQL and the demo shop.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE = REPO_ROOT / "docker-compose.yml"
MAKE_DOTENV = REPO_ROOT / "scripts" / "make-dotenv.py"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from postgres_server import PostgresServer  # noqa: E402
from postgres_server import unavailable_reason as postgres_unavailable  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from redis_server import unavailable_reason as redis_unavailable  # noqa: E402

#: The Airflow services of docker-compose.yml, in their start order.
SERVERS = ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"]
DEFAULT_WORKER = "airflow-worker"
TENSORFLOW_WORKER = "airflow-worker-tensorflow"
INIT = "airflow-init"
#: The .env knobs (docker-compose.yml's own variables) the test deployment sets.
TEST_DOTENV = {
    "FASHIONNET_PROFILE": "test",
    "AIRFLOW_WORKER_CONCURRENCY": "4",
    "TENSORFLOW_WORKER_CONCURRENCY": "2",
    "FASHIONNET_TENSORFLOW_QUEUE": "tensorflow",
    "AIRFLOW_DAGS_PAUSED_AT_CREATION": "True",  # unpaused through the REST API, as in the UI
    "AIRFLOW_DEFAULT_TASK_RETRIES": "2",
    "AIRFLOW_DEFAULT_TASK_RETRY_DELAY": "5",
    "AIRFLOW_TASK_HEARTBEAT_TIMEOUT": "40",
}
#: Variables a component gets here that a container has from its image or its own network namespace.
LOCAL_ONLY = {
    "AIRFLOW_HOME",
    "PYTHONPATH",
    "PATH",
    "AIRFLOW__API__HOST",
    "AIRFLOW__API__PORT",
    "AIRFLOW__API__WORKERS",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT",
    "AIRFLOW__CORE__HOSTNAME_CALLABLE",
    "FASHIONNET_WORKER_HOSTNAME",
    "PYTHONUNBUFFERED",
    "TF_ENABLE_ONEDNN_OPTS",
}
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 30


class DeploymentError(RuntimeError):
    """A component failed, exited or did not answer in time; the message carries the log tails."""


# -- docker-compose.yml, read as Compose reads it -------------------------------------------------------------
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's variable substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}``. A required variable that is missing raises ValueError, and so does
    a nested ``${...}`` in a default (Compose allows it; docker-compose.yml has none)."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("plain"):
            return variables.get(match.group("plain"), "")
        expression = match.group("braced")
        if "${" in expression:
            raise ValueError(f"nested interpolation in ${{{expression}}}: not supported here")
        name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", expression)
        if not name:
            raise ValueError(f"invalid interpolation ${{{expression}}}")
        var, rest = name.group(0), expression[name.end() :]
        current = variables.get(var)
        for operator in (":-", "-", ":?", "?"):
            if rest.startswith(operator):
                argument = interpolate(rest[len(operator) :], variables)
                unset = current is None or (operator.startswith(":") and current == "")
                if operator.endswith("-"):
                    return argument if unset else current
                if unset:
                    raise ValueError(f"{var}: {argument}")
                return current
        if rest:
            raise ValueError(f"invalid interpolation ${{{expression}}}")
        return current or ""

    return _VARIABLE.sub(replace, value)


def read_dotenv(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", path.read_text(), re.M))


def make_dotenv(folder: Path, overrides: dict[str, str]) -> dict[str, str]:
    """An ``.env`` from ``.env.example`` by ``scripts/make-dotenv.py`` (fresh secrets), with ``overrides``."""
    path = folder / ".env"
    made = subprocess.run(
        [sys.executable, str(MAKE_DOTENV), "--example", str(REPO_ROOT / ".env.example"), "--output", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if made.returncode != 0:
        raise DeploymentError(f"scripts/make-dotenv.py failed:\n{made.stderr}")
    return {**read_dotenv(path), **overrides}


def compose_services(dotenv: dict[str, str], compose: Path = COMPOSE) -> dict[str, dict[str, Any]]:
    """Each service's interpolated ``environment`` (dict) and ``command`` (list of words, or None)."""
    document = yaml.safe_load(compose.read_text())  # resolves anchors and `<<` merges as Compose does
    services = {}
    for name, service in document["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        command = service.get("command")
        if isinstance(command, str):
            command = command.split()
        services[name] = {
            "environment": {k: interpolate(str(v), dotenv) for k, v in environment.items() if v is not None},
            "command": [interpolate(str(word), dotenv) for word in command] if command else None,
        }
    return services


@dataclass
class Endpoints:
    """Where the compose services' names point on this machine."""

    postgres: str  # host:port
    redis: str
    s3: str  # http://host:port
    api: str  # http://host:port
    shop: str  # the demo shop's base URL

    def rewrites(self) -> list[tuple[str, str]]:
        """HOST_REWRITES: (what a compose value says, what it says here)."""
        return [
            ("@postgres:5432", f"@{self.postgres}"),
            ("@redis:6379", f"@{self.redis}"),
            ("http://minio:9000", self.s3),
            ("http://airflow-apiserver:8080", self.api),
            ("http://demo-store:8765", self.shop),
            ("/opt/fashionnet", str(REPO_ROOT)),
        ]


COMPOSE_HOSTS = re.compile(r"(?<![\w.-])(postgres|redis|minio|airflow-apiserver|demo-store):\d+|/opt/fashionnet")


def compose_environment(service: dict[str, Any], endpoints: Endpoints) -> dict[str, str]:
    """A service's environment with the compose network's host names and the image's paths rewritten."""
    env = {}
    for name, value in service["environment"].items():
        for old, new in endpoints.rewrites():
            value = value.replace(old, new)
        env[name] = value
    return env


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the test's workers: the name a container's hostname would be."""
    return os.environ["FASHIONNET_WORKER_HOSTNAME"]


# -- the processes ------------------------------------------------------------------------------------------
@dataclass
class Component:
    name: str  # service name, with -<n> for workers
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    #: Killed or stopped on purpose: its exit no longer fails a wait.
    retired: bool = False

    def start(self) -> Component:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.retired = False
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tree(self) -> list[psutil.Process]:
        if not self.alive():
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def kill(self) -> list[int]:
        """SIGKILL the component and every descendant (its task processes too): a machine lost."""
        self.retired = True
        tree = self.tree()
        for process in tree:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=10)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        return [p.pid for p in tree]

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to the component's process group (Celery: warm shutdown), SIGKILL to what is left."""
        self.retired = True
        if self.proc is None:
            return
        tree = self.tree()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        for process in alive:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


class Api:
    """The REST API as the admin user of the FAB auth manager (airflow-init creates it)."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.base = base
        status, body = self.call("POST", "/auth/token", {"username": username, "password": password}, auth=False)
        if status not in (200, 201):
            raise DeploymentError(f"POST /auth/token: {status} {body}")
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
        except OSError as error:  # the api-server restarting, a timeout
            return 0, str(error)

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        if status != 200:
            raise DeploymentError(f"GET {path}: {status} {body}")
        return body

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns?order_by=start_date&limit=100")["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")["task_instances"]

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict]:
        suffix = f"/{map_index}" if map_index >= 0 else ""
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}{suffix}/tries")[
            "task_instances"
        ]


class TaskSampler(threading.Thread):
    """Once a second: peak memory (RSS and USS) and CPU time of every task process on this machine whose
    title is the task runner's (``airflow worker -- <task instance id>``), keyed by that id."""

    def __init__(self, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.samples: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.every):
            for process in psutil.process_iter(["cmdline"]):
                try:
                    cmdline = process.info["cmdline"] or []
                    title = " ".join(cmdline)
                    if not title.startswith("airflow worker -- "):
                        continue
                    ti_id = title.split("-- ", 1)[1].split()[0]
                    memory = process.memory_full_info()
                    cpu = process.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, IndexError):
                    continue
                seen = self.samples.setdefault(ti_id, {"rss_mb": 0.0, "uss_mb": 0.0, "cpu_s": 0.0})
                seen["rss_mb"] = max(seen["rss_mb"], memory.rss / 2**20)
                seen["uss_mb"] = max(seen["uss_mb"], memory.uss / 2**20)
                seen["cpu_s"] = max(seen["cpu_s"], cpu.user + cpu.system)

    def stop(self) -> None:
        self._stop.set()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


class CeleryDeployment:
    """The compose topology as processes. ``with CeleryDeployment(root, s3_endpoint, shop_url) as d: d.api``."""

    def __init__(
        self,
        root: Path,
        s3_endpoint: str,
        shop_url: str,
        *,
        default_workers: int = 1,
        dotenv: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.s3_endpoint = s3_endpoint
        self.shop_url = shop_url
        self.default_workers = default_workers
        self.extra_dotenv = dotenv or {}
        self.home = (root / "airflow-home").resolve()
        self.postgres = PostgresServer()
        self.redis = RedisServer()
        self.components: dict[str, Component] = {}
        self.events: list[tuple[float, str]] = []  # (monotonic time, what happened)
        self.sampler = TaskSampler()
        self.api: Api | None = None
        self.api_port = _free_port()
        self.services: dict[str, dict[str, Any]] = {}
        self.dotenv: dict[str, str] = {}
        self._worker_counts: dict[str, int] = {}

    @staticmethod
    def unavailable_reason() -> str | None:
        return postgres_unavailable() or redis_unavailable()

    # -- logging and waiting --------------------------------------------------------------------------------
    def note(self, what: str) -> None:
        self.events.append((time.monotonic(), what))
        print(f"[celery-deployment] {what}", flush=True)

    def tails(self, chars: int = 2500) -> str:
        parts = [
            f"--- {name} ({'running' if c.alive() else f'exited {c.proc.returncode if c.proc else None}'})\n"
            f"{c.tail(chars)}"
            for name, c in self.components.items()
        ]
        parts.append(f"--- redis\n{self.redis.log_tail(1000)}")
        return "\n".join(parts)

    def wait(
        self,
        predicate: Callable[[], Any],
        timeout_s: float,
        what: str,
        every: float = 2.0,
        watch: list[str] | None = None,
    ) -> Any:
        """Poll ``predicate`` until it returns something true; a watched component exiting, or the time
        running out, raises DeploymentError with every component's log tail."""
        deadline = time.monotonic() + timeout_s
        watched = [self.components[n] for n in (watch if watch is not None else self.components)]
        while True:
            value = predicate()
            if value:
                return value
            dead = [c.name for c in watched if not c.alive() and not c.retired]
            if dead:
                raise DeploymentError(f"{dead} exited while waiting for {what}\n{self.tails()}")
            if time.monotonic() >= deadline:
                raise DeploymentError(f"no {what} after {timeout_s:.0f}s\n{self.tails()}")
            time.sleep(every)

    # -- environment ------------------------------------------------------------------------------------------
    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(
            postgres=f"127.0.0.1:{self.postgres.port}",
            redis=f"127.0.0.1:{self.redis.port}",
            s3=self.s3_endpoint,
            api=f"http://127.0.0.1:{self.api_port}",
            shop=self.shop_url,
        )

    def local_environment(self, service: str, worker_name: str | None = None) -> dict[str, str]:
        """What a container has from its image and its own network namespace (LOCAL_ONLY)."""
        env = {
            "AIRFLOW_HOME": str(self.home),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(Path(__file__).resolve().parent)]),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]),
            "PYTHONUNBUFFERED": "1",
            "TF_ENABLE_ONEDNN_OPTS": "1",  # the Dockerfile's ENV
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(_free_port()),
        }
        if worker_name:
            env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] = "celery_deployment.worker_hostname"
            env["FASHIONNET_WORKER_HOSTNAME"] = worker_name
        return env

    def environment(self, service: str, worker_name: str | None = None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER")}
        return {
            **base,
            **compose_environment(self.services[service], self.endpoints),
            **self.local_environment(service, worker_name),
        }

    def argv(self, service: str, worker_name: str | None = None) -> list[str]:
        """The service's compose command as the image's entrypoint runs it (``airflow <command>``)."""
        command = list(self.services[service]["command"])
        argv = [str(Path(sys.executable).parent / "airflow"), *command]
        if worker_name:
            argv += ["--celery-hostname", f"{worker_name}@%h"]
        return argv

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> CeleryDeployment:
        began = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self.postgres.start()
        self.redis.start()
        self.dotenv = make_dotenv(
            self.root,
            {
                **TEST_DOTENV,
                "POSTGRES_USER": self.postgres.user,
                "POSTGRES_PASSWORD": self.postgres.password,
                "POSTGRES_DB": self.postgres.database,
                "REDIS_PASSWORD": self.redis.password,
                **self.extra_dotenv,
            },
        )
        self.services = compose_services(self.dotenv)
        self._make_buckets()
        self.note(
            f"postgres :{self.postgres.port}, redis :{self.redis.port}, s3 {self.s3_endpoint} up "
            f"in {time.monotonic() - began:.1f}s"
        )
        self._init()
        self.note(f"{INIT} done at {time.monotonic() - began:.1f}s")
        for service in SERVERS:
            self._start_component(service, service)
        self.wait(lambda: _get_status(f"{self.endpoints.api}/api/v2/version") == 200, START_TIMEOUT_S, "api-server")
        self.api = Api(self.endpoints.api, self.dotenv["AIRFLOW_ADMIN_USER"], self.dotenv["AIRFLOW_ADMIN_PASSWORD"])
        for _ in range(self.default_workers):
            self.start_worker(DEFAULT_WORKER)
        self.start_worker(TENSORFLOW_WORKER)
        self.sampler.start()
        self.note(f"all components started at {time.monotonic() - began:.1f}s")
        return self

    def _make_buckets(self) -> None:
        """What minio-init does, as far as moto goes: the store's bucket and the task logs' bucket."""
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.dotenv["MINIO_ROOT_USER"],
            aws_secret_access_key=self.dotenv["MINIO_ROOT_PASSWORD"],
        )
        for bucket in (self.dotenv["FASHIONNET_BUCKET"], self.dotenv["AIRFLOW_LOGS_BUCKET"]):
            try:
                client.create_bucket(Bucket=bucket)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
        client.put_bucket_versioning(
            Bucket=self.dotenv["AIRFLOW_LOGS_BUCKET"], VersioningConfiguration={"Status": "Enabled"}
        )

    def _init(self) -> None:
        """airflow-init's own script (``bash -c``), with its environment."""
        log = self.root / "logs" / f"{INIT}.log"
        component = Component(INIT, list(self.services[INIT]["command"]), self.environment(INIT), log)
        self.components[INIT] = component.start()
        try:
            component.proc.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            component.stop()
            raise DeploymentError(f"{INIT} did not finish in {START_TIMEOUT_S}s:\n{component.tail()}") from None
        if component.proc.returncode != 0:
            raise DeploymentError(f"{INIT} exited {component.proc.returncode}:\n{component.tail()}")
        del self.components[INIT]

    def _start_component(self, service: str, name: str, worker: bool = False) -> Component:
        log = self.root / "logs" / f"{name}.log"
        worker_name = name if worker else None
        component = Component(name, self.argv(service, worker_name), self.environment(service, worker_name), log)
        self.components[name] = component.start()
        return component

    def start_worker(self, service: str, wait: bool = True) -> Component:
        """A new worker of ``service`` (``<service>-<n>``); waits until it answers a Celery ping."""
        self._worker_counts[service] = self._worker_counts.get(service, 0) + 1
        name = f"{service}-{self._worker_counts[service]}"
        component = self._start_component(service, name, worker=True)
        if wait:
            self.wait(lambda: self.worker_ready(name), START_TIMEOUT_S, f"{name} ready", watch=[name])
        self.note(f"{name} started (pid {component.proc.pid})")
        return component

    def worker_ready(self, name: str) -> bool:
        return f"{name}@" in self.components[name].tail(20000) and " ready." in self.components[name].tail(20000)

    def restart_component(self, name: str, kill: bool = True) -> float:
        """Stop (SIGKILL when ``kill``, else SIGTERM) and start again with the same command; returns the gap."""
        component = self.components[name]
        began = time.monotonic()
        component.kill() if kill else component.stop()
        component.start()
        return time.monotonic() - began

    def component_memory(self) -> dict[str, float]:
        """RSS (MiB) of each running component's own processes, its task processes left out."""
        sizes = {}
        for name, component in self.components.items():
            total = 0
            for process in component.tree():
                try:
                    if not " ".join(process.cmdline()).startswith(("airflow worker -- ", "airflow task supervisor")):
                        total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            if total:
                sizes[name] = total / 2**20
        return sizes

    def stop(self) -> list[str]:
        """Stop everything; returns what was still running afterwards (should be nothing)."""
        self.sampler.stop()
        for name in reversed(list(self.components)):
            self.components[name].stop()
        left = [p for p in _with_home(str(self.home))]
        for process in left:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=10)
        self.redis.stop()
        self.postgres.stop()
        return [f"{p.pid} {' '.join(p.cmdline())}" for p in _with_home(str(self.home))]

    def __enter__(self) -> CeleryDeployment:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- runs --------------------------------------------------------------------------------------------------
    def unpause(self, *dag_ids: str) -> None:
        for dag_id in dag_ids:
            self.wait(
                lambda dag_id=dag_id: self.api.call("GET", f"/api/v2/dags/{dag_id}")[0] == 200,
                START_TIMEOUT_S,
                f"{dag_id} parsed",
            )
            status, body = self.api.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
            if status != 200:
                raise DeploymentError(f"unpausing {dag_id}: {status} {body}")

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        status, body = self.api.call(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}}
        )
        if status != 200:
            raise DeploymentError(f"triggering {dag_id}: {status} {body}")
        self.note(f"triggered {dag_id}: {body['dag_run_id']}")
        return body["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        status, body = self.api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        return body["state"] if status == 200 else None

    def wait_run(self, dag_id: str, run_id: str, timeout_s: float) -> str:
        def finished() -> str | None:
            state = self.run_state(dag_id, run_id)
            return state if state in ("success", "failed") else None

        return self.wait(finished, timeout_s, f"end of {dag_id} run {run_id}")


def _with_home(home: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("AIRFLOW_HOME") == home and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


# -- measuring: python tests/dags/celery_deployment.py --default-workers 2 ------------------------------------
def measure_chain(default_workers: int, products: int, timeout_s: float = 1800) -> dict[str, Any]:
    """One fault-free chain (trigger fashionnet_ingest, wait for fashionnet_recommend) on a fresh deployment
    with ``default_workers`` default-queue workers; returns the wall times and where each task ran."""
    import tempfile
    import uuid

    sys.path.insert(0, str(REPO_ROOT))
    from fashionnet_tools.demo import upload_user_images
    from fashionnet_tools.demo_store.server import DemoStoreServer
    from fashionnet_tools.demo_store.site import build_site
    from pipeline.storage import ObjectStore

    root = Path(tempfile.mkdtemp(prefix="fashionnet-celery-"))
    s3_port = _free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    build_site(root / "site", n_products=products, seed=7)
    chain = ["fashionnet_ingest", "fashionnet_train", "fashionnet_repository_refresh", "fashionnet_recommend"]
    result: dict[str, Any] = {"default_workers": default_workers}
    began = time.monotonic()
    try:
        with DemoStoreServer(root / "site", host="127.0.0.1", port=0) as shop:
            deployment = CeleryDeployment(
                root / "deployment",
                f"http://127.0.0.1:{s3_port}",
                shop.base_url,
                default_workers=default_workers,
                dotenv={"FASHIONNET_BUCKET": f"fn-{uuid.uuid4().hex[:10]}"},
            )
            with deployment:
                result["start_s"] = time.monotonic() - began
                env = deployment.dotenv
                os.environ.update(
                    {
                        "AWS_ACCESS_KEY_ID": env["FASHIONNET_S3_ACCESS_KEY"],
                        "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_SECRET_ACCESS_KEY": env["FASHIONNET_S3_SECRET_KEY"],
                    }
                )
                store = ObjectStore(f"s3://{env['FASHIONNET_BUCKET']}/store", endpoint_url=deployment.s3_endpoint)
                upload_user_images(store, root / "site")
                deployment.unpause(*chain)
                triggered = time.monotonic()
                deployment.trigger("fashionnet_ingest")
                last = deployment.wait(
                    lambda: (deployment.api.runs("fashionnet_recommend") or [None])[-1],
                    timeout_s,
                    "a fashionnet_recommend run",
                    every=5,
                )
                result["state"] = deployment.wait_run("fashionnet_recommend", last["dag_run_id"], timeout_s)
                result["chain_s"] = time.monotonic() - triggered
                result["runs"] = {}
                for dag_id in chain:
                    for run in deployment.api.runs(dag_id):
                        result["runs"][dag_id] = [
                            (
                                t["task_id"],
                                t["map_index"],
                                t["state"],
                                t["queue"],
                                t["hostname"],
                                t["start_date"],
                                t["end_date"],
                            )
                            for t in deployment.api.task_instances(dag_id, run["dag_run_id"])
                        ]
    finally:
        os.killpg(moto.pid, signal.SIGTERM)
        moto.wait(timeout=10)
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="time one fault-free chain on the Celery deployment")
    parser.add_argument("--default-workers", type=int, default=1)
    parser.add_argument("--products", type=int, default=60)
    args = parser.parse_args()
    print(json.dumps(measure_chain(args.default_workers, args.products), indent=1, default=str))
