"""`make airflow`: Airflow with the project's DAGs and plugins on the embedded default, until Ctrl-C.

Runs ``airflow standalone`` (scheduler, dag-processor, triggerer, api-server; LocalExecutor, SQLite and the
simple auth manager in ``var/airflow-local/``) with the FashionNet settings, prints the URL and where the
admin password is, and on Ctrl-C (or SIGTERM) stops every process it started. ``--sql-alchemy-conn`` puts
the metadata database on a real server instead of SQLite (PostgreSQL: ``postgresql+psycopg2://...``);
standalone creates or migrates its tables on start.

Why a launcher: ``airflow standalone`` started from a script inherits an ignored SIGINT (a shell's
background job) and then ignores Ctrl-C; on SIGTERM it dies at once and leaves its components running;
and it starts one LocalExecutor worker per ``[core] parallelism`` slot (32). Here standalone runs in its own
process group with the default SIGINT disposition, Ctrl-C and SIGTERM are forwarded to that whole group
as SIGINT (standalone's own clean shutdown), escalated to SIGTERM and SIGKILL if it hangs, and
``parallelism`` is lowered.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from pipeline.settings import REPO_ROOT

SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("FASHIONNET_AIRFLOW_PORT", 8080)),
                        help="the api-server's port (default: $FASHIONNET_AIRFLOW_PORT or 8080)")
    parser.add_argument("--host", default=os.environ.get("FASHIONNET_AIRFLOW_HOST", "127.0.0.1"),
                        help="address the api-server listens on (default 127.0.0.1: this machine only)")
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("FASHIONNET_AIRFLOW_HOME",
                                                                         REPO_ROOT / "var" / "airflow-local")),
                        help="AIRFLOW_HOME: metadata database, logs, the generated admin password")
    parser.add_argument("--parallelism", type=int, default=4,
                        help="[core] parallelism: LocalExecutor worker processes and running tasks at most")
    parser.add_argument("--sql-alchemy-conn", default=os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"),
                        help="the metadata database's SQLAlchemy URL, e.g. postgresql+psycopg2://user:password@"
                             "127.0.0.1:5432/airflow (default: $AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, else SQLite "
                             "in --home)")
    parser.add_argument("--profile", default=os.environ.get("FASHIONNET_PROFILE", "demo"),
                        help="settings profile (config/profiles/<name>.yaml; default demo, '' for none)")
    parser.add_argument("--store", help="store URI (default: settings, i.e. file://var/store)")
    parser.add_argument("--stop-timeout", type=float, default=30.0,
                        help="seconds to wait for a clean shutdown before SIGTERM (then 10 s before SIGKILL)")
    return parser.parse_args(argv)


def airflow_environment(args: argparse.Namespace, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``airflow standalone`` and all its components run with."""
    env = dict(os.environ if base is None else base)
    home = args.home.resolve()
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__PARALLELISM": str(args.parallelism),
        "AIRFLOW__API__HOST": args.host,
        "AIRFLOW__API__PORT": str(args.port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        # The project's packages for tasks and the review plugin; airflow itself on PATH (standalone runs
        # its components as `airflow <command>`).
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        "PATH": os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")])),
        "FASHIONNET_PROFILE": args.profile,
    })
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.store:
        env["FASHIONNET_STORE"] = args.store
    if getattr(args, "sql_alchemy_conn", None):
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = args.sql_alchemy_conn
    else:  # not one inherited from elsewhere: SQLite in AIRFLOW_HOME
        env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
        home.mkdir(parents=True, exist_ok=True)  # the database created 0600 before SQLite makes it 0644
        os.close(os.open(home / "airflow.db", os.O_WRONLY | os.O_CREAT, 0o600))
        (home / "airflow.db").chmod(0o600)
    if not env.get("FASHIONNET_REVIEW_SECRET"):
        env["FASHIONNET_REVIEW_SECRET"] = review_secret(home)
    return env


def database_label(env: dict[str, str]) -> str:
    """Where the metadata database is, for the banner: the URL without its password."""
    url = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    if not url:
        return f"SQLite in {env['AIRFLOW_HOME']}"
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def review_secret(home: Path) -> str:
    """A review-page session secret kept in AIRFLOW_HOME, so logins survive a restart."""
    import secrets

    path = home / "fashionnet_review_secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _reset_sigint() -> None:
    # Runs in the child before exec: a SIGINT ignored by whoever started us (a shell's background job)
    # would be inherited through exec and make standalone deaf to Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_standalone(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "airflow", "standalone"], env=env, cwd=REPO_ROOT,
                            process_group=0, preexec_fn=_reset_sigint)


