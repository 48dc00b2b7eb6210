"""A throwaway PostgreSQL server from Debian's packages, for tests that need a real metadata database.

``PostgresServer`` runs ``initdb`` in a fresh temporary folder and ``pg_ctl start`` on a free port of
127.0.0.1 (its unix socket in that folder, no other address), with one password-protected user and
database, and ``stop()`` shuts it down (``pg_ctl stop -m fast``, then SIGKILL to whatever of it is left)
and deletes the folder. PostgreSQL refuses to run as root: as root, every PostgreSQL program runs as the
``postgres`` OS user (``runuser``), which Debian's ``postgresql-common`` creates; the folder is handed
to that user. ``fsync`` is off: the data is thrown away anyway.

``find_bindir()`` says where ``initdb`` is (``/usr/lib/postgresql/<version>/bin`` on Debian, which does not
put it on PATH), or None; ``scripts/install-test-system-packages.sh`` installs ``postgresql`` when missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

START_TIMEOUT_S = 60


def find_bindir() -> Path | None:
    """The folder of PostgreSQL's server programs (the newest installed version), or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def unavailable_reason() -> str | None:
    """Why a server cannot be started here, or None when it can."""
    if find_bindir() is None:
        return (
            "PostgreSQL's server programs are not installed (scripts/install-test-system-packages.sh "
            "installs Debian's postgresql as root; or: apt-get install --no-install-recommends postgresql)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' OS user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser (util-linux) is missing"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One throwaway cluster: ``with PostgresServer() as pg: pg.url`` (a SQLAlchemy URL with psycopg2)."""

    def __init__(self, user: str = "airflow", database: str = "airflow") -> None:
        self.user, self.database = user, database
        self.password = secrets.token_urlsafe(16)
        self.port = 0
        self.bindir = find_bindir()
        self.root: Path | None = None
        self.postmaster_pid: int | None = None

    # -- where things are ---------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def connect(self, database: str | None = None):
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database or self.database,
            connect_timeout=10,
        )

    # -- running ------------------------------------------------------------------------------------------
    def _as_owner(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(self._as_owner(args), cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}\n{log}")
        return proc

    def start(self) -> PostgresServer:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.root = Path(tempfile.mkdtemp(prefix="fashionnet-pg-"))
        try:
            if os.geteuid() == 0:
                owner = pwd.getpwnam("postgres")
                os.chown(self.root, owner.pw_uid, owner.pw_gid)
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password + "\n")
            if os.geteuid() == 0:
                os.chown(pwfile, owner.pw_uid, owner.pw_gid)
            pwfile.chmod(0o600)
            self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.user,
                    f"--pwfile={pwfile}",
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            )
            pwfile.unlink()
            self.port = _free_port()
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            self._run(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "start",
                ],
                timeout=START_TIMEOUT_S + 30,
            )
            self.postmaster_pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            if self.database != "postgres":
                conn = self.connect("postgres")
                try:
                    conn.autocommit = True
                    with conn.cursor() as cursor:
                        cursor.execute(f'CREATE DATABASE "{self.database}"')
                finally:
                    conn.close()
        except BaseException:
            self.stop()
            raise
        return self

    def running(self) -> bool:
        if self.postmaster_pid is None:
            return False
        try:
            os.kill(self.postmaster_pid, 0)
        except ProcessLookupError:
            return False
        return True

    def processes(self) -> list:
        """The server's live processes: the postmaster and its backends (psutil processes)."""
        import psutil

        if not self.running():
            return []
        try:
            postmaster = psutil.Process(self.postmaster_pid)
            return [
                p
                for p in [postmaster, *postmaster.children(recursive=True)]
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            ]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """Shut the server down (fast: open sessions are ended) and delete its folder."""
        import psutil

        if self.root is None:
            return
        left = self.processes()
        if self.running():
            try:
                self._run(
                    [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop"],
                    timeout=60,
                )
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        _, alive = psutil.wait_procs(left, timeout=10)
        for process in alive:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        self.postmaster_pid = None
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
