"""Shared fixtures: a folder store, an S3 store on a local moto server, and settings isolation."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Airflow reads its configuration on first import: give the test session its own home and metadata DB.
os.environ.update(
    {
        "AIRFLOW_HOME": tempfile.mkdtemp(prefix="fashionnet-airflow-"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }
)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
for _name in ("FASHIONNET_STORE", "FASHIONNET_PROFILE", "FASHIONNET_SHOP_URL", "AWS_ENDPOINT_URL"):
    os.environ.pop(_name, None)  # the suite never touches a user's store


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_with_airflow_home(home: str) -> list[psutil.Process]:
    """Every live process on the machine whose environment names this AIRFLOW_HOME (escaped ones included)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("AIRFLOW_HOME") == home and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


def wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """Settings are read once per process; tests that change the environment get a fresh read."""
    from pipeline.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _console_logging_undone() -> Iterator[None]:
    """A tool's entry point called in a test configures its console (fashionnet_tools.console): undone after."""
    from fashionnet_tools.console import PROJECT_LOGGERS

    loggers = [logging.getLogger(name) for name in PROJECT_LOGGERS]
    saved = [(logger.level, logger.propagate, list(logger.handlers)) for logger in loggers]
    yield
    for logger, (level, propagate, handlers) in zip(loggers, saved):
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers


@pytest.fixture
def console_logging() -> None:
    """The project's progress lines (INFO and up) on the captured stdout and stderr, bare, as a tool's console
    shows them (fashionnet_tools.console.configure_logging): for a test that reads them with capsys."""
    from fashionnet_tools.console import configure_logging

    configure_logging()


@pytest.fixture
def file_store(tmp_path: Path):
    from pipeline.storage import ObjectStore

    return ObjectStore(f"file://{tmp_path / 'store'}")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 for the whole session; credentials are dummies."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point AWS clients at moto; returns the endpoint URL."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


@pytest.fixture
def s3_store(s3_env: str):
    """A fresh bucket on the moto server, as an ObjectStore."""
    import boto3

    from pipeline.storage import ObjectStore

    bucket = f"fn-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_env).create_bucket(Bucket=bucket)
    return ObjectStore(f"s3://{bucket}/fashionnet", endpoint_url=s3_env)


@pytest.fixture(params=["file", "s3"])
def any_store(request: pytest.FixtureRequest):
    """Runs a test once on a folder store and once on the S3 store."""
    return request.getfixturevalue("file_store" if request.param == "file" else "s3_store")


def require_shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real data lives in ../shared/data)")
    return path
