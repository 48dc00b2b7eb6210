"""Run one crawl as a ``scrapy crawl`` subprocess and return its summary from the store.

A subprocess because Twisted's reactor cannot be restarted inside one process, and the caller (an
Airflow task, a test, the demo driver) may run several crawls. The child, which parses hostile HTML,
gets an allow-list of the parent's environment (:func:`crawl_env`): what Python and the locale need,
``FASHIONNET_*``, the store's ``AWS_*`` credentials, endpoint and region, and proxies; never Airflow's
Fernet key, JWT secret, connections or database URLs.

Timeouts: the child is told the crawl's deadline (``FASHIONNET_CRAWL_DEADLINE``, see
:mod:`scrapers.pipelines`): there it writes what it has extracted and closes the spider (``finish_reason``
``crawl_timeout``), letting requests in flight finish. A child that has not ended
``crawl.timeout_grace_s`` seconds after the deadline is sent SIGTERM (Scrapy's graceful stop), then
killed; what it wrote at the deadline stays. Either way :func:`run_crawl` raises :class:`CrawlTimeout`,
which carries the summary of what was kept, so the task fails visibly and nothing partial passes for a
finished crawl (a partial catalogue would look like delisted products downstream).

A crawl that ends but reached nothing (no page fetched while its requests failed: the shop is down), or
whose failed requests exceed ``crawl.max_failed_share``, raises :class:`CrawlUnreachable`, one line naming
the host and the errors (:func:`check_crawl`), so its task is red and nothing downstream runs on the batch.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import IO, Any
from urllib.parse import urlsplit

from pipeline.settings import REPO_ROOT, get_settings
from pipeline.storage import open_store
from pipeline.store_layout import crawl_summary_key
from scrapers.spiders.base import validate_crawl_id

logger = logging.getLogger(__name__)

SETTINGS_MODULE = "scrapers.settings"
TAIL_LINES = 40


class CrawlError(RuntimeError):
    """A crawl subprocess failed or timed out; the message ends with the tail of its log."""


class CrawlUnreachable(CrawlError):
    """A crawl that ran to its end but reached (almost) nothing: no page fetched while requests failed, or
    more than ``crawl.max_failed_share`` of its requests failed. ``summary`` is the crawl's summary."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


class CrawlTimeout(CrawlError):
    """A crawl ran out of time. ``summary`` is that of what it kept (``crawls/<crawl_id>/``, ``timed_out``
    true), or None when it was killed before writing anything."""

    def __init__(self, message: str, summary: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.summary = summary


#: Environment variables the crawl child gets from the parent, by exact name or by prefix.
CHILD_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONUNBUFFERED",
        "PYTHONHASHSEED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "PYTHONWARNINGS",
        "PYTHONFAULTHANDLER",
        "PYTHONPYCACHEPREFIX",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        # The store (pipeline.storage through botocore): credentials, endpoint and region only.
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
    }
)
CHILD_ENV_PREFIXES = ("LC_", "FASHIONNET_")


# An absolute http(s) URL without whitespace or control characters anywhere (a trailing newline included).
START_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f]+", re.ASCII)


def _site(url: str) -> tuple[str, int | None]:
    """(host without a leading "www.", port) of an http(s) URL; the port is None when it is the scheme's."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    host = host[4:] if host.startswith("www.") else host
    port = parts.port
    return host, None if port == {"http": 80, "https": 443}.get(parts.scheme) else port


#: Readable names of the summary's failure reasons (scrapers.middlewares.failure_reason).
FAILURE_WORDS = {
    "connection_refused": "connection refused",
    "dns_error": "host name not found",
    "timeout": "timed out",
    "connection_lost": "connection lost",
    "too_large": "body too large",
}


def crawl_host(retailer: str, start_url: str | None, retailers: dict[str, Any]) -> str:
    """``host[:port]`` the crawl starts at: the start URL's, else the retailer's base URL's."""
    url = start_url or (retailers.get(retailer) or {}).get("base_url") or ""
    return urlsplit(url).netloc or retailer


