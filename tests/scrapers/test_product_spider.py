"""The ``product`` spider on a small local shop with JSON-LD, microdata and OpenGraph pages.

Real crawls through run_crawl (a scrapy subprocess) into a folder store: from a sitemap index, from a
paginated listing, from a URL list and a URL file.
"""

from __future__ import annotations

import functools
import io
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from pipeline.settings import get_settings
from pipeline.storage import ObjectStore
from scrapers.crawl import CrawlError, run_crawl
from scrapers.items import PRODUCTS_SCHEMA, WEAK_LABELS_SCHEMA, item_id_for


class StaticServer:
    """A folder served on 127.0.0.1 (any free port) from a thread; records the requested paths."""

    def __init__(self, root: Path) -> None:
        self.paths: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                server.paths.append(self.path)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StaticServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def html(head: str = "", body: str = "") -> str:
    return f"<!doctype html><html><head><meta charset='utf-8'>{head}</head><body>{body}</body></html>"


def json_ld(node: dict) -> str:
    return f'<script type="application/ld+json">{json.dumps(node)}</script>'


P1 = {  # JSON-LD in an @graph
    "@context": "https://schema.org",
    "@graph": [
        {"@type": "BreadcrumbList"},
        {
            "@type": "Product",
            "name": "Striped Long Sleeve Shirt",
            "sku": "P1",
            "image": "/img/p1.jpg",
            "brand": {"@type": "Brand", "name": "Acme"},
            "color": "Navy",
            "material": "100% Cotton",
            "description": "A shirt.",
            "offers": {
                "@type": "Offer",
                "price": "1.299,00",
                "priceCurrency": "EUR",
                "availability": "https://schema.org/InStock",
            },
        },
    ],
}
P2_MICRODATA = """<div itemscope itemtype="https://schema.org/Product">
<h1 itemprop="name">Floral Sleeveless Dress</h1><img itemprop="image" src="/img/p2.jpg"><meta itemprop="sku" content="P2">
<span itemprop="material">Seide</span>
<div itemprop="offers" itemscope itemtype="https://schema.org/Offer"><span itemprop="price">26,00 €</span>
<link itemprop="availability" href="http://schema.org/OutOfStock"></div></div>"""
P3_OG = """<meta property="og:type" content="product"><meta property="og:title" content="Plain Tee">
<meta property="og:image" content="/img/p3.jpg"><meta property="product:price:amount" content="9.99">
<meta property="product:price:currency" content="GBP">"""
P4_BROKEN = '<script type="application/ld+json">{"@type": "Product", "name": "Bro</script>' + P2_MICRODATA.replace(
    "Floral Sleeveless Dress", "Check Wool Coat"
).replace("P2", "P4").replace("p2.jpg", "p4.jpg").replace("Seide", "Wolle")

EXPECTED = {  # page -> (title, price, currency, availability, brand, color, material)
    "P1": ("Striped Long Sleeve Shirt", 1299.0, "EUR", "InStock", "Acme", "Navy", "100% Cotton"),
    "P2": ("Floral Sleeveless Dress", 26.0, "EUR", "OutOfStock", None, None, "Seide"),
    "P3": ("Plain Tee", 9.99, "GBP", None, None, None, None),
    "P4": ("Check Wool Coat", 26.0, "EUR", "OutOfStock", None, None, "Wolle"),
}
EXPECTED_WEAK = {  # page -> {(attribute, label, source)}
    "P1": {
        ("fabric", "cotton", "material:100% Cotton"),
        ("pattern", "striped", "name:striped"),
        ("shape", "full-sleeve", "name:long sleeve"),
    },
    "P2": {
        ("fabric", "silk", "material:Seide"),
        ("pattern", "floral", "name:floral"),
        ("shape", "sleeveless", "name:sleeveless"),
    },
    "P3": {("pattern", "solid", "name:plain"), ("shape", "half-sleeve", "name:tee")},
    "P4": {("fabric", "wool", "material:Wolle"), ("pattern", "checkered", "name:check")},
}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticServer]:
    root = tmp_path_factory.mktemp("shop")
    (root / "products").mkdir()
    (root / "img").mkdir()
    (root / "shop" / "page" / "2").mkdir(parents=True)
    pages = {"p1": html(json_ld(P1)), "p2": html(body=P2_MICRODATA), "p3": html(P3_OG), "p4": html(body=P4_BROKEN)}
    for name, text in pages.items():
        (root / "products" / f"{name}.html").write_text(text)
    for i, name in enumerate(pages):
        (root / "img" / f"{name}.jpg").write_bytes(jpeg((40 * i, 100, 200 - 40 * i)))
    (root / "about.html").write_text(html("<title>About</title>", "<p>We sell shirts.</p>"))
    with StaticServer(root) as server:
        base = server.base_url
        (root / "sitemap.xml").write_text(
            '<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<sitemap><loc>{base}/sitemap-products.xml</loc></sitemap></sitemapindex>"
        )
        locs = "".join(
            f"<url><loc>{base}/{p}</loc></url>"
            for p in ("products/p1.html", "products/p2.html", "products/p3.html", "products/p4.html", "about.html")
        )
        (root / "sitemap-products.xml").write_text(
            f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{locs}</urlset>'
        )
        (root / "shop" / "list.html").write_text(
            html(
                '<link rel="next" href="/shop/page/2/">',
                '<a href="/products/p1.html">1</a> <a href="/products/p2.html#reviews">2</a> <a href="/about.html">about</a>'
                ' <a href="http://other.example/products/x.html">elsewhere</a>',
            )
        )
        (root / "shop" / "page" / "2" / "index.html").write_text(
            html(
                body='<a href="/products/p3.html">3</a><a href="../../../products/p4.html">4</a><a href="/shop/list.html">back</a>'
            )
        )
        yield server


