import dataclasses
import re
import shutil
from pathlib import Path

import pytest

import pipeline.settings as settings_module
from pipeline.settings import REPO_ROOT, SECTIONS, load_settings, load_taxonomy


def test_default_taxonomy_is_the_briefs():
    taxonomy = load_settings({}).taxonomy
    assert taxonomy.names == ["pattern", "fabric", "style", "shape"]
    assert taxonomy.classes("shape") == ("full-sleeve", "half-sleeve", "sleeveless")
    with pytest.raises(KeyError, match="unknown attribute 'colour'"):
        taxonomy.classes("colour")


def test_relative_file_store_is_under_the_repo():
    assert load_settings({}).store_uri == f"file://{REPO_ROOT / 'var/store'}"


def test_environment_overrides_store_endpoint_and_profile():
    settings = load_settings(
        {"FASHIONNET_STORE": "s3://bkt/p", "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "FASHIONNET_PROFILE": "demo"}
    )
    assert settings.store_uri == "s3://bkt/p"
    assert settings.s3_endpoint_url == "http://127.0.0.1:9"
    assert settings.training.backbone == "efficientnet_lite0" and settings.training.image_size == 128
    assert settings.training.pooling == "avg"  # untouched keys survive the overlay


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="no file"):
        load_settings({"FASHIONNET_PROFILE": "nope"})


def test_bad_taxonomy_is_rejected(tmp_path: Path):
    bad = tmp_path / "t.yaml"
    bad.write_text("attributes:\n  pattern: [solid]\n")
    with pytest.raises(ValueError, match="at least 2 distinct classes"):
        load_taxonomy(bad)


def test_search_query_defaults_to_class_name():
    settings = load_settings({})
    assert settings.search_query("full-sleeve") == "long sleeve"
    assert settings.search_query("striped") == "striped"


# -- retailer entries (issue 11) ---------------------------------------------------------------------------
from pipeline.settings import RetailerConfigError, url_allowed, validate_retailer  # noqa: E402

SITEMAP_SHOP = {
    "kind": "sitemap",
    "base_url": "https://www.shop.example/",
    "entry_points": ["https://shop.example/sitemap.xml"],
    "allowed_hosts": ["cdn.shop.example", "img.shop.example:8443"],
    "crawl": {"download_delay_s": 1.5},
}


def test_the_configured_demo_store_is_a_valid_demo_entry():
    entry = load_settings({}).retailers["demo-store"]
    assert entry["kind"] == "demo" and entry["entry_points"] == [] and entry["crawl"] == {}
    assert (
        load_settings({"FASHIONNET_SHOP_URL": "http://127.0.0.1:9999/"}).retailers["demo-store"]["base_url"]
        == "http://127.0.0.1:9999"
    )


def test_a_valid_entry_is_completed_with_the_absent_keys():
    entry = validate_retailer("shop", SITEMAP_SHOP)
    assert entry["base_url"] == "https://www.shop.example" and entry["search_url"] is None
    assert entry["url_pattern"] is None and entry["urls_file"] is None
    assert entry["crawl"] == {"download_delay_s": 1.5}


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"colour": "red"}, "colour", "unknown key"),
        ({"kind": "magento"}, "kind", "must be one of demo, sitemap, listing, urls, shopify"),
        ({"kind": None}, "kind", "must be one of"),
        ({"base_url": None}, "base_url", "absolute http:// or https:// URL"),
        ({"base_url": "shop.example"}, "base_url", "absolute http:// or https:// URL"),
        ({"base_url": "ftp://shop.example"}, "base_url", "absolute http"),
        ({"base_url": "https://user:pw@shop.example"}, "base_url", "credentials"),
        ({"base_url": "https://shop.example:99999"}, "base_url", "not a valid URL"),
        ({"entry_points": []}, "entry_points", "kind sitemap needs exactly one sitemap URL"),
        ({"entry_points": ["https://shop.example/a.xml", "https://shop.example/b.xml"]}, "entry_points", "got 2"),
        ({"entry_points": "https://shop.example/sitemap.xml"}, "entry_points", "needs a list"),
        ({"entry_points": ["https://evil.example/sitemap.xml"]}, "entry_points[0]", "neither on the retailer's site"),
        (
            {"entry_points": ["https://shop.example:8443/sitemap.xml"]},
            "entry_points[0]",
            "neither on the retailer's site",
        ),
        (
            {"entry_points": ["https://shop.example.evil.test/s.xml"]},
            "entry_points[0]",
            "neither on the retailer's site",
        ),
        ({"url_pattern": "/products/(["}, "url_pattern", "not a regular expression"),
        ({"urls_file": "urls.txt"}, "urls_file", "kind urls only"),
        ({"allowed_hosts": ["cdn.shop.example/images"]}, "allowed_hosts", "not a host or host:port"),
        ({"allowed_hosts": "cdn.shop.example"}, "allowed_hosts", "needs a list"),
        ({"crawl": {"download_delay": 2}}, "crawl.download_delay", "not a crawl setting a retailer may override"),
        ({"crawl": {"download_delay_s": "slow"}}, "crawl.download_delay_s", "non-negative"),
        ({"crawl": {"concurrent_requests_per_domain": -1}}, "crawl.concurrent_requests_per_domain", "non-negative"),
        ({"crawl": {"obey_robots_txt": 0}}, "crawl.obey_robots_txt", "non-negative bool"),
        ({"crawl": ["download_delay_s"]}, "crawl", "needs a mapping"),
        ({"search_url": "https://shop.example/search"}, "search_url", "{query}"),
        ({"search_url": "{base_url}/search?q={query}&s={sort}"}, "search_url", "only {base_url} and {query}"),
        ({"search_url": "https://evil.example/?q={query}"}, "search_url", "off the retailer's site"),
        ({"product_link_css": ""}, "product_link_css", "non-empty string"),
    ],
)
def test_a_bad_entry_names_the_retailer_and_the_field(change, field, message):
    with pytest.raises(RetailerConfigError) as error:
        validate_retailer("acme", {**SITEMAP_SHOP, **change})
    assert str(error.value).startswith(f"retailers.acme.{field}: ")
    assert message in str(error.value)


