"""Scrapy settings from the FashionNet configuration and small pipeline helpers."""

from __future__ import annotations

import pytest

from pipeline.settings import CrawlSettings, build_section, load_settings
from scrapers.settings import fashionnet_settings, images_store


def test_images_store_for_folder_and_s3_stores():
    assert images_store("file:///data/store/") == "/data/store/images"
    # Scrapy's S3 store concatenates prefix and path: the trailing slash keeps images/full/... intact.
    assert images_store("s3://bucket/fashionnet") == "s3://bucket/fashionnet/images/"
    assert images_store("s3://bucket") == "s3://bucket/images/"


def test_scrapy_settings_follow_the_configuration():
    settings = load_settings({"FASHIONNET_STORE": "s3://b/p", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    scrapy_settings = fashionnet_settings(settings)
    assert scrapy_settings["USER_AGENT"] == settings.crawl.user_agent
    assert scrapy_settings["ROBOTSTXT_OBEY"] is True
    assert scrapy_settings["CONCURRENT_REQUESTS_PER_DOMAIN"] == settings.crawl.concurrent_requests_per_domain
    assert scrapy_settings["IMAGES_STORE"] == "s3://b/p/images/"
    assert scrapy_settings["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert scrapy_settings["FASHIONNET_STORE_URI"] == "s3://b/p"


def test_scrapy_settings_have_no_defaults_of_their_own():
    """config/settings.yaml is the only home of the crawl defaults: a key missing from the crawl section
    is an error naming it, never a second default in code (CONCURRENT_ITEMS once defaulted to 100 here
    against the YAML's 16)."""
    import dataclasses

    settings = load_settings({"FASHIONNET_STORE": "s3://b/p"})
    scrapy_settings = fashionnet_settings(settings)
    assert scrapy_settings["CONCURRENT_ITEMS"] == settings.crawl.concurrent_items
    for key in ("concurrent_items", "obey_robots_txt", "retry_http_codes", "log_level"):
        crawl = {k: v for k, v in settings.crawl.as_dict().items() if k != key}
        with pytest.raises(KeyError, match=key):  # the typed section refuses it where the settings load
            fashionnet_settings(dataclasses.replace(settings, crawl=build_section(CrawlSettings, crawl, "crawl")))


def test_image_failure_reasons_and_item_ids():
    from scrapers.items import item_id_for
    from scrapers.pipelines import image_failure_reason

    assert image_failure_reason(Exception("download-error")) == "image_http_error"
    assert image_failure_reason(Exception("empty-content")) == "image_empty"
    assert image_failure_reason(Exception("cannot identify image file")) == "image_invalid"
    # sha1 hex of the URL, first 20 characters (docs/architecture.md).
    assert item_id_for("http://127.0.0.1:8765/product/A") == "5b8ec43f287b8f99cb13"


def test_crawl_command_passes_spider_arguments_and_setting_overrides():

    from scrapers.crawl import crawl_command

    cmd = crawl_command(
        "shopify", "c-1", "acme", "http://127.0.0.1:1/", "tok", {"incremental": "true"}, {"DOWNLOAD_TIMEOUT": 2}
    )
    assert cmd[-6:] == ["-a", "start_url=http://127.0.0.1:1/", "-a", "incremental=true", "-s", "DOWNLOAD_TIMEOUT=2"]
    with pytest.raises(ValueError):
        crawl_command("shopify", "c-1", "acme", None, "tok", {"crawl_id": "other"})
    with pytest.raises(ValueError):
        crawl_command("shopify", "c-1", "acme", None, "tok", None, {"download_timeout; rm": 1})


def test_scrapy_project_uses_the_politeness_middlewares_and_pipelines(monkeypatch):
    from scrapy.utils.project import get_project_settings

    monkeypatch.setenv("SCRAPY_SETTINGS_MODULE", "scrapers.settings")
    settings = get_project_settings()
    middlewares = settings.getdict("DOWNLOADER_MIDDLEWARES")
    assert middlewares["scrapy.downloadermiddlewares.retry.RetryMiddleware"] is None
    assert middlewares["scrapers.middlewares.BackoffRetryMiddleware"] == 550
    assert middlewares["scrapers.middlewares.FailureStatsMiddleware"] < 100  # nearest the engine
    pipelines = settings.getdict("ITEM_PIPELINES")
    assert pipelines["scrapers.pipelines.IncrementalPipeline"] < pipelines["scrapers.pipelines.StoreImagesPipeline"]
    assert settings.getbool("AUTOTHROTTLE_ENABLED") and settings.getbool("ROBOTSTXT_OBEY")
    assert settings.getint("IMAGES_MIN_WIDTH") > 0 and settings.getint("CONCURRENT_ITEMS") < 100


def test_image_failure_reason_for_small_and_truncated_images():
    from scrapers.pipelines import image_failure_reason

    assert image_failure_reason(Exception("Image too small (16x16 < 32x32)")) == "image_too_small"
    assert image_failure_reason(Exception("Truncated File Read")) == "image_truncated"
