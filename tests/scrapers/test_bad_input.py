"""A crawl over a shop full of bad input: every failure is counted with its reason in the summary, and
every good product of the same crawl is kept."""
from __future__ import annotations

import time

import pytest

from pipeline.settings import get_settings
from pipeline.storage import ObjectStore
from tests.scrapers.test_politeness import TinyShop, crawl_listing, jpeg, product_page

GOOD = ["good-1", "good-2", "good-3"]
BAD = ["e404", "e500", "slow", "loop", "chain", "bad-json-ld", "not-a-product",
       "html-image", "empty-image", "truncated-image", "tiny-image", "private"]
HTML = {"Content-Type": "text/html"}


def html(body: str, head: str = "") -> bytes:
    return f"<html><head>{head}</head><body>{body}</body></html>".encode()


def sleepy(seconds: float):
    def reply(n: int):
        time.sleep(seconds)
        return 200, HTML, product_page("slow")
    return reply


@pytest.fixture
def store(file_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    get_settings.cache_clear()
    return file_store


def test_bad_input_is_counted_and_good_products_are_kept(store: ObjectStore):
    with TinyShop(GOOD + BAD) as shop:
        routes = shop.routes
        routes["/list"] = lambda n: shop.listing(GOOD + BAD[:-1] + ["../private/p1"])
        routes["/product/e404"] = lambda n: (404, HTML, html("gone"))
        routes["/product/e500"] = lambda n: (500, HTML, html("oops"))
        routes["/product/slow"] = sleepy(2.5)
        routes["/product/loop"] = lambda n: (302, {"Location": "/product/loop-b"}, b"")
        routes["/product/loop-b"] = lambda n: (301, {"Location": "/product/loop"}, b"")
        routes["/product/chain"] = lambda n: (302, {"Location": f"/product/chain?hop={n}"}, b"")
        routes["/product/bad-json-ld"] = lambda n: (200, HTML, html("", '<script type="application/ld+json">{"@type": "Product", "name": </script>'))
        routes["/product/not-a-product"] = lambda n: (200, HTML, html("<h1>About us</h1>"))
        routes["/img/html-image.jpg"] = lambda n: (200, HTML, html("<h1>Error 500</h1>"))
        routes["/img/empty-image.jpg"] = lambda n: (200, {"Content-Type": "image/jpeg"}, b"")
        routes["/img/truncated-image.jpg"] = lambda n: (200, {"Content-Type": "image/jpeg"}, jpeg(256)[:400])
        routes["/img/tiny-image.jpg"] = lambda n: (200, {"Content-Type": "image/jpeg"}, jpeg(16))
        routes["/private/p1"] = lambda n: (200, HTML, product_page("private"))
        summary = crawl_listing(
            shop, "bad-1", DOWNLOAD_TIMEOUT="1.0", RETRY_TIMES="1", FASHIONNET_RETRY_BACKOFF_BASE="0.05", REDIRECT_MAX_TIMES="4",
        )
        counts = dict(shop.counts)
    products = store.read_parquet("crawls/bad-1/products.parquet")
    assert sorted(products.column("sku").to_pylist()) == GOOD
    assert summary["products"] == 3 and summary["images"] == 3
    assert summary["drops"] == {"image_empty": 1, "image_invalid": 1, "image_too_small": 1, "image_truncated": 1}
    assert summary["http_errors"] == {"404": 1, "500": 1}
    assert summary["failed_requests"] == {"redirect_loop": 2, "timeout": 1}
    assert summary["pages_without_product"] == 2  # malformed JSON-LD, a page that is no product
    assert summary["robots_forbidden"] == 1 and "/private/p1" not in counts
    # 5xx and timeouts were retried once, 404 never.
    assert (counts["/product/e500"], counts["/product/slow"], counts["/product/e404"]) == (2, 2, 1)
    assert summary["retries_by_reason"] == {"http_500": 1, "timeout": 1}
    assert summary["errors"] >= 1  # the timeout that gave up is logged as an error by Scrapy
    assert store.read_json("crawls/bad-1/summary.json") == summary
