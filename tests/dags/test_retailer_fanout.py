"""The nightly fan-out, run for real with dag.test(): two retailers, one of which fails (see
retailers_fanout_run.py: the demo store, and ``broken-shop`` whose crawl times out)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    work_dir: Path = tmp_path_factory.mktemp("fanout")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tests" / "dags" / "retailers_fanout_run.py"),
            str(work_dir),
            f"file://{work_dir / 'store'}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"runs failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    found = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"run"')]
    return {run["run"]: run for run in found}


def states(run: dict, task: str) -> dict[int, str]:
    return {t["map_index"]: t["state"] for t in run["tasks"] if t["task"] == task}


def labels(run: dict, task: str) -> dict[int, str]:
    return {t["map_index"]: t["label"] for t in run["tasks"] if t["task"] == task}


def test_refresh_commits_the_retailer_that_succeeded_and_fails_the_run(runs):
    refresh = runs["refresh"]
    # One mapped crawl per configured retailer (sorted), each labelled with its name in the UI.
    assert labels(refresh, "crawl_catalog") == {0: "broken-shop", 1: "demo-store"}
    assert states(refresh, "crawl_catalog") == {0: "failed", 1: "success"}  # the failed one is red
    assert states(refresh, "curate") == {0: "upstream_failed", 1: "success"}  # its own index only
    assert states(refresh, "plan") == states(refresh, "commit") == {-1: "success"}
    assert refresh["repository_retailers"] == ["demo-store"] and refresh["repository_rows"] == 12
    record = refresh["commits"][
        "repository/commits/catalog-" + refresh["curated"][0].split("catalog-")[1][:8] + ".json"
    ]
    assert record["batch_ids"] == [refresh["curated"][0].split("/")[1]] and record["failed_retailers"] == [
        "broken-shop"
    ]
    assert record["actions"]["new"] == 12
    # ...and the run ends failed, by its last task, after the commit.
    assert states(refresh, "check_retailers") == {-1: "failed"} and refresh["state"] == "failed"


def test_ingest_reviews_the_retailer_that_succeeded_and_fails_the_run(runs):
    ingest = runs["ingest"]
    assert labels(ingest, "crawl") == {0: "broken-shop", 1: "demo-store"}
    assert states(ingest, "crawl") == {0: "failed", 1: "success"}
    assert states(ingest, "enqueue_for_review") == {0: "upstream_failed", 1: "success"}
    assert states(ingest, "review_gate") == states(ingest, "build_dataset") == {-1: "success"}
    assert len(ingest["approved_batches"]) == 1 and ingest["approved_batches"][0].startswith("ingest-")
    assert ingest["approved_batches"][0].endswith("-demo-store") and ingest["dataset_items"] == 12
    assert states(ingest, "check_retailers") == {-1: "failed"} and ingest["state"] == "failed"
