"""Server-side request forgery, through real crawls (run_crawl's scrapy subprocess) of shops on 127.0.0.1.

A shop's pages point the crawler at other hosts: an image on another local port (another service of the
crawl machine), a redirect to the cloud metadata address, off-site product links, a ``file://`` image, a
host *name* that resolves to loopback. None of them may be fetched; every refusal is counted by reason.
"""

from __future__ import annotations

import pytest

from pipeline.settings import get_settings
from pipeline.storage import ObjectStore
from scrapers.crawl import run_crawl
from tests.scrapers.conftest import N_PRODUCTS
from tests.scrapers.test_politeness import TinyShop, product_page

HTML = {"Content-Type": "text/html"}


@pytest.fixture
def store(file_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    get_settings.cache_clear()
    return file_store


def listing(links: list[str]) -> tuple[int, dict[str, str], bytes]:
    return 200, HTML, ("<html><body>" + "".join(f'<a href="{u}">{u}</a>' for u in links) + "</body></html>").encode()


def test_requests_off_the_shop_or_to_internal_addresses_are_refused_and_counted(store: ObjectStore):
    with (
        TinyShop(["inside"]) as other,
        TinyShop(["good", "img-other-port", "img-metadata", "img-file", "to-metadata"]) as shop,
    ):
        secret_image = f"{other.base_url}/img/inside.jpg"
        shop.routes["/product/img-other-port"] = lambda n: (200, HTML, product_page("img-other-port", secret_image))
        shop.routes["/product/img-metadata"] = lambda n: (
            200,
            HTML,
            product_page("img-metadata", "http://169.254.169.254/latest/meta-data/iam"),
        )
        shop.routes["/product/img-file"] = lambda n: (200, HTML, product_page("img-file", "file:///etc/passwd"))
        shop.routes["/product/to-metadata"] = lambda n: (
            302,
            {"Location": "http://169.254.169.254/latest/meta-data/"},
            b"",
        )
        shop.routes["/list"] = lambda n: listing(
            [f"/product/{sku}" for sku in ("good", "img-other-port", "img-metadata", "img-file", "to-metadata")]
            + [f"{other.base_url}/product/inside", "http://[::1]:9/product/v6", "http://10.0.0.7/product/lan"]
        )

        summary = run_crawl(
            "catalog",
            "ssrf-1",
            retailer="tiny",
            start_url=shop.base_url + "/list",
            timeout_s=120,
            setting_overrides={"AUTOTHROTTLE_ENABLED": "False"},
        )

    assert other.hits == [], f"the other local service was reached: {other.hits}"
    products = store.read_parquet("crawls/ssrf-1/products.parquet")
    assert products.column("sku").to_pylist() == ["good"]
    # A file:// image URL never becomes a request (the extractor keeps http(s) images only; scrapers.network
    # would refuse it as "scheme", tests/scrapers/test_network_policy.py).
    assert summary["drops"] == {"image_off_site": 2, "no_image_url": 1}
    # Off-site: the other port's image and product link, the metadata image and redirect, [::1] and 10.0.0.7.
    assert summary["refused_requests"] == {"off_site": 6}
    assert "/product/to-metadata" in [path for path, _, _ in shop.hits]  # the redirect itself was not followed


def test_a_host_name_resolving_to_loopback_is_refused_at_connect_time(store: ObjectStore):
    """The start URL's own host is allowed by name, but it resolves to 127.0.0.1: refused by the resolver."""
    with TinyShop(["p1"]) as shop:
        start = shop.base_url.replace("127.0.0.1", "localhost") + "/list"
        summary = run_crawl(
            "catalog",
            "rebind-1",
            retailer="tiny",
            start_url=start,
            timeout_s=120,
            setting_overrides={"AUTOTHROTTLE_ENABLED": "False"},
        )
    assert shop.hits == []
    assert summary["refused_requests"].get("private_address", 0) >= 1
    assert summary["retries"] == 0 and summary["products"] == 0


def test_the_demo_store_may_be_configured_by_a_name_on_an_internal_network(
    store: ObjectStore, demo_server, monkeypatch: pytest.MonkeyPatch
):
    """docker-compose runs it as http://demo-store:8765 (a private address): its own name is exempt."""
    monkeypatch.setenv("FASHIONNET_SHOP_URL", demo_server.base_url.replace("127.0.0.1", "localhost"))
    get_settings.cache_clear()
    summary = run_crawl("catalog", "demo-by-name", timeout_s=120)
    assert summary["products"] == N_PRODUCTS and summary["refused_requests"] == {}


def test_sitemap_entries_off_the_shop_are_refused(store: ObjectStore, monkeypatch: pytest.MonkeyPatch):
    """The demo-store retailer on a shop whose sitemap lists another local service and the metadata address."""
    with TinyShop(["inside"]) as other, TinyShop(["good"]) as shop:
        entries = [
            f"{shop.base_url}/product/good",
            f"{other.base_url}/product/inside",
            "http://169.254.169.254/latest/meta-data/",
        ]
        urlset = "".join(f"<url><loc>{url}</loc></url>" for url in entries)
        shop.routes["/sitemap.xml"] = lambda n: (
            200,
            {"Content-Type": "application/xml"},
            (
                '<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                f"{urlset}</urlset>"
            ).encode(),
        )
        monkeypatch.setenv("FASHIONNET_SHOP_URL", shop.base_url)
        get_settings.cache_clear()
        summary = run_crawl(
            "catalog", "sitemap-ssrf", timeout_s=120, setting_overrides={"AUTOTHROTTLE_ENABLED": "False"}
        )
    assert other.hits == []
    assert summary["products"] == 1 and summary["refused_requests"] == {"off_site": 2}
