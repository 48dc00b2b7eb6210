"""The tools' console: the progress lines a person reads, through :mod:`logging`.

The library (``models``, the DAG files' task bodies, the tools themselves) writes its progress lines
to module loggers (``logging.getLogger(__name__)``; a DAG file's ``dags.<file>``, since a DagBag imports
it under a made-up module name). Under Airflow they go to the task log; a tool's entry point
(``fashionnet``, ``python -m fashionnet_tools.demo``, ``python -m fashionnet_tools.airflow_local``) calls
:func:`configure_logging` once, so the same lines appear as before, bare: INFO on stdout, WARNING and
above on stderr.

What a command answers (a crawl's summary, recommendations, the demo's result tables) is no progress
line: it stays ``print()`` to stdout.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TextIO

# The loggers a tool shows at INFO. ``__main__``: a tool run as ``python -m fashionnet_tools.demo`` logs
# under that name. ``pipeline.runs``: every stage's started/done lines. ``pipeline.repository``: the
# refresh's plan, infer and commit progress lines. The rest of ``scrapers`` and ``pipeline`` is left out:
# their INFO lines never showed in a tool's output.
PROJECT_LOGGERS = ("__main__", "fashionnet_tools", "models", "dags", "pipeline.runs", "pipeline.repository")


class ConsoleHandler(logging.StreamHandler):
    """A bare ``%(message)s`` line on ``sys.stdout`` or ``sys.stderr`` as they are when the record is
    written (not when configured), so a replaced stream (pytest's capture, a redirect) gets it."""

    def __init__(self, stream_name: str, level: int, below: int | None = None) -> None:
        self.stream_name = stream_name
        super().__init__()
        self.setLevel(level)
        self.setFormatter(logging.Formatter("%(message)s"))
        if below is not None:
            self.addFilter(lambda record: record.levelno < below)

    @property
    def stream(self) -> TextIO:
        return getattr(sys, self.stream_name)

    @stream.setter
    def stream(self, _value: TextIO) -> None:  # StreamHandler.__init__ sets it; the property decides
        pass


def configure_logging(names: Iterable[str] = PROJECT_LOGGERS, level: int = logging.INFO) -> None:
    """INFO lines of ``names``' loggers to stdout, WARNING and above to stderr, each as its bare message.

    Idempotent (a second call replaces the handlers of the first). The records do not propagate to the
    root logger: its handlers are someone else's (Airflow's, at its own level and format, in the demo's
    ``dag.test()``; the review server's), and would show a line twice.
    """
    for name in names:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, ConsoleHandler)]:
            logger.removeHandler(handler)
        logger.addHandler(ConsoleHandler("stdout", logging.DEBUG, below=logging.WARNING))
        logger.addHandler(ConsoleHandler("stderr", logging.WARNING))
        logger.setLevel(level)
        logger.propagate = False
