"""The demo store's command line: ``python -m fashionnet_tools.demo_store`` builds a missing site, serves it
and stops on SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pipeline.settings import REPO_ROOT


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("inherited_sigint", ["default", "ignored"])
def test_demo_store_command_builds_and_serves(tmp_path: Path, inherited_sigint: str):
    """Also when started with SIGINT ignored, as a shell's background job is (``make test &``): it hung
    on SIGINT there, in two loaded suite runs started with ``&``, while the same test passed alone."""
    from tests.conftest import free_port, wait_for_port

    port = free_port()
    site = tmp_path / "site"
    errors = tmp_path / "stderr.txt"
    with errors.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fashionnet_tools.demo_store", "--site", str(site)]
            + ["--port", str(port), "--products", "5"],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT dumps every thread's stack
            preexec_fn=_ignore_sigint if inherited_sigint == "ignored" else None,
        )
    try:
        wait_for_port(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/sitemap.xml", timeout=5) as response:
            assert response.read().count(b"<loc>") == 5
        assert (site / "ground_truth.csv").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            returncode = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # Say where it hangs.
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=10)
            pytest.fail(f"the demo store did not stop on SIGINT within 10 s:\n{errors.read_text()[-6000:]}")
        assert returncode == 0, errors.read_text()[-3000:]