@pytest.mark.parametrize(
    "entry, field, message",
    [
        ({"kind": "listing", "base_url": "https://shop.example"}, "entry_points", "kind listing needs exactly one"),
        (
            {"kind": "urls", "base_url": "https://shop.example", "entry_points": ["https://shop.example/p/1,2"]},
            "entry_points",
            "urls_file",
        ),
        ({"kind": "urls", "base_url": "https://shop.example"}, "entry_points", "exactly one of them"),
        (
            {
                "kind": "urls",
                "base_url": "https://shop.example",
                "entry_points": ["https://shop.example/p/1"],
                "urls_file": "u.txt",
            },
            "entry_points",
            "exactly one of them",
        ),
        (
            {"kind": "shopify", "base_url": "https://shop.example", "entry_points": ["https://shop.example/p/1"]},
            "entry_points",
            "takes no entry points",
        ),
        (
            {
                "kind": "urls",
                "base_url": "https://shop.example",
                "entry_points": ["https://shop.example/p/1"],
                "url_pattern": "/p/",
            },
            "url_pattern",
            "kind sitemap only",
        ),
    ],
)
def test_entry_points_follow_the_kind(entry, field, message):
    with pytest.raises(RetailerConfigError) as error:
        validate_retailer("acme", entry)
    assert str(error.value).startswith(f"retailers.acme.{field}: ") and message in str(error.value)


def test_a_bad_retailer_name_or_entry_is_refused():
    with pytest.raises(RetailerConfigError, match=r"retailers\.Acme Shop\.name"):
        validate_retailer("Acme Shop", SITEMAP_SHOP)
    with pytest.raises(RetailerConfigError, match=r"retailers\.acme\.entry: needs a mapping"):
        validate_retailer("acme", "https://shop.example")


def test_allowed_urls_are_the_site_and_the_allowed_hosts():
    entry = validate_retailer("shop", SITEMAP_SHOP)
    allowed = [
        "https://shop.example/p/1",
        "https://www.shop.example/p/1",
        "https://cdn.shop.example/i.jpg",
        "http://cdn.shop.example/i.jpg",
        "https://img.shop.example:8443/i.jpg",
    ]
    refused = [
        "https://shop.example:8443/p/1",
        "https://cdn.shop.example:8443/i.jpg",
        "https://img.shop.example/i.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "https://evil.example/",
        "not a url",
        "https://[::1/",
    ]
    assert [url for url in allowed if not url_allowed(entry, url)] == []
    assert [url for url in refused if url_allowed(entry, url)] == []


