"""A throwaway Redis server from Debian's packages (``redis-server``), for tests that need a real Celery broker.

``RedisServer`` starts ``/usr/bin/redis-server`` on a free port of 127.0.0.1 (no other address, no unix
socket) with a password (``requirepass``, as docker-compose.yml's redis service) and its data folder in a
fresh temporary folder; ``stop()`` shuts it down and deletes the folder. ``restart()`` stops it the way
``docker compose restart redis`` does (SIGTERM: Redis saves its RDB snapshot on shutdown) and starts it
again on the same port and folder, so what was queued survives, as it does in the compose deployment
(the redis image keeps ``/data`` across a container restart). ``scripts/install-test-system-packages.sh``
installs ``redis-server`` when missing.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

START_TIMEOUT_S = 30
REDIS_SERVER = "redis-server"


def find_redis_server() -> str | None:
    return shutil.which(REDIS_SERVER) or (
        f"/usr/bin/{REDIS_SERVER}" if Path(f"/usr/bin/{REDIS_SERVER}").exists() else None
    )


def unavailable_reason() -> str | None:
    """Why a server cannot be started here, or None when it can."""
    if find_redis_server() is None:
        return (
            "redis-server is not installed (scripts/install-test-system-packages.sh installs Debian's "
            "redis-server as root; or: apt-get install --no-install-recommends redis-server)"
        )
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One throwaway server: ``with RedisServer() as redis: redis.url`` (``redis://:<password>@127.0.0.1:<port>/0``)."""

    def __init__(self) -> None:
        self.password = secrets.token_urlsafe(16)
        self.port = 0
        self.root: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.root / "redis.log"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:] if self.root and self.log_file.exists() else ""

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=10)

    def _launch(self) -> None:
        # The password on the command line would show in `ps`: a config file, readable by us only.
        config = self.root / "redis.conf"
        config.write_text(
            f"bind 127.0.0.1\nport {self.port}\nrequirepass {self.password}\n"
            f"dir {self.root}\ndbfilename dump.rdb\nlogfile {self.log_file}\n"
            "save 3600 1 300 100 60 10000\nappendonly no\nprotected-mode yes\n"
            "daemonize no\n"
        )
        config.chmod(0o600)
        self.proc = subprocess.Popen(
            [find_redis_server(), str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.client().ping():
                    return
            except Exception:  # noqa: BLE001 - not accepting yet (connection refused, loading the snapshot)
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"redis-server not answering on 127.0.0.1:{self.port} after {START_TIMEOUT_S}s:\n{self.log_tail()}"
        )

    def start(self) -> RedisServer:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.root = Path(tempfile.mkdtemp(prefix="fashionnet-redis-"))
        self.port = _free_port()
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _shutdown(self, timeout: float = 30) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # Redis saves its snapshot, then exits
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> float:
        """Stop (SIGTERM, snapshot saved) and start again on the same port and data; returns the seconds
        the broker was down."""
        began = time.monotonic()
        self._shutdown()
        self._launch()
        return time.monotonic() - began

    def stop(self) -> None:
        """Shut the server down and delete its folder."""
        self._shutdown()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
