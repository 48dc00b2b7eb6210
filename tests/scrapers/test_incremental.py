"""Incremental crawls: only new or changed products are emitted, the seen-set is kept in the store, and a
rerun of the same crawl id reproduces its output."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.settings import get_settings
from pipeline.storage import ObjectStore
from scrapers.crawl import run_crawl
from scrapers.demo_store.server import DemoStoreServer
from scrapers.demo_store.site import build_site
from scrapers.seen import SEEN_SCHEMA, SeenSet, SeenTracker, fingerprint, parse_flag, seen_key
from tests.scrapers.test_shopify import ShopifyShop, shopify_product


def without_time(table: pa.Table) -> list[dict]:
    """Rows sorted by item id, without ``crawled_at`` (the one column a rerun may change)."""
    return sorted(table.drop_columns(["crawled_at"]).to_pylist(), key=lambda r: r["item_id"])


def urls(store: ObjectStore, crawl_id: str) -> set[str]:
    return set(store.read_parquet(f"crawls/{crawl_id}/products.parquet").column("product_url").to_pylist())


@pytest.fixture
def store(file_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    get_settings.cache_clear()
    return file_store


def test_seen_set_rules(file_store: ObjectStore):
    product = {"title": "Top", "price": 10, "currency": "EUR", "image_url": "http://x/1.jpg"}
    assert fingerprint(product) == fingerprint({**product, "price": 10.0, "crawled_at": "now"})
    assert fingerprint(product) != fingerprint({**product, "price": 10.5})
    assert parse_flag("true") and not parse_flag("0")
    with pytest.raises(ValueError):
        parse_flag("maybe")
    with pytest.raises(ValueError):
        seen_key("../x")

    first = SeenTracker(SeenSet.load(file_store, "shop", "c1"), file_store)
    assert first.should_emit("a", product) and first.should_emit("b", product)
    first.commit(["a"])  # "b" was not exported (say its image failed): not recorded
    table = file_store.read_parquet(seen_key("shop"))
    assert table.schema.equals(SEEN_SCHEMA) and table.column("item_id").to_pylist() == ["a"]

    second = SeenTracker(SeenSet.load(file_store, "shop", "c2"), file_store)
    assert not second.should_emit("a", product)  # unchanged
    assert second.should_emit("b", product)  # never recorded
    assert second.should_emit("a", {**product, "price": 12})  # changed
    rerun = SeenTracker(SeenSet.load(file_store, "shop", "c1"), file_store)
    assert rerun.should_emit("a", product)  # c1 emitted it: a rerun of c1 emits it again


def test_shopify_incremental_crawls(store: ObjectStore):
    products = [shopify_product(n) for n in range(6)]
    with ShopifyShop(products) as shop:
        def crawl(crawl_id: str) -> dict:
            return run_crawl("shopify", crawl_id, retailer="acme", start_url=shop.base_url, incremental=True, timeout_s=120)

        first = crawl("nightly-1")
        assert first["products"] == 6 and first["incremental"] is True and first["skipped_unchanged"] == 0
        seen = store.read_parquet(seen_key("acme"))
        assert seen.num_rows == 6 and set(seen.column("first_seen_crawl").to_pylist()) == {"nightly-1"}

        before = len(shop.requests)
        second = crawl("nightly-2")
        assert second["products"] == 0 and second["skipped_unchanged"] == 6
        assert not any("/cdn/" in p for p in shop.requests[before:])  # no image downloads
        assert store.read_parquet("crawls/nightly-2/products.parquet").num_rows == 0

        shop.products += [shopify_product(n) for n in (6, 7, 8)]
        third = crawl("nightly-3")
        assert third["skipped_unchanged"] == 6
        assert urls(store, "nightly-3") == {f"{shop.base_url}/products/top-{n}" for n in (6, 7, 8)}

        shop.products[2] = shopify_product(2, price="9.90", updated_at="2026-02-01T08:00:00+01:00")
        fourth = crawl("nightly-4")
        assert urls(store, "nightly-4") == {f"{shop.base_url}/products/top-2"}
        assert store.read_parquet("crawls/nightly-4/products.parquet").column("price").to_pylist() == [9.9]
        assert fourth["skipped_unchanged"] == 8

        # The same crawl id again: the same products, not an empty table, and no seen-set growth.
        output = without_time(store.read_parquet("crawls/nightly-3/products.parquet"))
        crawl("nightly-3")
        assert without_time(store.read_parquet("crawls/nightly-3/products.parquet")) == output
        seen = store.read_parquet(seen_key("acme"))
        assert seen.num_rows == 9
        rows = {r["item_id"]: r for r in seen.to_pylist()}
        assert sum(r["first_seen_crawl"] == "nightly-3" for r in rows.values()) == 3
        assert sum(r["emitted_crawl"] == "nightly-4" for r in rows.values()) == 1

        # Not incremental: everything, and the seen-set is left alone.
        full = run_crawl("shopify", "full-1", retailer="acme", start_url=shop.base_url, timeout_s=120)
        assert full["products"] == 9 and full["incremental"] is False
        assert store.read_parquet(seen_key("acme")).equals(seen)


def test_catalog_incremental_crawls_by_fingerprint(tmp_path: Path, store: ObjectStore, monkeypatch: pytest.MonkeyPatch):
    site = build_site(tmp_path / "site", n_products=6, seed=5)
    with DemoStoreServer(site) as server:
        monkeypatch.setenv("FASHIONNET_SHOP_URL", server.base_url)
        get_settings.cache_clear()

        def crawl(crawl_id: str) -> dict:
            return run_crawl("catalog", crawl_id, incremental=True, timeout_s=120)

        first = crawl("cat-1")
        before = len(server.requests)
        second = crawl("cat-2")
        images_fetched = [p for p in server.requested_paths()[before:] if p.startswith("/images/")]
        server.products[0]["price"] = server.products[0]["price"] + 5  # by_sku shares the dicts
        third = crawl("cat-3")
        output = without_time(store.read_parquet("crawls/cat-3/products.parquet"))
        rerun = crawl("cat-3")
        changed_url = f"{server.base_url}/product/{server.products[0]['sku']}"
    assert first["products"] == 6
    assert (second["products"], second["skipped_unchanged"]) == (0, 6) and images_fetched == []
    assert (third["products"], third["skipped_unchanged"]) == (1, 5)
    assert urls(store, "cat-3") == {changed_url}
    assert rerun["products"] == 1 and without_time(store.read_parquet("crawls/cat-3/products.parquet")) == output