def test_settings_refuse_to_load_with_a_bad_retailer(tmp_path: Path):
    profile = tmp_path / "shops.yaml"
    profile.write_text("retailers:\n  acme:\n    kind: sitemap\n    base_url: https://acme.example\n")
    with pytest.raises(RetailerConfigError, match=r"retailers\.acme\.entry_points: kind sitemap needs"):
        load_settings({"FASHIONNET_PROFILE": str(profile)})


def test_a_profile_file_adds_retailers_beside_the_demo_store(tmp_path: Path):
    profile = tmp_path / "shops.yaml"
    profile.write_text(
        "retailers:\n  acme:\n    kind: shopify\n    base_url: https://acme.example\n    crawl: {download_delay_s: 2}\n"
    )
    retailers = load_settings({"FASHIONNET_PROFILE": str(profile)}).retailers
    assert sorted(retailers) == ["acme", "demo-store"] and retailers["acme"]["crawl"] == {"download_delay_s": 2}


# -- typed sections (issue 14) -----------------------------------------------------------------------------
def profile_settings(tmp_path: Path, text: str):
    profile = tmp_path / "profile.yaml"
    profile.write_text(text)
    return load_settings({"FASHIONNET_PROFILE": str(profile)})


@pytest.mark.parametrize(
    "text, where",
    [
        ("recommend:\n  scoring_chunk_row: 1024\n", "recommend.scoring_chunk_row"),  # a typo of scoring_chunk_rows
        ("curation:\n  phash_max_distnace: 4\n", "curation.phash_max_distnace"),
        ("crawl:\n  product_spider:\n    max_listing_page: 5\n", "crawl.product_spider.max_listing_page"),
        ("reviews:\n  page_url: null\n", "reviews"),  # a section's name misspelt
    ],
)
def test_a_profile_with_an_unknown_key_fails_at_load(tmp_path: Path, text: str, where: str):
    with pytest.raises(ValueError, match=rf"^{re.escape(where)}: unknown (key|section)"):
        profile_settings(tmp_path, text)


def test_a_profile_that_empties_a_section_fails_at_load_naming_its_keys(tmp_path: Path):
    with pytest.raises(ValueError, match=r"review\.page_url, review\.max_login_body_bytes, .*: missing"):
        profile_settings(tmp_path, "review: null\n")


def test_a_key_missing_from_the_settings_fails_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "config"
    shutil.copytree(settings_module.CONFIG_DIR, config)
    text = (config / "settings.yaml").read_text()
    assert "  scoring_chunk_rows: 32768\n" in text
    (config / "settings.yaml").write_text(text.replace("  scoring_chunk_rows: 32768\n", ""))
    monkeypatch.setattr(settings_module, "CONFIG_DIR", config)
    with pytest.raises(ValueError, match=r"^recommend\.scoring_chunk_rows: missing"):
        load_settings({})


@pytest.mark.parametrize(
    "text, where, needs",
    [
        ("recommend:\n  k: ten\n", "recommend.k", "an integer"),
        ("recommend:\n  mmr_lambda: true\n", "recommend.mmr_lambda", "a number"),
        ("recommend:\n  hybrid_weights: {embedding: high}\n", "recommend.hybrid_weights.embedding", "a number"),
        ("curation:\n  cross_run_kinds: ingest\n", "curation.cross_run_kinds", "a list of strings"),
        ("crawl:\n  obey_robots_txt: 'no'\n", "crawl.obey_robots_txt", "true or false"),
        ("crawl:\n  retry_http_codes: [500, '503']\n", "crawl.retry_http_codes[1]", "an integer"),
        ("crawl:\n  product_spider: null\n", "crawl.product_spider", "a mapping"),
        ("repository:\n  shard_size: 1.5\n", "repository.shard_size", "an integer"),
        ("review:\n  page_url: 8080\n", "review.page_url", "a string or null"),
        ("split:\n  salt: 1\n", "split.salt", "a string"),
    ],
)
def test_a_profile_with_a_value_of_the_wrong_type_fails_at_load(tmp_path: Path, text: str, where: str, needs: str):
    with pytest.raises(ValueError, match=rf"^{re.escape(where)}: needs {needs}, got "):
        profile_settings(tmp_path, text)


def test_the_sections_are_typed_and_hold_no_defaults():
    settings = load_settings({})
    for name, cls in SECTIONS.items():
        section = getattr(settings, name)
        assert type(section) is cls, name
        for spec in dataclasses.fields(cls):
            assert spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING, spec.name
    assert settings.recommend.scoring_chunk_rows == 32768 and settings.crawl.product_spider.max_listing_pages == 50
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.recommend.k = 3  # type: ignore[misc]
