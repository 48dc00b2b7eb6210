"""Every spider stops at its listing/pagination cap on a shop whose "next" pages never end.

The local shop serves endless chains: listing page N links rel=next to N+1 and to a few fresh
pagination URLs of its own (``?page=N+1&v=k``), as a hostile or broken shop does; ``/products.json``
answers every page with one more product. Before the caps were counted at request time the product
spider fetched every link scheduled before its cap (981 pages under a cap of 50 on such a shop), and the
catalog, query and Shopify spiders had no cap in the summary (catalog and query none at all).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline.settings import get_settings
from pipeline.storage import ObjectStore
from scrapers.crawl import run_crawl

FRESH_LINKS = 4
CAPS = {"product": 5, "catalog": 6, "query": 2, "shopify": 3}


class EndlessShop:
    """A shop on 127.0.0.1 whose listing, search and products.json pages never end."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        shop = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                shop.paths.append(self.path)
                parts = urlsplit(self.path)
                page = int(parse_qs(parts.query).get("page", ["1"])[0])
                if parts.path == "/robots.txt":
                    self.send(b"User-agent: *\n", "text/plain")
                elif parts.path == "/products.json":
                    product = {
                        "handle": f"p{page}",
                        "title": f"Top {page}",
                        "updated_at": "2026-01-01T00:00:00Z",
                        "variants": [{"price": "10.00", "available": True, "sku": f"S{page}"}],
                        "images": [],
                    }
                    self.send(json.dumps({"products": [product]}).encode(), "application/json")
                elif parts.path in ("/", "/catalog", "/list", "/search"):
                    route = "/catalog" if parts.path == "/" else parts.path
                    query = f"q={parse_qs(parts.query)['q'][0]}&" if "q" in parse_qs(parts.query) else ""
                    fresh = "".join(
                        f'<a href="{route}?{query}page={page + 1}&v={page}-{k}">{k}</a>' for k in range(FRESH_LINKS)
                    )
                    body = (
                        f'<html><head><link rel="next" href="{route}?{query}page={page + 1}"></head><body>'
                        f'<a rel="next" href="{route}?{query}page={page + 1}">next</a>{fresh}</body></html>'
                    )
                    self.send(body.encode(), "text/html")
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def send(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def listing_fetches(self, *routes: str) -> int:
        return sum(urlsplit(p).path in routes for p in self.paths)

    def __enter__(self) -> EndlessShop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def shop() -> Iterator[EndlessShop]:
    with EndlessShop() as server:
        yield server


@pytest.fixture
def configured(
    shop: EndlessShop, file_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ObjectStore:
    product_spider = dict(get_settings().crawl.product_spider.as_dict(), max_listing_pages=CAPS["product"])
    profile = {
        "retailers": {
            "endless": {
                "kind": "listing",
                "base_url": shop.base_url,
                "entry_points": [f"{shop.base_url}/list"],
                "search_url": "{base_url}/search?q={query}",
                "currency": "EUR",
            }
        },
        "crawl": {
            "product_spider": product_spider,
            "catalog_max_listing_pages": CAPS["catalog"],
            "query_max_result_pages": CAPS["query"],
            "shopify_max_pages": CAPS["shopify"],
        },
    }
    path = tmp_path / "endless.yaml"
    path.write_text(json.dumps(profile))  # JSON is YAML
    monkeypatch.setenv("FASHIONNET_PROFILE", str(path))
    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    get_settings.cache_clear()
    yield file_store
    get_settings.cache_clear()


def crawl(spider: str, crawl_id: str, **spider_args: str) -> dict:
    return run_crawl(spider, crawl_id, retailer="endless", timeout_s=60, spider_args={"images": "false", **spider_args})


def test_product_spider_stops_at_its_cap(shop: EndlessShop, configured: ObjectStore):
    before = len(shop.paths)
    summary = crawl("product", "endless-product", listing_url=f"{shop.base_url}/list")
    fetched = sum(urlsplit(p).path == "/list" for p in shop.paths[before:])
    assert fetched == CAPS["product"] == summary["listing_pages"]
    assert summary["pagination_capped"] > 0 and summary["finish_reason"] == "finished"


def test_catalog_spider_stops_at_its_cap(shop: EndlessShop, configured: ObjectStore):
    before = len(shop.paths)
    summary = crawl("catalog", "endless-catalog")
    fetched = sum(urlsplit(p).path in ("/", "/catalog") for p in shop.paths[before:])
    assert fetched == CAPS["catalog"] == summary["listing_pages"] and summary["pagination_capped"] > 0


def test_query_spider_caps_each_search(shop: EndlessShop, configured: ObjectStore):
    before = len(shop.paths)
    summary = crawl("query", "endless-query")
    searches = [p for p in shop.paths[before:] if urlsplit(p).path == "/search"]
    queries = {parse_qs(urlsplit(p).query)["q"][0] for p in searches}
    assert len(queries) > 1
    per_query = {q: sum(parse_qs(urlsplit(p).query)["q"][0] == q for p in searches) for q in queries}
    assert set(per_query.values()) == {CAPS["query"]}
    assert summary["pagination_capped"] >= len(queries)


def test_shopify_spider_stops_at_its_cap(shop: EndlessShop, configured: ObjectStore):
    before = len(shop.paths)
    summary = crawl("shopify", "endless-shopify")
    assert sum(urlsplit(p).path == "/products.json" for p in shop.paths[before:]) == CAPS["shopify"]
    assert summary["listing_pages"] == CAPS["shopify"] and summary["pagination_capped"] == 1
