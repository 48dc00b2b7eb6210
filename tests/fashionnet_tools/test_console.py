"""fashionnet_tools.console: the progress lines a tool shows."""

from __future__ import annotations

import logging

import pytest

from fashionnet_tools import console
from pipeline import runs


@pytest.fixture
def stage_logger():
    """``pipeline.runs`` as configure_logging leaves it, restored afterwards for the other tests."""
    logger = logging.getLogger("pipeline.runs")
    before = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:] = before[0]
    logger.setLevel(before[1])
    logger.propagate = before[2]


def test_the_stage_lines_are_among_the_loggers_a_tool_shows():
    assert "pipeline.runs" in console.PROJECT_LOGGERS


def test_the_console_shows_the_stage_lines_bare_where_the_root_logger_is_at_warning(stage_logger, capsys):
    """The demo runs Airflow (the root logger) at WARNING: the stage lines still reach its console."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        console.configure_logging(["pipeline.runs"])
        with runs.stage("recommend (1 user(s))"):
            pass
        with pytest.raises(ValueError), runs.stage("split"):
            raise ValueError("no rows")
    finally:
        root.setLevel(level)
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0] == "[fashionnet] recommend (1 user(s)): started"
    assert out[1].startswith("[fashionnet] recommend (1 user(s)): done in ")
    assert out[2] == "[fashionnet] split: started"
    assert captured.err.startswith("[fashionnet] split: FAILED after ") and "no rows" in captured.err
