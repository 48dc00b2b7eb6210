"""The ``shopify`` spider against a local /products.json store: pagination, variants, missing images,
a malformed page, the shop currency from /meta.json. ``ShopifyShop`` is shared with test_incremental."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from pipeline.settings import get_settings
from pipeline.storage import ObjectStore
from scrapers.crawl import run_crawl
from scrapers.items import PRODUCTS_SCHEMA, item_id_for
from scrapers.spiders.shopify import html_text, pick_price, variant_price

PAGE_SIZE = 3  # the fixture's page size (Shopify's is up to 250): 3 pages for 7 products


def jpeg(seed: int, size: int = 96) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, 120)).save(buffer, "JPEG")
    return buffer.getvalue()


def shopify_product(
    n: int, *, price: str = "19.90", images: bool = True, updated_at: str = "2026-01-01T10:00:00+01:00"
) -> dict[str, Any]:
    return {
        "id": 1000 + n,
        "handle": f"top-{n}",
        "title": f"Striped Cotton Top {n}",
        "body_html": f"<p>A <strong>striped</strong> cotton top &amp; more, no. {n}.</p>",
        "vendor": "Acme Wear",
        "product_type": "Tops",
        "tags": ["striped", "cotton"],
        "updated_at": updated_at,
        "options": [{"name": "Color", "values": ["Navy"]}, {"name": "Size", "values": ["S", "M"]}],
        "variants": [
            {"id": 1, "sku": f"SKU-{n}-S", "price": "99.00", "available": False},
            {"id": 2, "sku": f"SKU-{n}-M", "price": price, "available": True},
            {"id": 3, "sku": f"SKU-{n}-L", "price": "25.00", "available": True},
        ],
        "images": [{"src": f"/cdn/top-{n}.jpg"}, {"src": f"/cdn/top-{n}-back.jpg"}] if images else [],
    }


class BackloggedServer(ThreadingHTTPServer):
    """The stdlib's listen backlog of 5 drops connections of a burst; the kernel retries them 1 s later."""

    request_queue_size = 128
    daemon_threads = True