def check_crawl(summary: dict[str, Any], host: str, max_failed_share: float) -> None:
    """Raise :class:`CrawlUnreachable` when a finished crawl reached nothing, in one line naming the host and
    the error: no page was fetched while requests failed (the shop is down, refuses, or its name does not
    resolve), or more than ``max_failed_share`` of the requests failed for good. A crawl whose requests
    all succeeded passes, even with no product (a robots.txt refusal, an empty search)."""
    failed = {str(k): int(v) for k, v in (summary.get("failed_requests") or {}).items()}
    failed.update({f"HTTP {k}": int(v) for k, v in (summary.get("http_errors") or {}).items()})
    n_failed = sum(failed.values())
    pages = int(summary.get("pages") or 0)
    if n_failed == 0:
        return
    share = n_failed / (pages + n_failed)
    if pages > 0 and share <= max_failed_share:
        return
    reasons = ", ".join(f"{FAILURE_WORDS.get(k, k)} x{v}" for k, v in sorted(failed.items(), key=lambda kv: -kv[1]))
    what = "reached nothing" if pages == 0 else f"failed {share:.0%} of its requests (more than {max_failed_share:.0%})"
    raise CrawlUnreachable(
        f"crawl {summary.get('crawl_id')} of {summary.get('retailer')} {what} at {host}: "
        f"{reasons}; {pages} page(s) fetched",
        summary,
    )


