"""Politeness: retries with exponential backoff on 5xx/429, none on other 4xx, the configured user agent.

``TinyShop`` (shared with test_bad_input) serves a listing, JSON-LD product pages and JPEG images, and
routes whose behaviour a test scripts; every request is recorded with its time and User-Agent.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

from pipeline.settings import get_settings, load_settings
from pipeline.storage import ObjectStore
from scrapers.crawl import run_crawl
from scrapers.middlewares import backoff_delay, failure_reason, retry_after_s
from scrapers.settings import fashionnet_settings

Reply = tuple[int, dict[str, str], bytes]


def jpeg(size: int = 64, shade: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (shade, 40, 200 - shade % 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def product_page(sku: str, image: str = "/img/{sku}.jpg") -> bytes:
    ld = {
        "@context": "https://schema.org",
        "@type": "Product",
        "name": f"Top {sku}",
        "sku": sku,
        "image": image.format(sku=sku),
        "offers": {"@type": "Offer", "price": "12.50", "priceCurrency": "EUR"},
    }
    return (
        f'<html><head><script type="application/ld+json">{json.dumps(ld)}</script></head>'
        f"<body><h1>Top {sku}</h1></body></html>"
    ).encode()


class BackloggedServer(ThreadingHTTPServer):
    """The stdlib's listen backlog of 5 drops connections of a burst; the kernel retries them 1 s later."""

    request_queue_size = 128
    daemon_threads = True


class TinyShop:
    """A scriptable shop on 127.0.0.1. ``routes`` maps a path to a function(hit number) -> reply."""

    def __init__(self, products: list[str], robots: str = "User-agent: *\nDisallow: /private/\n") -> None:
        self.hits: list[tuple[str, float, str]] = []
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.routes: dict[str, Callable[[int], Reply]] = {
            "/robots.txt": lambda n: (200, {"Content-Type": "text/plain"}, robots.encode()),
            "/list": lambda n: self.listing(products),
        }
        for sku in products:
            self.routes.setdefault(
                f"/product/{sku}", lambda n, sku=sku: (200, {"Content-Type": "text/html"}, product_page(sku))
            )
            self.routes.setdefault(f"/img/{sku}.jpg", lambda n: (200, {"Content-Type": "image/jpeg"}, jpeg()))
        shop = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = urlsplit(self.path).path
                with shop.lock:
                    shop.hits.append((path, time.monotonic(), self.headers.get("User-Agent", "")))
                    hit = shop.counts[path] = shop.counts.get(path, 0) + 1
                route = shop.routes.get(path)
                status, headers, body = (
                    route(hit) if route else (404, {"Content-Type": "text/html"}, b"<p>not found</p>")
                )
                try:
                    self.send_response(status)
                    for name, value in {"Content-Length": str(len(body)), **headers}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = BackloggedServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @staticmethod
    def listing(products: list[str]) -> Reply:
        links = "".join(f'<a href="/product/{sku}">{sku}</a>' for sku in products)
        return 200, {"Content-Type": "text/html"}, f"<html><body>{links}</body></html>".encode()

    def times(self, path: str) -> list[float]:
        return [t for p, t, _ in self.hits if p == path]

    def __enter__(self) -> TinyShop:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def crawl_listing(shop: TinyShop, crawl_id: str, **overrides: Any) -> dict[str, Any]:
    return run_crawl(
        "catalog",
        crawl_id,
        retailer="tiny",
        start_url=shop.base_url + "/list",
        timeout_s=120,
        setting_overrides={"AUTOTHROTTLE_ENABLED": "False", **overrides},
    )


@pytest.fixture
def store(file_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    get_settings.cache_clear()
    return file_store


def test_backoff_and_retry_after():
    assert [backoff_delay(n, 0.5, 3.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(1, 0.0, 3.0) == 0.0
    assert retry_after_s(b"7") == 7.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s("Thu, 01 Jan 2026 00:00:10 GMT", now=1767225600.0) == 10.0
    from twisted.internet.error import TimeoutError as TwistedTimeout

    assert failure_reason(TwistedTimeout()) == "timeout" and failure_reason(ValueError()) == "value_error"


def test_politeness_settings_follow_the_configuration():
    settings = load_settings({})
    crawl = settings.crawl
    scrapy_settings = fashionnet_settings(settings)
    assert scrapy_settings["FASHIONNET_RETRY_BACKOFF_BASE"] == crawl.retry_backoff_base_s > 0
    assert scrapy_settings["FASHIONNET_RETRY_BACKOFF_MAX"] == crawl.retry_backoff_max_s
    assert scrapy_settings["RETRY_TIMES"] == crawl.retry_times
    codes = scrapy_settings["RETRY_HTTP_CODES"]
    # 5xx and 429 only: any other 4xx is the site's final answer.
    assert 503 in codes and 429 in codes and not [c for c in codes if 400 <= c < 500 and c != 429]
    assert scrapy_settings["IMAGES_MIN_WIDTH"] == crawl.images_min_width
    assert scrapy_settings["CONCURRENT_REQUESTS"] == crawl.concurrent_requests


def test_retries_back_off_and_4xx_is_final(store: ObjectStore):
    base = 0.3
    with TinyShop(["ok", "flaky", "missing", "busy"]) as shop:
        shop.routes["/product/flaky"] = lambda n: (
            (503, {}, b"busy") if n <= 2 else (200, {"Content-Type": "text/html"}, product_page("flaky"))
        )
        shop.routes["/product/missing"] = lambda n: (404, {}, b"gone")
        shop.routes["/product/busy"] = lambda n: (
            (429, {"Retry-After": "1"}, b"slow down")
            if n == 1
            else (200, {"Content-Type": "text/html"}, product_page("busy"))
        )
        summary = crawl_listing(shop, "polite-1", FASHIONNET_RETRY_BACKOFF_BASE=base)
        flaky, busy = shop.times("/product/flaky"), shop.times("/product/busy")
        agents = {ua for _, _, ua in shop.hits}
    products = store.read_parquet("crawls/polite-1/products.parquet")
    assert sorted(products.column("sku").to_pylist()) == ["busy", "flaky", "ok"]
    # 503 twice, then 200: three requests, waiting base then 2*base before the retries.
    assert len(flaky) == 3
    assert flaky[1] - flaky[0] >= base and flaky[2] - flaky[1] >= 2 * base
    # 429 honours Retry-After (1 s > the 0.3 s backoff).
    assert len(busy) == 2 and busy[1] - busy[0] >= 1.0
    # 404: asked once, counted, never retried.
    assert shop.counts["/product/missing"] == 1
    assert summary["http_errors"] == {"404": 1}
    assert summary["retries"] == 3 and summary["retries_by_reason"] == {"http_429": 1, "http_503": 2}
    assert summary["retry_backoff_s"] >= 3 * base + 1.0 - 0.01
    assert summary["products"] == 3 and summary["drops"] == {}
    assert agents == {get_settings().crawl.user_agent}
