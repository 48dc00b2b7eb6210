"""Run identities and stage progress lines shared by the DAG tasks.

Batch, crawl and model-version ids derive from the Airflow run, never from the wall clock inside a
task, so a retried or cleared task writes the same keys again instead of adding new ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)


def batch_id(kind: str, run_after: datetime) -> str:
    """``<kind>-<YYYYMMDD>``: one batch per kind and day; a same-day rerun replaces it."""
    return f"{kind}-{run_after:%Y%m%d}"


def model_version(run_after: datetime) -> str:
    """A sortable model version for one training run."""
    return f"v{run_after:%Y%m%dT%H%M%S}"


@dataclass
class StageReport:
    name: str
    summary: dict[str, Any] = field(default_factory=dict)


def _brief(summary: dict[str, Any]) -> str:
    shown = {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and len(str(v)) < 60}
    return ", ".join(f"{k}={v}" for k, v in list(shown.items())[:8])


@contextmanager
def stage(name: str) -> Iterator[StageReport]:
    """Log one progress line (INFO) when a stage starts and one with its timing when it ends (ERROR when
    it fails).

    They land in the Airflow task log; the tools show this logger at INFO on their console
    (:data:`fashionnet_tools.console.PROJECT_LOGGERS`) even where Airflow itself runs at WARNING (the demo).
    """
    report = StageReport(name)
    log.info("[fashionnet] %s: started", name)
    started = time.perf_counter()
    try:
        yield report
    except Exception as error:
        log.error("[fashionnet] %s: FAILED after %.1fs: %s", name, time.perf_counter() - started, error)
        raise
    log.info("[fashionnet] %s: done in %.1fs  %s", name, time.perf_counter() - started, _brief(report.summary))


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and other non-JSON types turned into plain Python (for XCom)."""
    import json

    return json.loads(json.dumps(value, default=_plain_default))


def _plain_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