@pytest.fixture
def store(file_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    get_settings.cache_clear()
    return file_store


def crawl(crawl_id: str, **spider_args: str) -> dict:
    return run_crawl("product", crawl_id, retailer="local-shop", spider_args=spider_args, timeout_s=120)


def check_crawl(store: ObjectStore, crawl_id: str, base_url: str, skus: set[str]) -> None:
    products = store.read_parquet(f"crawls/{crawl_id}/products.parquet")
    weak = store.read_parquet(f"crawls/{crawl_id}/weak_labels.parquet")
    assert products.schema.equals(PRODUCTS_SCHEMA) and weak.schema.equals(WEAK_LABELS_SCHEMA)
    rows = {r["product_url"].rsplit("/", 1)[-1].removesuffix(".html").upper(): r for r in products.to_pylist()}
    assert set(rows) == skus
    assert {r["sku"] for r in rows.values()} == {s if s != "P3" else None for s in skus}  # og-only P3 names no sku
    for sku, row in rows.items():
        title, price, currency, availability, brand, color, material = EXPECTED[sku]
        assert (row["title"], row["price"], row["currency"], row["availability"]) == (
            title,
            price,
            currency,
            availability,
        )
        assert (row["brand"], row["color"], row["material"]) == (brand, color, material)
        assert row["product_url"] == f"{base_url}/products/{sku.lower()}.html"
        assert row["item_id"] == item_id_for(row["product_url"]) and row["retailer"] == "local-shop"
        assert row["image_url"] == f"{base_url}/img/{sku.lower()}.jpg"
        assert store.get_bytes(row["image_key"])[:2] == b"\xff\xd8"
    by_item = {}
    for r in weak.to_pylist():
        by_item.setdefault(r["item_id"], set()).add((r["attribute"], r["label"], r["source"]))
    assert by_item == {rows[sku]["item_id"]: EXPECTED_WEAK[sku] for sku in skus}


def test_from_a_sitemap_index(store, shop):
    summary = crawl("product-sitemap", sitemap_url=f"{shop.base_url}/sitemap.xml")
    check_crawl(store, "product-sitemap", shop.base_url, {"P1", "P2", "P3", "P4"})
    assert summary["products"] == 4 and summary["pages_without_product"] == 1  # about.html
    assert summary["pages_without_product_list"] == [
        {"url": f"{shop.base_url}/about.html", "reason": "no_product_data"}
    ]
    assert summary["weak_labels"] == sum(len(v) for v in EXPECTED_WEAK.values())
    assert summary["drops"] == {} and summary["errors"] == 0


def test_from_a_paginated_listing_within_the_site(store, shop):
    before = len(shop.paths)
    summary = crawl("product-listing", listing_url=f"{shop.base_url}/shop/list.html")
    requested = [p.split("?")[0] for p in shop.paths[before:]]
    check_crawl(store, "product-listing", shop.base_url, {"P1", "P2", "P3", "P4"})
    assert "/shop/page/2/" in requested and "/about.html" not in requested  # not a product link
    assert summary["pages_without_product"] == 0
    assert requested.count("/products/p2.html") == 1


def test_from_a_url_list_and_a_url_file(store, shop, tmp_path: Path):
    urls = [f"{shop.base_url}/products/p1.html", f"{shop.base_url}/about.html", f"{shop.base_url}/products/p3.html"]
    summary = crawl("product-urls", urls=",".join(urls))
    check_crawl(store, "product-urls", shop.base_url, {"P1", "P3"})
    assert summary["pages"] == 3 and summary["pages_without_product"] == 1

    url_file = tmp_path / "urls.txt"
    url_file.write_text(
        f"# product pages\n{shop.base_url}/products/p2.html\n\n{shop.base_url}/products/p4.html  # microdata\n"
    )
    summary = crawl("product-file", urls_file=str(url_file))
    check_crawl(store, "product-file", shop.base_url, {"P2", "P4"})


def test_needs_exactly_one_entry_point(store, shop):
    with pytest.raises(CrawlError, match="exactly one of"):
        crawl("product-bad", urls=f"{shop.base_url}/products/p1.html", sitemap_url=f"{shop.base_url}/sitemap.xml")


def test_query_spider_adds_structured_weak_labels(file_store: ObjectStore, demo_server, demo_site, monkeypatch):
    """The query spider labels products by search and by their own name/description; the name-based
    labels agree with the demo store's hidden truth except where the shop text is noisy."""
    from fashionnet_tools.demo_store.site import load_ground_truth

    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    monkeypatch.setenv("FASHIONNET_SHOP_URL", demo_server.base_url)
    get_settings.cache_clear()
    run_crawl("query", "query-structured", timeout_s=120)
    products = file_store.read_parquet("crawls/query-structured/products.parquet").to_pylist()
    weak = file_store.read_parquet("crawls/query-structured/weak_labels.parquet").to_pylist()
    assert {w["source"].split(":", 1)[0] for w in weak} >= {"query", "name"}
    sku_of = {p["item_id"]: p["sku"] for p in products}
    truth = {r["sku"]: r for r in load_ground_truth(demo_site).to_pylist()}
    structured = [w for w in weak if not w["source"].startswith("query:")]
    assert len({w["item_id"] for w in structured}) >= len(products) * 0.8
    clean = [w for w in structured if truth[sku_of[w["item_id"]]]["text_noise"] != w["attribute"]]
    agree = sum(truth[sku_of[w["item_id"]]][w["attribute"]] == w["label"] for w in clean)
    print(f"structured weak labels: {len(structured)}, agree with the truth {agree}/{len(clean)} (noise-free)")
    assert agree / len(clean) >= 0.95