class ShopifyShop:
    """A Shopify-like store on 127.0.0.1: ``products`` is mutable between crawls; paths are recorded."""

    def __init__(
        self, products: list[dict[str, Any]], currency: str = "USD", malformed_pages: frozenset[int] = frozenset()
    ) -> None:
        self.products = products
        self.currency = currency
        self.malformed_pages = set(malformed_pages)
        self.requests: list[str] = []
        shop = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                shop.requests.append(self.path)
                parts = urlsplit(self.path)
                if parts.path == "/products.json":
                    page = int(parse_qs(parts.query).get("page", ["1"])[0])
                    if page in shop.malformed_pages:
                        return self.send(200, "application/json", b'{"products": [{"handle": "broken"')
                    chunk = shop.products[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
                    return self.send(200, "application/json", json.dumps({"products": chunk}).encode())
                if parts.path == "/meta.json":
                    return self.send(
                        200, "application/json", json.dumps({"name": "Shop", "currency": shop.currency}).encode()
                    )
                if parts.path == "/robots.txt":
                    return self.send(200, "text/plain", b"User-agent: *\nDisallow: /checkout\n")
                if parts.path.startswith("/cdn/") and parts.path.endswith(".jpg"):
                    return self.send(200, "image/jpeg", jpeg(len(parts.path)))
                self.send(404, "text/plain", b"not found")

            def send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = BackloggedServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ShopifyShop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def paths(self, prefix: str = "") -> list[str]:
        return [p for p in list(self.requests) if urlsplit(p).path.startswith(prefix)]


@pytest.fixture
def shop_env(file_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    get_settings.cache_clear()
    return file_store


@pytest.fixture
def shop() -> Iterator[ShopifyShop]:
    products = [shopify_product(n) for n in range(7)]
    products[4] = shopify_product(4, images=False)
    with ShopifyShop(products, malformed_pages=frozenset({2})) as server:
        yield server


def test_price_and_description_helpers():
    assert pick_price(
        [{"price": "30", "available": False}, {"price": "12.5", "available": True}, {"price": "20", "available": True}]
    ) == (12.5, "https://schema.org/InStock")
    assert pick_price([{"price": "30", "available": False}, {"price": "40", "available": False}]) == (
        30.0,
        "https://schema.org/OutOfStock",
    )
    assert pick_price([]) == (None, None)
    assert html_text("<p>A &amp; <b>B</b>\n\n c</p>") == "A & B c"
    assert html_text(None) is None and html_text("<br>") is None


def test_shopify_crawl_paginates_and_maps_fields(shop: ShopifyShop, shop_env: ObjectStore):
    # Page 2 (products 3-5) is malformed: skipped and counted; pages 1 and 3 are kept, page 4 is empty.
    summary = run_crawl("shopify", "shopify-1", retailer="acme", start_url=shop.base_url, timeout_s=120)
    products = shop_env.read_parquet("crawls/shopify-1/products.parquet")
    assert products.schema.equals(PRODUCTS_SCHEMA)
    rows = {r["product_url"]: r for r in products.to_pylist()}
    expected = {f"{shop.base_url}/products/top-{n}" for n in (0, 1, 2, 6)}
    assert set(rows) == expected
    assert summary["products"] == 4 and summary["failed_requests"] == {"malformed_json": 1}
    row = rows[f"{shop.base_url}/products/top-0"]
    assert row["item_id"] == item_id_for(row["product_url"])
    assert row["title"] == "Striped Cotton Top 0"
    assert row["price"] == 19.9  # the lowest price among available variants (99.00 is sold out)
    assert row["currency"] == "USD"  # from /meta.json: the retailer has no configured currency
    assert row["sku"] == "SKU-0-S"
    assert row["category"] == "Tops" and row["brand"] == "Acme Wear" and row["color"] == "Navy"
    assert row["description"] == "A striped cotton top & more, no. 0."
    assert row["availability"] == "https://schema.org/InStock"
    assert row["image_url"] == f"{shop.base_url}/cdn/top-0.jpg"
    # An RGB JPEG is stored as the shop served it (see the image-bytes note in scrapers/pipelines.py).
    assert shop_env.get_bytes(row["image_key"]) == jpeg(len("/cdn/top-0.jpg"))
    # Weak labels from the product's own text (scrapers.weak_labels), for kept products only.
    weak = shop_env.read_parquet("crawls/shopify-1/weak_labels.parquet").to_pylist()
    assert {(w["attribute"], w["label"], w["source"]) for w in weak if w["item_id"] == row["item_id"]} == {
        ("fabric", "cotton", "name:cotton"),
        ("pattern", "striped", "name:striped"),
    }
    assert {w["item_id"] for w in weak} == set(products.column("item_id").to_pylist())
    pages = sorted(int(parse_qs(urlsplit(p).query)["page"][0]) for p in shop.paths("/products.json"))
    assert pages == [1, 2, 3, 4]
    assert all("limit=250" in p for p in shop.paths("/products.json"))
    # Only the first image of a product is downloaded.
    assert not shop.paths("/cdn/top-0-back")


def test_products_without_images_are_dropped_and_counted(shop: ShopifyShop, shop_env: ObjectStore):
    shop.malformed_pages.clear()
    summary = run_crawl("shopify", "shopify-2", retailer="acme", start_url=shop.base_url, timeout_s=120)
    ids = shop_env.read_parquet("crawls/shopify-2/products.parquet").column("product_url").to_pylist()
    assert summary["products"] == 6 and summary["drops"] == {"no_image_url": 1}
    assert f"{shop.base_url}/products/top-4" not in ids
    assert summary["failed_requests"] == {} and summary["errors"] == 0


def test_two_malformed_pages_in_a_row_stop_the_crawl(shop_env: ObjectStore):
    products = [shopify_product(n) for n in range(12)]
    with ShopifyShop(products, malformed_pages=frozenset({2, 3})) as server:
        summary = run_crawl("shopify", "shopify-3", retailer="acme", start_url=server.base_url, timeout_s=120)
        pages = sorted(int(parse_qs(urlsplit(p).query)["page"][0]) for p in server.paths("/products.json"))
    assert pages == [1, 2, 3]
    assert summary["products"] == PAGE_SIZE and summary["failed_requests"] == {"malformed_json": 2}


@pytest.mark.parametrize("bad", ["-49.99", "inf", "nan", "1e309", "-1", None, "", "free"])
def test_a_variant_price_keeps_its_sign_or_is_refused(bad):
    """float() read "-49.99", "inf" and "nan" as prices; they are refused like in every other source."""
    assert variant_price({"price": bad}) is None
    assert pick_price([{"price": bad, "available": True}, {"price": "20.00", "available": True}]) == (
        20.0,
        "https://schema.org/InStock",
    )


def test_body_html_with_entity_encoded_markup_stays_plain_text():
    """Stripping tags before decoding entities turned ``&lt;img onerror=...&gt;`` into live markup."""
    text = html_text("<p>Soft &lt;img src=x onerror=alert(1)&gt; cotton</p>")
    assert "<" not in text and ">" not in text and "onerror" not in text
    assert text.startswith("Soft") and text.endswith("cotton")