def become_subreaper() -> bool:
    """Linux: orphaned descendants are re-parented to this process instead of init, so every process
    standalone leaves behind is still ours to find and stop. False where that is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def reap_children(keep: int | None = None) -> None:
    """Collect exited children (re-parented orphans among them), so they stop counting as alive; ``keep``
    (standalone's pid) is left to its Popen, which needs its exit status."""
    import psutil

    for child in psutil.Process().children():
        try:
            if child.pid != keep and child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.NoSuchProcess, ChildProcessError):
            pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal still counts
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_group(proc: subprocess.Popen, pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        proc.poll()  # reap standalone itself, so its pid does not keep the group alive
        reap_children(keep=proc.pid)
        if not group_alive(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def descendants() -> list:
    """This process's live descendants (psutil processes: they remember their start time, so a reused pid
    is never signalled)."""
    import psutil

    alive = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def stop_stragglers(processes: list, timeout: float = 10.0) -> list:
    """SIGTERM, then SIGKILL, those of ``processes`` still running (Airflow runs each task in a process
    group of its own, out of reach of the group signal). Returns those that survived."""
    import psutil

    alive = [p for p in processes if p.is_running()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in alive:
            try:
                process.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(alive, timeout=timeout if sig == signal.SIGTERM else 5)
        if not alive:
            break
    return alive


def stop_group(proc: subprocess.Popen, timeout: float) -> None:
    """Stop standalone and everything it started.

    First SIGINT to standalone alone: it stops its components with SIGTERM, and each stops its own children
    (LocalExecutor workers, log servers). Interrupting the whole group at once is worse: the scheduler's
    workers die under it and its shutdown then hangs (measured). Then SIGTERM, then SIGKILL, to whatever
    of the group is left, and last to any descendant that had left the group (Airflow runs every task in
    a process group of its own).
    """
    pgid = proc.pid
    known = descendants()
    steps = [(signal.SIGINT, False, timeout), (signal.SIGTERM, True, 10.0), (signal.SIGKILL, True, 10.0)]
    for sig, whole_group, wait_s in steps:
        if whole_group:
            _signal_group(pgid, sig)
        elif proc.poll() is None:
            proc.send_signal(sig)
        if _wait_group(proc, pgid, wait_s):
            break
        print(f"[airflow-local] processes left {wait_s:.0f}s after {signal.Signals(sig).name}", flush=True)
    left = stop_stragglers(known + [p for p in descendants() if p not in known])
    if left:
        print(f"[airflow-local] could not stop: {[p.pid for p in left]}", flush=True)


def announce_when_ready(url: str, password_file: Path, done: threading.Event) -> None:
    """Print the URL again once the api-server answers (standalone's own output scrolls it away)."""
    while not done.wait(2.0):
        try:
            with urllib.request.urlopen(f"{url}/api/v2/version", timeout=2) as response:
                if response.status == 200:
                    print(f"[airflow-local] ready: {url}/  login admin, password in {password_file}", flush=True)
                    return
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_requested: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested.append(signum)

    # Our own handlers, whatever we inherited (an ignored SIGINT included).
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    env = airflow_environment(args)
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    url = env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].removesuffix("/execution/")
    password_file = home / PASSWORD_FILE
    print(f"[airflow-local] AIRFLOW_HOME={home}  DAGs: {env['AIRFLOW__CORE__DAGS_FOLDER']}  "
          f"plugins: {env['AIRFLOW__CORE__PLUGINS_FOLDER']}  parallelism: {args.parallelism}", flush=True)
    print(f"[airflow-local] metadata database: {database_label(env)}", flush=True)
    print(f"[airflow-local] Airflow UI: {url}/  (review page: {url}/fashionnet-review/)", flush=True)
    print(f"[airflow-local] login: admin, password in {password_file} "
          f"(generated on the first start)", flush=True)
    print("[airflow-local] Ctrl-C stops every Airflow process.", flush=True)

    print("[airflow-local] the demo-store retailer's site: python -m scrapers.demo_store --site var/demo-store"
          " (another terminal)", flush=True)

    become_subreaper()
    proc = start_standalone(env)
    done = threading.Event()
    threading.Thread(target=announce_when_ready, args=(url, password_file, done), daemon=True).start()
    try:
        ticks = 0
        while not stop_requested and proc.poll() is None:
            time.sleep(0.2)
            ticks += 1
            if ticks % 25 == 0:
                reap_children(keep=proc.pid)
    finally:
        done.set()
        if stop_requested:
            print(f"\n[airflow-local] {signal.Signals(stop_requested[0]).name}: stopping Airflow ...", flush=True)
        stop_group(proc, args.stop_timeout)
    code = proc.returncode
    print(f"[airflow-local] stopped (airflow standalone exited {code})", flush=True)
    return 0 if stop_requested else (code or 0)


if __name__ == "__main__":
    sys.exit(main())
