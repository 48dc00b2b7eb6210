"""Incremental crawls: every product is in the night's table, an unchanged one costs little (sitemap
lastmod: no request; ETag / Last-Modified: a 304), the seen-set is kept in the store, and a rerun of the
same crawl id reproduces its output."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pytest

from fashionnet_tools.demo_store.server import DemoStoreServer
from fashionnet_tools.demo_store.site import build_site
from pipeline.settings import get_settings
from pipeline.storage import ObjectStore
from pipeline.store_layout import seen_key
from scrapers.crawl import run_crawl
from scrapers.seen import SEEN_SCHEMA, SeenSet, SeenTracker, fingerprint, parse_flag, parse_lastmod
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
    assert parse_lastmod("2026-12-01") == parse_lastmod("2026-12-01T01:00:00+01:00")
    assert parse_lastmod("yesterday") is None and parse_lastmod(None) is None

    first = SeenTracker(SeenSet.load(file_store, "shop", "c1"), file_store)
    assert first.should_emit("a", product) and first.should_emit("b", product)
    first.note_validators("a", etag='"v1"', last_modified="Tue, 01 Dec 2026 10:00:00 GMT", lastmod="2026-12-01")
    first.commit(
        ["a"], [{"item_id": "a", **product, "image_key": "images/full/1.jpg"}]
    )  # "b" not exported: not recorded
    table = file_store.read_parquet(seen_key("shop"))
    assert table.schema.equals(SEEN_SCHEMA) and table.column("item_id").to_pylist() == ["a"]

    second = SeenTracker(SeenSet.load(file_store, "shop", "c2"), file_store)
    assert second.conditional_headers("a") == {
        "If-None-Match": '"v1"',
        "If-Modified-Since": "Tue, 01 Dec 2026 10:00:00 GMT",
    }
    assert second.conditional_headers("b") == {}
    assert second.stored_product("a")["image_key"] == "images/full/1.jpg"
    assert second.unchanged_by_lastmod("a", "2026-12-01")["title"] == "Top"
    assert second.unchanged_by_lastmod("a", "2026-12-02") is None and second.unchanged_by_lastmod("a", None) is None
    assert second.unchanged_by_lastmod("b", "2020-01-01") is None
    # Every product is emitted (the night's snapshot stays whole); an unchanged one is counted as such.
    assert second.should_emit("a", product) and second.should_emit("b", product)
    second.commit(["a"], [{"item_id": "a", **product, "image_key": "images/full/1.jpg"}])  # a 304: no new validators
    row = file_store.read_parquet(seen_key("shop")).to_pylist()[0]
    assert (row["etag"], row["lastmod"], row["emitted_crawl"], row["last_seen_crawl"]) == (
        '"v1"',
        "2026-12-01",
        "c1",
        "c2",
    )


def test_old_seen_set_without_validators_still_loads(file_store: ObjectStore):
    old = pa.table(
        {
            name: pa.array(["x"])
            for name in ("item_id", "fingerprint", "updated_at", "first_seen_crawl", "last_seen_crawl", "emitted_crawl")
        }
    )
    file_store.write_parquet(seen_key("shop"), old)
    tracker = SeenTracker(SeenSet.load(file_store, "shop", "c2"), file_store)
    assert tracker.conditional_headers("x") == {} and tracker.stored_product("x") is None


def test_shopify_incremental_crawls(store: ObjectStore):
    products = [shopify_product(n) for n in range(6)]
    with ShopifyShop(products) as shop:

        def crawl(crawl_id: str) -> dict:
            return run_crawl(
                "shopify", crawl_id, retailer="acme", start_url=shop.base_url, incremental=True, timeout_s=120
            )

        first = crawl("nightly-1")
        assert first["products"] == 6 and first["incremental"] is True and first["unchanged"] == 0
        seen = store.read_parquet(seen_key("acme"))
        assert seen.num_rows == 6 and set(seen.column("first_seen_crawl").to_pylist()) == {"nightly-1"}

        before = len(shop.requests)
        second = crawl("nightly-2")
        # The whole catalogue again, from the JSON pages alone: no image is downloaded again.
        assert second["products"] == 6 and second["unchanged"] == 6 and second["images_downloaded"] == 0
        assert not any("/cdn/" in p for p in shop.requests[before:])
        assert without_time(store.read_parquet("crawls/nightly-2/products.parquet")) == without_time(
            store.read_parquet("crawls/nightly-1/products.parquet")
        )

        shop.products += [shopify_product(n) for n in (6, 7, 8)]
        shop.products[2] = shopify_product(2, price="9.90", updated_at="2026-02-01T08:00:00+01:00")
        third = crawl("nightly-3")
        assert third["products"] == 9 and third["unchanged"] == 5 and third["images_downloaded"] == 3
        prices = dict(
            zip(
                *store.read_parquet("crawls/nightly-3/products.parquet")
                .select(["product_url", "price"])
                .to_pydict()
                .values()
            )
        )
        assert prices[f"{shop.base_url}/products/top-2"] == 9.9

        output = without_time(store.read_parquet("crawls/nightly-3/products.parquet"))
        crawl("nightly-3")  # the same crawl id again: the same products
        assert without_time(store.read_parquet("crawls/nightly-3/products.parquet")) == output
        seen = store.read_parquet(seen_key("acme"))
        rows = {r["item_id"]: r for r in seen.to_pylist()}
        assert seen.num_rows == 9 and sum(r["first_seen_crawl"] == "nightly-3" for r in rows.values()) == 3
        assert sum(r["emitted_crawl"] == "nightly-3" for r in rows.values()) == 4  # 3 new, 1 changed
        assert sum(r["updated_at"] == "2026-02-01T08:00:00+01:00" for r in rows.values()) == 1

        # Not incremental: everything, and the seen-set is left alone.
        full = run_crawl("shopify", "full-1", retailer="acme", start_url=shop.base_url, timeout_s=120)
        assert full["products"] == 9 and full["incremental"] is False
        assert store.read_parquet(seen_key("acme")).equals(seen)


def test_catalog_nights_by_sitemap_lastmod(tmp_path: Path, store: ObjectStore, monkeypatch: pytest.MonkeyPatch):
    """The demo store's sitemap gives lastmod: unchanged products are not requested at all, yet every one
    is in the night's products table with its stored fields and image key."""
    site = build_site(tmp_path / "site", n_products=6, seed=5)
    with DemoStoreServer(site) as server:
        monkeypatch.setenv("FASHIONNET_SHOP_URL", server.base_url)
        get_settings.cache_clear()

        def crawl(crawl_id: str) -> dict:
            return run_crawl("catalog", crawl_id, incremental=True, timeout_s=120)

        first = crawl("cat-1")
        before = len(server.requests)
        second = crawl("cat-2")
        fetched = server.requested_paths()[before:]
        changed = server.products[0]
        server.update_product(changed["sku"], price=changed["price"] + 5)
        before = len(server.requests)
        third = crawl("cat-3")
        third_fetched = server.requested_paths()[before:]
        output = without_time(store.read_parquet("crawls/cat-3/products.parquet"))
        rerun = crawl("cat-3")
        changed_url = f"{server.base_url}/product/{changed['sku']}"
    assert first["products"] == 6 and first["lastmod_unchanged"] == 0
    assert (second["products"], second["lastmod_unchanged"], second["images_downloaded"]) == (6, 6, 0)
    assert not [p for p in fetched if p.startswith(("/product/", "/images/"))]
    assert without_time(store.read_parquet("crawls/cat-2/products.parquet")) == without_time(
        store.read_parquet("crawls/cat-1/products.parquet")
    )
    assert (third["products"], third["lastmod_unchanged"]) == (6, 5)
    assert [p for p in third_fetched if p.startswith("/product/")] == [urlsplit(changed_url).path]
    assert {r["product_url"]: r["price"] for r in output}[changed_url] == changed["price"]
    assert rerun["products"] == 6 and without_time(store.read_parquet("crawls/cat-3/products.parquet")) == output


