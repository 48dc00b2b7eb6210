"""Downloader middlewares: polite retries with exponential backoff, and failure accounting.

``BackoffRetryMiddleware`` replaces Scrapy's RetryMiddleware. It retries the same responses and
exceptions (``RETRY_HTTP_CODES``: 5xx and 429; ``RETRY_EXCEPTIONS``: timeouts, refused and lost
connections), but waits ``min(FASHIONNET_RETRY_BACKOFF_MAX, FASHIONNET_RETRY_BACKOFF_BASE * 2**(n-1))``
seconds before handing back the n-th retry, and honours a ``Retry-After`` header (capped at the same
maximum) on 429 and 503. Other 4xx answers are final: asking again only adds load. The wait happens
inside the middleware (an async sleep on the reactor), so it costs one of the crawl's
``CONCURRENT_REQUESTS`` slots while waiting, but never the event loop and never another domain's turn.

``FailureStatsMiddleware`` sits next to the engine and counts, per reason, the requests that failed for
good (after the retries), under ``fashionnet/failed/<reason>``; ``CountingRedirectMiddleware`` adds
``redirect_loop`` for redirect loops, which Scrapy drops silently.
"""

from __future__ import annotations

import email.utils
import logging
import time
from datetime import UTC, datetime
from typing import Any

from scrapy import Request, exceptions
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.redirect import RedirectMiddleware
from scrapy.downloadermiddlewares.retry import RetryMiddleware
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response
from scrapy.utils.asyncio import sleep
from twisted.internet import error as twisted_error
from twisted.web.client import ResponseFailed

from scrapers.network import refused_by_resolver

logger = logging.getLogger(__name__)

FAILED_STAT = "fashionnet/failed/"
BACKOFF_STAT = "fashionnet/retry_backoff_s"
RETRY_AFTER_CODES = frozenset({429, 503})

_FAILURE_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    # A body over DOWNLOAD_MAXSIZE (or a request's download_maxsize): the downloader cut it off.
    (exceptions.DownloadCancelledError, "too_large"),
    (exceptions.DownloadTimeoutError, "timeout"),
    (twisted_error.TimeoutError, "timeout"),
    (exceptions.DownloadConnectionRefusedError, "connection_refused"),
    (twisted_error.ConnectionRefusedError, "connection_refused"),
    (exceptions.CannotResolveHostError, "dns_error"),
    (twisted_error.DNSLookupError, "dns_error"),
    (exceptions.ResponseDataLossError, "connection_lost"),
    (twisted_error.ConnectionLost, "connection_lost"),
    (twisted_error.ConnectionDone, "connection_lost"),
)


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): base, 2*base, 4*base ... capped at max."""
    if attempt < 1 or base_s <= 0:
        return 0.0
    return min(max_s, base_s * 2 ** (attempt - 1))


def retry_after_s(value: bytes | str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date); None when absent or invalid."""
    if not value:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return max(0.0, (when - current).total_seconds())


def failure_reason(exception: BaseException) -> str:
    """A short, stable reason for a request that failed with ``exception``.

    Scrapy (>= 2.14) wraps Twisted's errors in its own (``DownloadFailedError`` for a response that never
    came or broke off), so the wrapped cause and, for Twisted's ``ResponseFailed``, the reasons it carries
    are looked at too: a connection the server closed is ``connection_lost`` however it is wrapped.
    """
    seen: set[int] = set()
    candidates: list[BaseException] = [exception]
    while candidates:
        error = candidates.pop(0)
        if id(error) in seen:
            continue
        seen.add(id(error))
        for kind, reason in _FAILURE_REASONS:
            if isinstance(error, kind):
                return reason
        if isinstance(error, ResponseFailed):  # ResponseNeverReceived too; its reasons are Twisted Failures
            reasons = [getattr(reason, "value", reason) for reason in error.reasons]
            candidates += [reason for reason in reasons if isinstance(reason, BaseException)]
        if error.__cause__ is not None:
            candidates.append(error.__cause__)
    if isinstance(exception, exceptions.DownloadFailedError):
        return "download_failed"
    name = type(exception).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


