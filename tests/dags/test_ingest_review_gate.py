"""The ingest DAG's review gate, run for real with dag.test() (see ingest_gate_run.py for how the
Human-in-the-loop approval is marked, since dag.test() never resolves one)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gate_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    work_dir: Path = tmp_path_factory.mktemp("gate")
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "dags" / "ingest_gate_run.py"), str(work_dir),
         f"file://{work_dir / 'store'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"ingest runs failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    runs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"run"')]
    return {run["run"]: run for run in runs}


def test_manual_policy_waits_for_a_person_and_admits_only_decided_items(gate_runs):
    manual = gate_runs["manual"]
    assert manual["queue_rows"] > 0
    assert manual["approval"]["how"] == "human"  # written after approve_batch, never by the policy
    assert manual["approval"]["summary"]["pending"] == manual["queue_rows"]
    assert manual["dataset_items"] == 0  # approved, but no reviewer accepted anything yet


def test_auto_accept_approves_the_same_batch_by_policy(gate_runs):
    auto = gate_runs["auto_accept"]
    assert auto["approved_batches"] == gate_runs["manual"]["approved_batches"]  # same day: same batch
    assert auto["approval"]["how"] == "policy" and auto["approval"]["approved_by"] == "policy:auto_accept"
    assert auto["approval"]["summary"]["pending"] == 0
    assert auto["dataset_items"] == auto["queue_rows"] > 0
