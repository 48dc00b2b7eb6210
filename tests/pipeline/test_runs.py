"""pipeline.runs: run identities and the stages' progress lines."""

from __future__ import annotations

import logging
from datetime import datetime

import pytest

from pipeline import runs


def test_ids_derive_from_the_run_not_the_clock():
    run_after = datetime(2026, 12, 3, 4, 5, 6)
    assert runs.batch_id("ingest", run_after) == "ingest-20261203"
    assert runs.model_version(run_after) == "v20261203T040506"


def test_a_stage_logs_its_start_and_its_end_with_the_summary(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.runs")
    with runs.stage("curate") as report:
        report.summary.update(kept=3, batch="ingest-20261203", big=list(range(100)))
    (start, end) = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "pipeline.runs"]
    assert start == (logging.INFO, "[fashionnet] curate: started")
    assert end[0] == logging.INFO and end[1].startswith("[fashionnet] curate: done in ")
    assert end[1].endswith("kept=3, batch=ingest-20261203")  # long values are left out of the line


def test_a_failing_stage_logs_an_error_and_raises(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.runs")
    with pytest.raises(RuntimeError, match="no rows"), runs.stage("split"):
        raise RuntimeError("no rows")
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 1 and failed[0].getMessage().startswith("[fashionnet] split: FAILED after ")
    assert failed[0].getMessage().endswith(": no rows")