def check_start_url(retailer: str, start_url: str | None, retailers: dict[str, Any]) -> None:
    """Refuse, before any request is made, a start URL that is not a web page of the retailer's shop.

    It must be an absolute ``http(s)://`` URL with a host and no credentials; for a retailer of the
    settings it must also be on that retailer's site (same host, ``www.`` aside, and port), since its
    products would otherwise be recorded as the configured retailer's. A retailer name that is not in
    the settings is any shop: the start URL then defines it (the product and shopify spiders).
    """
    if start_url is None or start_url == "":
        return
    if not isinstance(start_url, str) or not START_URL.fullmatch(start_url):
        raise ValueError(f"start_url must be an http:// or https:// URL without spaces, got {start_url!r}")
    try:
        parts = urlsplit(start_url)
        host, _ = _site(start_url)
    except ValueError as error:  # a bad port or IPv6 literal
        raise ValueError(f"start_url {start_url!r} is not a valid URL: {error}") from None
    if not host:
        raise ValueError(f"start_url {start_url!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"start_url {start_url!r} carries credentials; a shop's pages are public")
    base_url = (retailers.get(retailer) or {}).get("base_url")
    if base_url and _site(start_url) != _site(str(base_url)):
        raise ValueError(
            f"start_url {start_url!r} is not on the site of retailer {retailer!r} ({base_url}): "
            "a configured retailer is crawled only on its own site (config/settings.yaml)"
        )


def crawl_command(
    spider: str,
    crawl_id: str,
    retailer: str,
    start_url: str | None,
    run_token: str,
    spider_args: dict[str, str] | None = None,
    setting_overrides: dict[str, Any] | None = None,
) -> list[str]:
    cmd = [sys.executable, "-m", "scrapy", "crawl", spider, "-a", f"crawl_id={crawl_id}", "-a", f"retailer={retailer}"]
    cmd += ["-a", f"run_token={run_token}"]
    if start_url:
        cmd += ["-a", f"start_url={start_url}"]
    for name, value in (spider_args or {}).items():
        if name in {"crawl_id", "retailer", "run_token", "start_url"} or not name.isidentifier():
            raise ValueError(f"spider argument {name!r} is reserved or not a name")
        cmd += ["-a", f"{name}={value}"]
    for name, value in (setting_overrides or {}).items():
        if not name.isupper() or not name.replace("_", "").isalnum():
            raise ValueError(f"not a Scrapy setting name: {name!r}")
        cmd += ["-s", f"{name}={value}"]
    return cmd


def crawl_env(parent: dict[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of the parent's environment (``CHILD_ENV_NAMES``, ``CHILD_ENV_PREFIXES``) plus
    the Scrapy settings module and the repository on the path."""
    source = os.environ if parent is None else parent
    env = {
        name: value for name, value in source.items() if name in CHILD_ENV_NAMES or name.startswith(CHILD_ENV_PREFIXES)
    }
    env["SCRAPY_SETTINGS_MODULE"] = SETTINGS_MODULE
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _pump(stream: IO[str], tail: collections.deque[str]) -> None:
    """Copy the child's output to ours line by line, keeping the last lines for error messages."""
    for line in stream:
        tail.append(line.rstrip("\n"))
        sys.stdout.write(line)
        sys.stdout.flush()


def _stop(proc: subprocess.Popen[str], grace_s: float = 10.0) -> None:
    """Stop the child's process group (scrapy and anything it started): SIGTERM, which Scrapy takes as a
    graceful stop (it closes the spider, so the outputs are written), then SIGKILL after ``grace_s``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_crawl(
    spider: str,
    crawl_id: str,
    retailer: str = "demo-store",
    start_url: str | None = None,
    timeout_s: float | None = None,
    incremental: bool | None = None,
    spider_args: dict[str, str] | None = None,
    setting_overrides: dict[str, Any] | None = None,
    timeout_grace_s: float | None = None,
) -> dict[str, Any]:
    """Run ``spider`` to completion and return ``crawls/<crawl_id>/summary.json`` from the store.

    ``incremental`` overrides the ``crawl.incremental`` setting for this crawl (see :mod:`scrapers.seen`);
    ``spider_args`` are further ``-a name=value`` arguments of the spider. ``setting_overrides`` are
    ``-s NAME=value`` Scrapy settings for this one run, over those derived from the configuration: for
    tests (a short DOWNLOAD_TIMEOUT) and the benchmark (politeness off), not for production DAGs, whose
    crawls take everything from ``config/settings.yaml``. ``timeout_grace_s`` overrides
    ``crawl.timeout_grace_s``: how long the child may run past ``timeout_s`` (finishing what is in flight).

    Raises :class:`CrawlTimeout` (with the summary of what was kept) when the crawl ran out of time, and
    :class:`CrawlError` when it failed or wrote no summary.
    """
    validate_crawl_id(crawl_id)
    settings = get_settings()
    check_start_url(retailer, start_url, settings.retailers)
    timeout = float(timeout_s if timeout_s is not None else settings.crawl.timeout_s)
    grace = float(settings.crawl.timeout_grace_s if timeout_grace_s is None else timeout_grace_s)
    # The token comes back in the summary: proof that it was written by this run, not an earlier one.
    run_token = uuid.uuid4().hex
    args = dict(spider_args or {})
    if incremental is not None:
        args["incremental"] = "true" if incremental else "false"
    # The child's own deadline, as a wall-clock time: there it writes its outputs and stops, with the grace
    # period to finish before we step in.
    overrides = {"FASHIONNET_CRAWL_DEADLINE": f"{time.time() + timeout:.3f}", **(setting_overrides or {})}
    cmd = crawl_command(spider, crawl_id, retailer, start_url, run_token, args, overrides)
    logger.info("running %s", " ".join(cmd))
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=crawl_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    assert proc.stdout is not None
    reader = threading.Thread(target=_pump, args=(proc.stdout, tail), daemon=True)
    reader.start()
    overran = False
    try:
        code = proc.wait(timeout=timeout + grace)
    except subprocess.TimeoutExpired:
        overran = True
        logger.warning("crawl %s/%s still running %gs after its deadline: stopping it", spider, crawl_id, grace)
        _stop(proc, min(10.0, max(1.0, grace)))
        code = proc.returncode
    except BaseException:
        _stop(proc)
        raise
    reader.join(timeout=10)
    key = crawl_summary_key(crawl_id)
    store = open_store()
    summary = store.read_json(key) if store.exists(key) else {}
    written = summary.get("run_token") == run_token
    log_tail = "; log tail:\n" + "\n".join(tail)
    if overran or (written and summary.get("timed_out")):
        kept = (
            (
                f"kept {summary.get('products', 0)} products and {summary.get('weak_labels', 0)} weak labels "
                f"in crawls/{crawl_id}/ (finish_reason {summary.get('finish_reason')})"
            )
            if written
            else "nothing was written"
        )
        raise CrawlTimeout(
            f"crawl {spider}/{crawl_id} timed out after {timeout:g}s: {kept}" + log_tail, summary if written else None
        )
    if code == -signal.SIGABRT and written and summary.get("finish_reason") == "finished":
        # The child closed the spider normally and wrote every output (the summary with this run's token is
        # written last), then a native library aborted during interpreter teardown ("terminate called
        # without an active exception", seen once in a full test run): the crawl's work is whole.
        logger.warning(
            "crawl %s/%s aborted (SIGABRT) after it finished and wrote its outputs; keeping them", spider, crawl_id
        )
        return {**summary, "exit_code": code}
    if code != 0:
        raise CrawlError(f"crawl {spider}/{crawl_id} exited with {code}" + log_tail)
    if not written:
        raise CrawlError(f"crawl {spider}/{crawl_id} wrote no {key} in {store.uri}" + log_tail)
    check_crawl(summary, crawl_host(retailer, start_url, settings.retailers), float(settings.crawl.max_failed_share))
    return summary
