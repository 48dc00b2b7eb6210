"""A retailer entry becomes its crawl (scrapers.retailers), and `scrapy crawl` works from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import pytest

from pipeline.settings import REPO_ROOT, RETAILER_CRAWL_OVERRIDES, load_settings
from scrapers.retailers import catalog_crawl, crawl_targets, ingest_crawl, politeness, retailer_batch_id

SHOPS = """
retailers:
  site-map:
    kind: sitemap
    base_url: https://www.sm.example
    entry_points: [https://sm.example/sitemap_index.xml]
    url_pattern: /products/
    crawl: {download_delay_s: 2.5, concurrent_requests_per_domain: 1, timeout_s: 900, incremental: true}
  lister:
    kind: listing
    base_url: https://list.example
    entry_points: ["https://list.example/women?page=1"]
  url-list:
    kind: urls
    base_url: https://ul.example
    entry_points: [https://ul.example/p/1, https://ul.example/p/2]
  url-file:
    kind: urls
    base_url: https://uf.example
    urls_file: shops/uf.txt
  shop:
    kind: shopify
    base_url: https://shop.example
    search_url: "{base_url}/search?q={query}"
    crawl: {user_agent: "ShopBot/1.0 (+https://example.org)", obey_robots_txt: false}
"""


@pytest.fixture
def shops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    profile = tmp_path / "shops.yaml"
    profile.write_text(SHOPS)
    monkeypatch.setenv("FASHIONNET_PROFILE", str(profile))
    return load_settings({"FASHIONNET_PROFILE": str(profile)})


def test_each_kind_gets_its_spider_and_arguments(shops):
    demo = catalog_crawl("demo-store", settings=shops)
    assert (demo.spider, demo.spider_args, demo.setting_overrides, demo.start_url) == ("catalog", {}, {}, None)
    sitemap = catalog_crawl("site-map", settings=shops)
    assert sitemap.spider == "product"
    assert sitemap.spider_args == {"sitemap_url": "https://sm.example/sitemap_index.xml", "url_pattern": "/products/"}
    assert catalog_crawl("lister", settings=shops).spider_args == {"listing_url": "https://list.example/women?page=1"}
    assert catalog_crawl("url-list", settings=shops).spider_args == {
        "urls": "https://ul.example/p/1,https://ul.example/p/2"
    }
    assert catalog_crawl("url-file", settings=shops).spider_args == {"urls_file": str(REPO_ROOT / "shops/uf.txt")}
    shopify = catalog_crawl("shop", settings=shops)
    assert (shopify.spider, shopify.spider_args) == ("shopify", {})


def test_a_start_url_replaces_the_entry_points_and_names_any_shop(shops):
    listing = catalog_crawl("site-map", "https://sm.example/sale", settings=shops)
    assert (listing.spider, listing.spider_args, listing.start_url) == ("product", {}, "https://sm.example/sale")
    assert listing.setting_overrides["DOWNLOAD_DELAY"] == 2.5  # the retailer's politeness still holds
    anyone = catalog_crawl("new-shop", "https://new.example/all", settings=shops)
    assert (anyone.spider, anyone.start_url, anyone.setting_overrides) == ("catalog", "https://new.example/all", {})
    with pytest.raises(ValueError, match="retailer 'new-shop' is not in the settings"):
        catalog_crawl("new-shop", settings=shops)


def test_politeness_overrides_become_scrapy_settings_of_that_retailer_only(shops):
    sitemap = catalog_crawl("site-map", settings=shops)
    assert sitemap.setting_overrides == {
        "DOWNLOAD_DELAY": 2.5,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 1,
        "AUTOTHROTTLE_TARGET_CONCURRENCY": 1.0,
    }
    assert (sitemap.timeout_s, sitemap.incremental) == (900.0, True)
    shop = catalog_crawl("shop", settings=shops)
    assert shop.setting_overrides == {"USER_AGENT": "ShopBot/1.0 (+https://example.org)", "ROBOTSTXT_OBEY": False}
    assert (shop.timeout_s, shop.incremental) == (None, None)
    assert catalog_crawl("lister", settings=shops).setting_overrides == {}


def test_every_override_a_retailer_may_set_changes_its_crawl():
    """No override name is accepted by the settings check and then silently ignored by the crawl."""
    base = load_settings({})
    for name, kind in RETAILER_CRAWL_OVERRIDES.items():
        value = {str: "Bot/9", bool: not getattr(base.crawl, name)}.get(kind, 7)  # type: ignore[arg-type]
        entry = {**base.retailers["demo-store"], "crawl": {name: value}}
        settings = load_settings({})
        settings.retailers["demo-store"] = entry
        overrides, timeout, incremental = politeness("demo-store", settings)
        assert overrides or timeout is not None or incremental is not None, name


def test_the_ingest_crawl_searches_retailers_with_a_search_page(shops):
    crawl = ingest_crawl("shop", settings=shops)
    assert (crawl.spider, crawl.setting_overrides["ROBOTSTXT_OBEY"]) == ("query", False)
    with pytest.raises(ValueError, match="retailer 'lister' has no search_url"):
        ingest_crawl("lister", settings=shops)


def test_retailer_batch_ids_keep_their_kind_for_curation():
    """Cross-run deduplication of ingest batches reads the kind from the id (pipeline.curation.curate.batch_kind)."""
    from datetime import datetime

    from pipeline.curation.curate import batch_kind

    night = datetime(2026, 11, 28, 2, tzinfo=UTC)
    assert retailer_batch_id("ingest", night, "demo-store") == "ingest-20261128-demo-store"
    assert batch_kind(retailer_batch_id("ingest", night, "demo-store")) == "ingest"
    assert batch_kind("ingest-20261128") == "ingest" and batch_kind("ingest") is None


def test_targets_refuse_lists_with_start_urls_and_unknown_names(shops):
    configured = sorted(shops.retailers)
    assert crawl_targets([], None, None, configured, shops) == [{"retailer": n, "start_url": None} for n in configured]
    assert crawl_targets(["shop", "shop"], None, None, configured, shops) == [{"retailer": "shop", "start_url": None}]
    with pytest.raises(ValueError, match=r"retailers \['nope'\] are not configured"):
        crawl_targets(["shop", "nope"], None, None, configured, shops)
    with pytest.raises(ValueError, match="no retailer is configured"):
        crawl_targets([], None, None, [], shops)
    with pytest.raises(ValueError, match="not on the site of retailer 'shop'"):
        crawl_targets([], "shop", "https://evil.example/", configured, shops)
    assert crawl_targets([], None, "https://www.sm.example/new", configured, shops) == [
        {"retailer": "site-map", "start_url": "https://www.sm.example/new"}
    ]


# -- `scrapy crawl` from the repository root, as the README documents it -------------------------------------
def product_urls(base_url: str, n: int) -> list[str]:
    """The first ``n`` product URLs of the demo store's sitemap."""
    import urllib.request

    from scrapers.spiders.base import sitemap_entries

    with urllib.request.urlopen(f"{base_url}/sitemap.xml", timeout=5) as response:
        return sitemap_entries(response.read())[1][:n]


@pytest.fixture
def my_shop(demo_server, tmp_path: Path) -> Path:
    """The README's settings file for a shop of one's own, here on 127.0.0.1 (a loopback address is
    fetched only for a retailer configured on it)."""
    profile = tmp_path / "my-shops.yaml"
    profile.write_text(
        f"retailers:\n  my-shop:\n    kind: sitemap\n    base_url: {demo_server.base_url}\n"
        f"    entry_points: [{demo_server.base_url}/sitemap.xml]\n"
    )
    return profile


def scrapy_from_root(args: list[str], store: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """The README's command in a shell at the repository root: no SCRAPY_SETTINGS_MODULE, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("SCRAPY_SETTINGS_MODULE", "PYTHONPATH")}
    env.update({"FASHIONNET_STORE": store, "FASHIONNET_PROFILE": str(profile)})
    scrapy = Path(sys.executable).parent / "scrapy"
    return subprocess.run(
        [str(scrapy), "crawl", "product", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_scrapy_crawl_product_runs_from_the_repository_root_on_a_url_list(demo_server, file_store, my_shop):
    urls = product_urls(demo_server.base_url, 2)
    done = scrapy_from_root(
        ["-a", "retailer=my-shop", "-a", "crawl_id=my-shop-20261202", "-a", f"urls={','.join(urls)}"],
        file_store.uri,
        my_shop,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = file_store.read_json("crawls/my-shop-20261202/summary.json")
    assert summary["products"] == 2 and summary["retailer"] == "my-shop"
    products = file_store.read_parquet("crawls/my-shop-20261202/products.parquet")
    assert sorted(products.column("product_url").to_pylist()) == sorted(urls)


def test_scrapy_crawl_product_runs_from_the_repository_root_on_a_sitemap(demo_server, file_store, my_shop):
    done = scrapy_from_root(
        [
            "-a",
            "retailer=my-shop",
            "-a",
            "crawl_id=my-shop-sitemap",
            "-a",
            f"sitemap_url={demo_server.base_url}/sitemap.xml",
        ],
        file_store.uri,
        my_shop,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert file_store.read_json("crawls/my-shop-sitemap/summary.json")["products"] > 2


def test_a_configured_retailer_is_crawled_with_its_entry(demo_server, file_store, tmp_path, monkeypatch):
    """scrapers.retailers end to end: a kind ``urls`` entry from a profile file, crawled through run_crawl."""
    from pipeline.settings import get_settings

    urls = product_urls(demo_server.base_url, 3)
    (tmp_path / "urls.txt").write_text("# three products\n" + "\n".join(urls) + "\n")
    profile = tmp_path / "shop.yaml"
    profile.write_text(
        f"retailers:\n  local-shop:\n    kind: urls\n    base_url: {demo_server.base_url}\n"
        f"    urls_file: {tmp_path / 'urls.txt'}\n    crawl: {{download_timeout_s: 5}}\n"
    )
    monkeypatch.setenv("FASHIONNET_PROFILE", str(profile))
    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    get_settings.cache_clear()
    crawl = catalog_crawl("local-shop")
    assert crawl.setting_overrides == {"DOWNLOAD_TIMEOUT": 5.0}
    summary = crawl.run("catalog-20261202-local-shop")
    assert summary["products"] == 3 and summary["retailer"] == "local-shop"
