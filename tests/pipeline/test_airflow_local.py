"""`make airflow` (pipeline.airflow_local): Airflow standalone with the project's DAGs, stopped cleanly on Ctrl-C."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from pipeline.airflow_local import PASSWORD_FILE, airflow_environment, database_label, parse_args
from pipeline.settings import REPO_ROOT
from tests.conftest import free_port, processes_with_airflow_home

START_TIMEOUT_S = 180  # a cold first start migrates a fresh SQLite database on two shared cores
STOP_TIMEOUT_S = 90


def test_environment_points_airflow_at_the_project(tmp_path: Path):
    args = parse_args(["--port", "18080", "--home", str(tmp_path / "home"), "--parallelism", "3"])
    env = airflow_environment(args, base={"PATH": "/usr/bin", "FASHIONNET_REVIEW_SECRET": "s"})
    assert env["AIRFLOW_HOME"] == str((tmp_path / "home").resolve())
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO_ROOT / "dags")
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(REPO_ROOT / "plugins")
    assert env["AIRFLOW__CORE__PARALLELISM"] == "3"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__API__PORT"] == "18080" and env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO_ROOT)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)  # standalone runs `airflow ...`
    assert env["FASHIONNET_PROFILE"] == "demo"
    assert env["FASHIONNET_REVIEW_SECRET"] == "s"


def test_metadata_database_is_sqlite_in_home_unless_a_url_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", raising=False)
    base = {"FASHIONNET_REVIEW_SECRET": "s", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:////elsewhere.db"}
    env = airflow_environment(parse_args(["--home", str(tmp_path)]), base=base)
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env  # standalone's default: SQLite in AIRFLOW_HOME
    assert database_label(env) == f"SQLite in {tmp_path.resolve()}"

    url = "postgresql+psycopg2://airflow:s3cret@127.0.0.1:5433/airflow"
    env = airflow_environment(parse_args(["--home", str(tmp_path), "--sql-alchemy-conn", url]), base=base)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == url
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert database_label(env) == "postgresql+psycopg2://airflow:***@127.0.0.1:5433/airflow"  # printed: no password

    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", url)  # the usual Airflow variable is the default
    assert parse_args([]).sql_alchemy_conn == url


def test_review_secret_is_generated_once_and_kept(tmp_path: Path):
    args = argparse.Namespace(**{**vars(parse_args(["--home", str(tmp_path)])), "store": None})
    first = airflow_environment(args, base={})["FASHIONNET_REVIEW_SECRET"]
    assert len(first) >= 32
    assert airflow_environment(args, base={})["FASHIONNET_REVIEW_SECRET"] == first
    assert (tmp_path / "fashionnet_review_secret").stat().st_mode & 0o077 == 0


def _ignore_sigint() -> None:
    # What a shell does to a background job: the launcher must cope with an inherited, ignored SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, ""


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_make_airflow_serves_the_project_and_stops_cleanly(tmp_path: Path, stop_signal: int):
    port = free_port()
    home = tmp_path / "airflow-home"
    log_path = tmp_path / "launcher.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FASHIONNET_STORE": f"file://{tmp_path / 'store'}"}
    env.pop("FASHIONNET_REVIEW_SECRET", None)
    with open(log_path, "w") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "pipeline.airflow_local", "--port", str(port), "--home", str(home),
             "--parallelism", "2", "--stop-timeout", "20"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_ignore_sigint)
    base = f"http://127.0.0.1:{port}"
    seen: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        status = None
        while time.monotonic() < deadline and launcher.poll() is None:
            try:
                status, body = _get(f"{base}/api/v2/version")
            except OSError:
                status = None
            if status == 200:
                break
            time.sleep(2)
        output = log_path.read_text()
        assert status == 200, f"api-server not answering after {START_TIMEOUT_S}s:\n{output[-4000:]}"
        assert '"version"' in body  # unauthenticated: docker-compose.yml's api-server healthcheck URL

        # The launcher told where to go and where the admin password is; the file is there.
        assert f"{base}/" in output
        assert str(home / PASSWORD_FILE) in output
        deadline = time.monotonic() + 30
        while not (home / PASSWORD_FILE).exists() and time.monotonic() < deadline:
            time.sleep(1)
        assert (home / PASSWORD_FILE).exists()
        # The plugins folder is the project's: the review page answers inside the api-server.
        status, page = _get(f"{base}/fashionnet-review/login")
        assert status == 200 and "<form" in page.lower(), page[:500]

        seen = psutil.Process(launcher.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in seen if p.is_running())
        # (the api-server renames its process "airflow api_server -- ..."; LocalExecutor workers "airflow worker")
        for component in ("standalone", "scheduler", "dag-processor", "api_server", "triggerer", "LocalExecutor"):
            assert component in names, f"{component} not running: {names}"
        assert names.count("LocalExecutor") == 2  # --parallelism 2, not 32 workers
        seen += processes_with_airflow_home(str(home.resolve()))

        started = time.monotonic()
        launcher.send_signal(stop_signal)  # SIGINT: what Ctrl-C in `make airflow`'s terminal delivers to it
        launcher.wait(timeout=STOP_TIMEOUT_S)
        stop_s = time.monotonic() - started
        output = log_path.read_text()
        assert launcher.returncode == 0, output[-4000:]
        assert "stopping Airflow" in output and "stopped" in output
        left = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        left += [p for p in processes_with_airflow_home(str(home.resolve())) if p not in left]
        assert not left, f"left running: {[(p.pid, p.cmdline()) for p in left]}"
        print(f"stopped in {stop_s:.1f}s")
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
        for process in seen + processes_with_airflow_home(str(home.resolve())):
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