class BackoffRetryMiddleware(RetryMiddleware):
    """Scrapy's retries, each one delayed by an exponential backoff (see the module docstring)."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.backoff_base_s = settings.getfloat("FASHIONNET_RETRY_BACKOFF_BASE", 1.0)
        self.backoff_max_s = settings.getfloat("FASHIONNET_RETRY_BACKOFF_MAX", 30.0)

    async def process_response(self, request: Request, response: Response) -> Request | Response:  # type: ignore[override]
        if request.meta.get("dont_retry", False) or response.status not in self.retry_http_codes:
            return response
        retry = self._retry(request, f"http_{response.status}")
        if retry is None:
            return response
        hint = retry_after_s(response.headers.get("Retry-After")) if response.status in RETRY_AFTER_CODES else None
        await self._wait(retry, hint)
        return retry

    async def process_exception(self, request: Request, exception: Exception) -> Request | Response | None:  # type: ignore[override]
        if request.meta.get("dont_retry", False) or not isinstance(exception, self.exceptions_to_retry):
            return None
        if refused_by_resolver(request.url):  # refused by policy (scrapers.network): asking again is no use
            return None
        retry = self._retry(request, failure_reason(exception))
        if retry is None:
            return None
        await self._wait(retry, None)
        return retry

    async def _wait(self, retry: Request, hint_s: float | None) -> None:
        delay = backoff_delay(int(retry.meta.get("retry_times", 1)), self.backoff_base_s, self.backoff_max_s)
        if hint_s is not None:
            delay = max(delay, min(hint_s, self.backoff_max_s))
        if delay > 0:
            assert self.crawler.stats is not None
            # Scrapy annotates count as int, but the collector adds any number: this stat sums seconds.
            self.crawler.stats.inc_value(BACKOFF_STAT, round(delay, 3))  # type: ignore[arg-type]
            logger.debug("backing off %.2fs before retry %s of %s", delay, retry.meta.get("retry_times"), retry.url)
            await sleep(delay)


class FailureStatsMiddleware:
    """Counts requests that failed for good by reason (``fashionnet/failed/<reason>``).

    Placed nearest the engine, it sees an exception only when no middleware below turned it into a
    retry or a response. ``IgnoreRequest`` is not a failure of the site (robots.txt has its own stats).
    """

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> FailureStatsMiddleware:
        return cls(crawler)

    def process_exception(self, request: Request, exception: Exception) -> None:
        if not isinstance(exception, IgnoreRequest):
            assert self.crawler.stats is not None
            self.crawler.stats.inc_value(FAILED_STAT + failure_reason(exception))


class CountingRedirectMiddleware(RedirectMiddleware):
    """RedirectMiddleware that counts and stops redirect loops (``fashionnet/failed/redirect_loop``).

    A redirect back to a URL of the same chain is stopped at once (Scrapy would hand it to the
    scheduler, whose duplicate filter drops it without a trace); an endless chain of new URLs is
    stopped, and counted the same way, after ``REDIRECT_MAX_TIMES`` redirects.
    """

    def process_response(self, request: Request, response: Response) -> Request | Response:  # type: ignore[override]
        try:
            result = super().process_response(request, response)
        except IgnoreRequest:
            self._count_loop(request, "gave up after too many redirects")
            raise
        if isinstance(result, Request) and result.url in {request.url, *request.meta.get("redirect_urls", [])}:
            self._count_loop(request, f"redirects back to {result.url}")
            raise IgnoreRequest("redirect loop")
        return result

    def _count_loop(self, request: Request, detail: str) -> None:
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value(FAILED_STAT + "redirect_loop")
        logger.warning("redirect loop at %s: %s", request.url, detail)