def test_product_pages_by_etag_304(tmp_path: Path, store: ObjectStore, monkeypatch: pytest.MonkeyPatch):
    """A URL list (no sitemap): product pages are asked for conditionally; a 304 keeps the stored row."""
    site = build_site(tmp_path / "site", n_products=4, seed=6)
    with DemoStoreServer(site) as server:
        profile = tmp_path / "shop.yaml"
        profile.write_text(
            f"retailers:\n  etag-shop:\n    kind: urls\n    base_url: {server.base_url}\n"
            f"    entry_points: [{server.base_url}/product/x]\n"
        )
        monkeypatch.setenv("FASHIONNET_PROFILE", str(profile))
        get_settings.cache_clear()
        product_urls = ",".join(f"{server.base_url}/product/{p['sku']}" for p in server.products)

        def crawl(crawl_id: str) -> dict:
            return run_crawl(
                "product",
                crawl_id,
                retailer="etag-shop",
                incremental=True,
                timeout_s=120,
                spider_args={"urls": product_urls},
            )

        first = crawl("etag-1")
        server.update_product(server.products[1]["sku"], title="Renamed top")
        before = len(server.responses)
        second = crawl("etag-2")
        answers = [
            (path, status, size) for path, status, size in server.responses[before:] if path.startswith("/product/")
        ]
    assert first["products"] == 4 and first["not_modified"] == 0
    assert second["products"] == 4 and second["not_modified"] == 3 and second["images_downloaded"] == 0
    assert sorted(status for _, status, _ in answers) == [200, 304, 304, 304]
    assert all(size == 0 for _, status, size in answers if status == 304)
    one, two = (without_time(store.read_parquet(f"crawls/etag-{n}/products.parquet")) for n in (1, 2))
    renamed = [r["item_id"] for r in two if r["title"] == "Renamed top"]
    assert len(renamed) == 1
    # The 304 rows are the stored rows, field for field (crawled_at aside).
    assert [r for r in one if r["item_id"] not in renamed] == [r for r in two if r["item_id"] not in renamed]
    assert {r["item_id"]: r["image_key"] for r in one} == {r["item_id"]: r["image_key"] for r in two}
