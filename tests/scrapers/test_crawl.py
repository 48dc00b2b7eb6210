"""Real crawls of a small generated shop through run_crawl (a scrapy subprocess), into folder and S3 stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from fashionnet_tools.demo_store.server import DemoStoreServer, search_matches
from fashionnet_tools.demo_store.site import build_site, load_catalog
from pipeline.settings import get_settings
from pipeline.storage import ObjectStore
from scrapers.crawl import CrawlError, CrawlTimeout, CrawlUnreachable, check_crawl, run_crawl
from scrapers.items import item_id_for
from scrapers.pipelines import PRODUCTS_SCHEMA, WEAK_LABELS_SCHEMA

N_PRODUCTS = 40  # the size of the demo_site fixture (tests/fashionnet_tools/demo_store/fixtures.py)


def point_at(monkeypatch: pytest.MonkeyPatch, store: ObjectStore, server: DemoStoreServer) -> None:
    monkeypatch.setenv("FASHIONNET_STORE", store.uri)
    monkeypatch.setenv("FASHIONNET_SHOP_URL", server.base_url)
    get_settings.cache_clear()


def expected_weak_labels(site: Path, base_url: str) -> set[tuple[str, str, str, str]]:
    """What the shop's search semantics say the query spider must find."""
    settings = get_settings()
    expected = set()
    for product in load_catalog(site):
        item_id = item_id_for(f"{base_url}/product/{product['sku']}")
        for attribute in settings.taxonomy.names:
            for label in settings.taxonomy.classes(attribute):
                query = settings.search_query(label)
                if search_matches(product, query):
                    expected.add((item_id, attribute, label, f"query:{query}"))
    return expected


def read_crawl(store: ObjectStore, crawl_id: str):
    products = store.read_parquet(f"crawls/{crawl_id}/products.parquet")
    weak = store.read_parquet(f"crawls/{crawl_id}/weak_labels.parquet")
    return products, weak


def test_query_crawl_into_store_and_rerun(
    any_store: ObjectStore, demo_server: DemoStoreServer, demo_site: Path, monkeypatch
):
    point_at(monkeypatch, any_store, demo_server)
    before = len(demo_server.requests)
    summary = run_crawl("query", "query-20260101", timeout_s=120)
    requested = demo_server.requested_paths()[before:]

    products, weak = read_crawl(any_store, "query-20260101")
    assert products.schema.equals(PRODUCTS_SCHEMA) and weak.schema.equals(WEAK_LABELS_SCHEMA)
    assert products.num_rows == summary["products"] == N_PRODUCTS
    assert sorted(products.column("sku").to_pylist()) == sorted(p["sku"] for p in load_catalog(demo_site))
    assert products.column("item_id").to_pylist() == [
        item_id_for(u) for u in products.column("product_url").to_pylist()
    ]
    assert set(products.column("currency").to_pylist()) == {"EUR"}
    keys = products.column("image_key").to_pylist()
    assert all(k.startswith("images/full/") and k.endswith(".jpg") for k in keys)
    assert all(any_store.get_bytes(k)[:2] == b"\xff\xd8" for k in keys)
    assert summary["images"] == N_PRODUCTS and summary["drops"] == {} and summary["errors"] == 0

    found = {tuple(row.values()) for row in weak.to_pylist()}
    assert weak.num_rows == len(found) == summary["weak_labels"]
    # The search's labels exactly; the product's own structured data adds others (scrapers.weak_labels).
    assert {row for row in found if row[3].startswith("query:")} == expected_weak_labels(
        demo_site, demo_server.base_url
    )
    assert any_store.read_json("crawls/query-20260101/summary.json") == summary

    # Robots obeyed: robots.txt fetched first, /account/ never.
    assert requested[0] == "/robots.txt"
    assert not any(p.startswith("/account") for p in requested)
    # Every product page fetched once although several searches find it.
    product_pages = [p for p in requested if p.startswith("/product/")]
    assert len(product_pages) == len(set(product_pages)) == N_PRODUCTS

    rerun = run_crawl("query", "query-20260101", timeout_s=120)
    products2, weak2 = read_crawl(any_store, "query-20260101")
    assert (products2.num_rows, weak2.num_rows) == (products.num_rows, weak.num_rows)
    assert {tuple(r.values()) for r in weak2.to_pylist()} == found
    assert rerun["run_token"] != summary["run_token"]
    assert len(any_store.list("images/")) == N_PRODUCTS
    assert any_store.list("crawls/") == [
        f"crawls/query-20260101/{n}" for n in ("products.parquet", "summary.json", "weak_labels.parquet")
    ]


