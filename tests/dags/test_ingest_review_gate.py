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
        [
            sys.executable,
            str(REPO_ROOT / "tests" / "dags" / "ingest_gate_run.py"),
            str(work_dir),
            f"file://{work_dir / 'store'}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"ingest runs failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    runs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"run"')]
    return {**{run["run"]: run for run in runs}, "stdout": proc.stdout}


def test_two_runs_on_one_day_are_two_batches(gate_runs):
    """Issue 12: the batch id was ingest-YYYYMMDD, so a second run the same day got the morning's batch, its
    auto_accept decisions and its approval."""
    import re

    auto, manual = gate_runs["auto_accept"], gate_runs["manual"]
    assert len(auto["batches"]) == len(manual["batches"]) == 1 and auto["batches"] != manual["batches"]
    pattern = r"ingest-(\d{8})-\d{6}-demo-store"
    days = [re.fullmatch(pattern, run["batches"][0]) for run in (auto, manual)]
    assert all(days) and days[0].group(1) == days[1].group(1)  # the same day
    assert manual["approved_batches"] == sorted(auto["batches"] + manual["batches"])


def test_auto_accept_approves_its_batch_by_policy(gate_runs):
    auto = gate_runs["auto_accept"]
    assert auto["approval"]["how"] == "policy" and auto["approval"]["approved_by"] == "policy:auto_accept"
    assert auto["approval"]["summary"]["pending"] == 0
    assert auto["dataset_items"] == auto["queue_rows"] > 0


def test_a_manual_rerun_arrives_undecided_and_waits_for_a_person(gate_runs):
    auto, manual = gate_runs["auto_accept"], gate_runs["manual"]
    assert manual["queue_rows"] > 0 and manual["decisions"] == 0  # nothing decided by the morning's policy
    assert manual["approval"]["how"] == "human"  # written after approve_batch, never by the policy
    assert manual["approval"]["approved_at"] > auto["approval"]["approved_at"]
    assert manual["approval"]["summary"]["pending"] == manual["queue_rows"]
    assert manual["dataset_items"] == auto["dataset_items"]  # approved, but no reviewer accepted anything yet


def test_an_ingest_with_the_shop_down_fails_at_the_crawl_naming_the_host(gate_runs):
    """Issue 12: every request refused, yet crawl -> curate -> enqueue -> dataset succeeded and an empty
    dataset Asset was published; the first red was training's "too few labelled images"."""
    down = gate_runs["shop_down"]
    assert "failed" in down["state"]
    assert "failed" in down["tasks"]["crawl"], down["tasks"]
    for task in ("curate", "enqueue_for_review", "predict_for_review", "review_gate", "build_dataset"):
        assert "success" not in down["tasks"][task], down["tasks"]  # nothing downstream ran on the batch
    assert down["dataset_unchanged"] and down["new_batches"] == []  # no dataset Asset event, no queue
    assert f"reached nothing at {down['host']}: connection refused" in gate_runs["stdout"]
