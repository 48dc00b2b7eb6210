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

On the embedded default (the settings' ``demo-store`` retailer is a shop on this machine) the launcher also
serves the bundled demo store from this process (built into ``var/demo-store/`` when missing; stopped
with Airflow), gives the store a demo user with photos (``users/demo-user/``), and lets new DAGs start
unpaused, so one trigger of ``fashionnet_ingest`` runs the whole Asset chain to a recommendations page.

Hardening: the generated admin password file is created 0600 before the api-server writes it, and the
scheduler's and triggerer's log servers are not started (``--skip-serve-logs``, through a small ``airflow``
wrapper first on standalone's PATH): they would listen on every address (Airflow binds them to 0.0.0.0
whatever the api-server's host), and on one machine the api-server reads the task logs from their files.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from fashionnet_tools import console
from pipeline.settings import REPO_ROOT

logger = logging.getLogger(__name__)

SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"
DEMO_RETAILER = "demo-store"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Components that would start a log server bound to every address; the wrapper adds --skip-serve-logs.
LOG_SERVING_COMMANDS = ("scheduler", "triggerer")


DESCRIPTION = __doc__.splitlines()[0]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The launcher's options on ``parser`` (this module's own, or ``fashionnet airflow``'s)."""
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("FASHIONNET_AIRFLOW_PORT", 8080)),
        help="the api-server's port (default: $FASHIONNET_AIRFLOW_PORT or 8080)",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("FASHIONNET_AIRFLOW_HOST", "127.0.0.1"),
        help="address the api-server listens on (default 127.0.0.1: this machine only)",
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(os.environ.get("FASHIONNET_AIRFLOW_HOME", REPO_ROOT / "var" / "airflow-local")),
        help="AIRFLOW_HOME: metadata database, logs, the generated admin password",
    )
    parser.add_argument(
        "--parallelism",
        type=int,
        default=4,
        help="[core] parallelism: LocalExecutor worker processes and running tasks at most",
    )
    parser.add_argument(
        "--sql-alchemy-conn",
        default=os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"),
        help="the metadata database's SQLAlchemy URL, e.g. postgresql+psycopg2://user:password@"
        "127.0.0.1:5432/airflow (default: $AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, else SQLite "
        "in --home)",
    )
    parser.add_argument(
        "--profile",
        default=os.environ.get("FASHIONNET_PROFILE", "demo"),
        help="settings profile (config/profiles/<name>.yaml; default demo, '' for none)",
    )
    parser.add_argument("--store", help="store URI (default: settings, i.e. file://var/store)")
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for a clean shutdown before SIGTERM (then 10 s before SIGKILL)",
    )
    parser.add_argument(
        "--demo-store",
        choices=["auto", "on", "off"],
        default=os.environ.get("FASHIONNET_DEMO_STORE", "auto"),
        help="serve the bundled demo shop beside Airflow (auto, the default: when the settings' "
        "demo-store retailer is on this machine, i.e. the embedded default)",
    )
    parser.add_argument(
        "--demo-store-port",
        type=int,
        default=None,
        help="the demo shop's port (default: that of the demo-store retailer's base_url, 8765; "
        "0 = any free port). Item ids derive from product URLs: keep it fixed across runs",
    )
    parser.add_argument(
        "--demo-site",
        type=Path,
        default=REPO_ROOT / "var" / "demo-store",
        help="the demo shop's folder (built there when missing)",
    )
    parser.add_argument("--demo-products", type=int, default=240, help="products when the demo shop is built")
    parser.add_argument(
        "--paused",
        action="store_true",
        help="leave new DAGs paused (Airflow's default); with the demo shop they start unpaused",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return add_arguments(argparse.ArgumentParser(description=DESCRIPTION)).parse_args(argv)


def airflow_environment(args: argparse.Namespace, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``airflow standalone`` and all its components run with."""
    env = dict(os.environ if base is None else base)
    home = args.home.resolve()
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    env.update(
        {
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
        }
    )
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
    # The approval request's link opens the review page inside this api-server.
    env.setdefault("FASHIONNET_REVIEW_URL", f"{url}/fashionnet-review/")
    return env


def demo_store_base(env: dict[str, str]) -> str | None:
    """The demo-store retailer's base URL when it is a ``kind: demo`` shop on this machine (the embedded
    default, which the launcher can serve itself), else None."""
    from urllib.parse import urlsplit

    from pipeline.settings import load_settings

    entry = load_settings(env).retailers.get(DEMO_RETAILER) or {}
    base = entry.get("base_url")
    if entry.get("kind") != "demo" or not base:
        return None
    return base if (urlsplit(base).hostname or "").lower() in LOOPBACK_HOSTS else None


def start_demo_store(args: argparse.Namespace, env: dict[str, str]):
    """Serve the demo shop in this process (a background thread) on 127.0.0.1; ``env`` gets its URL
    (``FASHIONNET_SHOP_URL``) for every Airflow component and crawl. Returns the server, or None when
    ``--demo-store`` (auto) finds no demo shop in the settings. Raises SystemExit with the reason when its
    port is taken."""
    from urllib.parse import urlsplit

    from fashionnet_tools.demo_store.server import DemoStoreServer
    from fashionnet_tools.demo_store.site import build_site, site_exists

    base = demo_store_base(env)
    if args.demo_store == "off" or (args.demo_store == "auto" and base is None):
        return None
    port = args.demo_store_port if args.demo_store_port is not None else (urlsplit(base or "").port or 8765)
    site = args.demo_site.resolve()
    if not site_exists(site):
        logger.info("[airflow-local] building the demo shop (%s products) in %s ...", args.demo_products, site)
        build_site(site, n_products=args.demo_products, seed=7)
    try:
        server = DemoStoreServer(site, host="127.0.0.1", port=port).start()
    except OSError as error:
        raise SystemExit(
            f"[airflow-local] cannot serve the demo shop on 127.0.0.1:{port}: {error.strerror or error}"
            f" (another demo store or `make demo` running? stop it, or pass --demo-store-port N, "
            f"or --demo-store off to use your own)"
        ) from None
    env["FASHIONNET_SHOP_URL"] = server.base_url
    return server


def demo_store_command(args: argparse.Namespace, env: dict[str, str]) -> str:
    """The exact command that serves the demo shop by hand (when the launcher does not)."""
    from urllib.parse import urlsplit

    port = args.demo_store_port or urlsplit(demo_store_base(env) or "http://127.0.0.1:8765").port or 8765
    return f"cd {REPO_ROOT} && {sys.executable} -m fashionnet_tools.demo_store --site {args.demo_site} --port {port}"


def ensure_demo_user(env: dict[str, str], site: Path) -> list[str]:
    """Photos for the demo user (``users/demo-user/``) when the store has none, so the recommend DAG at the
    end of the chain has someone to serve. Returns the keys written (none when the user had photos)."""
    from fashionnet_tools.demo import DEMO_USER, upload_user_images
    from pipeline.settings import load_settings
    from pipeline.storage import ObjectStore
    from pipeline.store_layout import user_prefix

    settings = load_settings(env)
    store = ObjectStore(settings.store_uri, endpoint_url=settings.s3_endpoint_url)
    folder = f"{user_prefix(DEMO_USER)}/"
    if any(k.lower().endswith((".jpg", ".jpeg", ".png")) for k in store.list(folder) if "/" not in k[len(folder) :]):
        return []
    return upload_user_images(store, site)


def embedded_default(args: argparse.Namespace, env: dict[str, str]):
    """On the embedded default: the demo shop served (its URL in ``env``), the demo user's photos in the store,
    and new DAGs unpaused unless ``--paused``. Returns (the shop's server or None, the photo keys written)."""
    shop = start_demo_store(args, env)
    if shop is None:
        return None, []
    written = ensure_demo_user(env, args.demo_site.resolve())
    if not args.paused:
        env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = "False"
    return shop, written


def write_airflow_wrapper(home: Path, python: str = sys.executable) -> Path:
    """``<home>/bin/airflow``: runs ``python -m airflow`` and adds ``--skip-serve-logs`` to the components that
    would otherwise serve their logs on every address (standalone runs ``airflow <command>`` from PATH).
    Returns the folder to put first on PATH."""
    folder = home / "bin"
    folder.mkdir(parents=True, exist_ok=True)
    commands = "|".join(LOG_SERVING_COMMANDS)
    script = folder / "airflow"
    script.write_text(
        "#!/bin/sh\n"
        "# Written by fashionnet_tools.airflow_local: no log server on 0.0.0.0 (logs are read from their files).\n"
        f'case "$1" in {commands}) exec "{python}" -m airflow "$@" --skip-serve-logs ;; esac\n'
        f'exec "{python}" -m airflow "$@"\n'
    )
    script.chmod(0o755)
    return folder


def private_password_file(home: Path) -> Path:
    """The simple auth manager's password file, created empty and 0600 (the api-server fills it in place,
    keeping the mode; made by Airflow itself it would be 0644)."""
    path = home / PASSWORD_FILE
    home.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    path.chmod(0o600)
    return path


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
    return subprocess.Popen(
        [sys.executable, "-m", "airflow", "standalone"],
        env=env,
        cwd=REPO_ROOT,
        process_group=0,
        preexec_fn=_reset_sigint,
    )


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
        logger.warning("[airflow-local] processes left %.0fs after %s", wait_s, signal.Signals(sig).name)
    left = stop_stragglers(known + [p for p in descendants() if p not in known])
    if left:
        logger.warning("[airflow-local] could not stop: %s", [p.pid for p in left])


def announce_when_ready(url: str, password_file: Path, done: threading.Event) -> None:
    """Print the URL again once the api-server answers (standalone's own output scrolls it away)."""
    while not done.wait(2.0):
        try:
            with urllib.request.urlopen(f"{url}/api/v2/version", timeout=2) as response:
                if response.status == 200:
                    logger.info("[airflow-local] ready: %s/  login admin, password in %s", url, password_file)
                    return
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console.configure_logging()  # the [airflow-local] lines, bare on stdout (warnings on stderr)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Airflow standalone with ``args`` (:func:`add_arguments`) until Ctrl-C or SIGTERM; its exit status."""
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
    password_file = private_password_file(home)
    env["PATH"] = os.pathsep.join([str(write_airflow_wrapper(home)), env["PATH"]])
    shop, written = embedded_default(args, env)
    logger.info(
        "[airflow-local] AIRFLOW_HOME=%s  DAGs: %s  plugins: %s  parallelism: %s",
        home,
        env["AIRFLOW__CORE__DAGS_FOLDER"],
        env["AIRFLOW__CORE__PLUGINS_FOLDER"],
        args.parallelism,
    )
    logger.info("[airflow-local] metadata database: %s", database_label(env))
    logger.info("[airflow-local] Airflow UI: %s/  (review page: %s/fashionnet-review/)", url, url)
    logger.info("[airflow-local] login: admin, password in %s (generated on the first start)", password_file)
    if shop is not None:
        logger.info(
            "[airflow-local] demo shop: %s/ (served by this launcher from %s; stops with it); "
            "demo user: users/demo-user/ in the store%s",
            shop.base_url,
            args.demo_site,
            f" ({len(written)} photos added)" if written else "",
        )
        if not args.paused:
            logger.info(
                "[airflow-local] new DAGs start unpaused: trigger fashionnet_ingest once and the chain runs to "
                "fashionnet_recommend's page (README: Running Airflow)"
            )
    elif demo_store_base(env) is not None:
        logger.info(
            "[airflow-local] demo shop not started (--demo-store off); serve it in another terminal with: %s",
            demo_store_command(args, env),
        )
    logger.info("[airflow-local] Ctrl-C stops every Airflow process.")

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
            logger.info("\n[airflow-local] %s: stopping Airflow ...", signal.Signals(stop_requested[0]).name)
        stop_group(proc, args.stop_timeout)
        if shop is not None:
            shop.stop()
    code = proc.returncode
    logger.info("[airflow-local] stopped (airflow standalone exited %s)", code)
    return 0 if stop_requested else (code or 0)


if __name__ == "__main__":
    sys.exit(main())