def test_catalog_crawl_from_sitemap(file_store: ObjectStore, demo_server: DemoStoreServer, monkeypatch):
    point_at(monkeypatch, file_store, demo_server)
    before = len(demo_server.requests)
    summary = run_crawl("catalog", "catalog-20260101", timeout_s=120)
    requested = demo_server.requested_paths()[before:]
    products = file_store.read_parquet("crawls/catalog-20260101/products.parquet")
    assert products.num_rows == summary["products"] == N_PRODUCTS
    assert file_store.read_parquet("crawls/catalog-20260101/weak_labels.parquet").num_rows == 0
    assert "/sitemap.xml" in requested and "/catalog" not in requested
    assert summary["pages"] == N_PRODUCTS + 1  # the sitemap and every product page


def test_catalog_crawl_from_listing_pages(file_store: ObjectStore, demo_server: DemoStoreServer, monkeypatch):
    point_at(monkeypatch, file_store, demo_server)
    before = len(demo_server.requests)
    summary = run_crawl("catalog", "listing-1", start_url=demo_server.base_url + "/catalog", timeout_s=120)
    requested = demo_server.requested_paths()[before:]
    assert summary["products"] == N_PRODUCTS
    assert "/sitemap.xml" not in requested and not any(p.startswith("/account") for p in requested)


def test_robots_txt_forbids_the_account_page(file_store: ObjectStore, demo_server: DemoStoreServer, monkeypatch):
    point_at(monkeypatch, file_store, demo_server)
    before = len(demo_server.requests)
    summary = run_crawl("catalog", "robots-1", start_url=demo_server.base_url + "/account/", timeout_s=120)
    requested = demo_server.requested_paths()[before:]
    assert summary["robots_forbidden"] == 1 and summary["products"] == 0
    assert requested == ["/robots.txt"]
    assert file_store.read_parquet("crawls/robots-1/products.parquet").num_rows == 0


def test_products_whose_image_fails_are_dropped_with_their_weak_labels(
    tmp_path: Path, file_store: ObjectStore, monkeypatch
):
    site = build_site(tmp_path / "site", n_products=8, seed=4)
    broken = load_catalog(site)[0]
    (site / "images" / broken["image"]).unlink()
    with DemoStoreServer(site) as server:
        point_at(monkeypatch, file_store, server)
        summary = run_crawl("query", "broken-1", timeout_s=120)
        broken_id = item_id_for(f"{server.base_url}/product/{broken['sku']}")
    products, weak = read_crawl(file_store, "broken-1")
    assert summary["products"] == products.num_rows == 7
    assert summary["drops"] == {"image_http_error": 1}
    assert broken_id not in products.column("item_id").to_pylist()
    assert broken_id not in weak.column("item_id").to_pylist()
    assert summary["weak_labels_without_product"] >= 1


def test_failures_raise_crawl_error_with_the_log_tail(
    file_store: ObjectStore, demo_server: DemoStoreServer, monkeypatch
):
    point_at(monkeypatch, file_store, demo_server)
    with pytest.raises(CrawlError, match="Spider not found"):
        run_crawl("no-such-spider", "bad-1", timeout_s=120)
    with pytest.raises(CrawlTimeout, match="timed out") as timed_out:
        run_crawl("query", "slow-1", timeout_s=0.2)
    with pytest.raises(ValueError):
        run_crawl("query", "../escape")
    # A crawl out of time keeps (and says) what it had: here nothing, its deadline passed as it started.
    assert timed_out.value.summary == file_store.read_json("crawls/slow-1/summary.json")
    assert timed_out.value.summary["timed_out"] and timed_out.value.summary["finish_reason"] == "crawl_timeout"


# A stand-in crawl child: writes the summary (with the run's token and a finish reason) as the real one does
# last, then aborts as a native library did once at interpreter teardown ("terminate called without an
# active exception": SIGABRT after "Spider closed (finished)").
ABORTING_CHILD = """
import os, sys
from pipeline.storage import open_store
crawl_id, token, reason = sys.argv[1:4]
open_store().write_json(f"crawls/{crawl_id}/summary.json", {"run_token": token, "finish_reason": reason, "products": 3})
os.abort()
"""


@pytest.mark.parametrize("reason", ["finished", "shutdown"])
def test_an_abort_after_a_finished_crawl_keeps_its_outputs(file_store: ObjectStore, monkeypatch, reason):
    """Before: a child that had finished and written everything but aborted in teardown failed the crawl."""
    import sys

    import scrapers.crawl as crawl

    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    get_settings.cache_clear()
    real_command = crawl.crawl_command

    def aborting_command(spider, crawl_id, retailer, start_url, run_token, *args, **kwargs):
        real_command(spider, crawl_id, retailer, start_url, run_token, *args, **kwargs)  # same validation
        return [sys.executable, "-c", ABORTING_CHILD, crawl_id, run_token, reason]

    monkeypatch.setattr(crawl, "crawl_command", aborting_command)
    if reason == "finished":
        summary = run_crawl("catalog", "abort-1", timeout_s=60)
        assert summary["products"] == 3 and summary["exit_code"] < 0
    else:  # a crawl that did not finish normally still fails on the abort
        with pytest.raises(CrawlError, match="exited with"):
            run_crawl("catalog", "abort-2", timeout_s=60)


def test_a_crawl_of_a_shop_that_is_down_fails_naming_the_host(file_store: ObjectStore, monkeypatch):
    """Issue 12: every request refused used to end green (errors=38, pages=0) and hand an empty batch on."""
    from tests.conftest import free_port

    port = free_port()  # nothing listens there
    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    monkeypatch.setenv("FASHIONNET_SHOP_URL", f"http://127.0.0.1:{port}")
    get_settings.cache_clear()
    with pytest.raises(CrawlUnreachable) as down:
        run_crawl("query", "down-1", timeout_s=60, setting_overrides={"RETRY_TIMES": 0})
    message = str(down.value)
    assert "\n" not in message  # one line, not the log tail
    assert f"127.0.0.1:{port}" in message and "connection refused" in message and "reached nothing" in message
    assert down.value.summary["pages"] == 0 and down.value.summary["products"] == 0


def test_check_crawl_passes_quiet_crawls_and_fails_mostly_failed_ones():
    ok = {"crawl_id": "c", "retailer": "r", "pages": 10, "failed_requests": {"timeout": 2}}
    check_crawl(ok, "shop.example", 0.5)  # 2 of 12 failed
    check_crawl({"pages": 0, "products": 0, "robots_forbidden": 1}, "shop.example", 0.5)  # nothing failed
    with pytest.raises(CrawlUnreachable, match=r"failed 60% of its requests .* at shop.example: HTTP 503 x6"):
        check_crawl({**ok, "pages": 4, "failed_requests": {}, "http_errors": {"503": 6}}, "shop.example", 0.5)
    with pytest.raises(CrawlUnreachable, match="reached nothing at shop.example: host name not found x3"):
        check_crawl({**ok, "pages": 0, "failed_requests": {"dns_error": 3}}, "shop.example", 0.9)
