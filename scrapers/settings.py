"""Scrapy settings for FashionNet (``SCRAPY_SETTINGS_MODULE=scrapers.settings``).

Values come from the project's configuration (:func:`pipeline.settings.get_settings`), so a crawl
uses the same store, user agent and politeness as the rest of the pipeline.
"""

from __future__ import annotations

import os
from typing import Any

from pipeline.settings import Settings, get_settings
from pipeline.store_layout import IMAGES_PREFIX

BOT_NAME = "fashionnet"
SPIDER_MODULES = ["scrapers.spiders"]
NEWSPIDER_MODULE = "scrapers.spiders"

TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False

# Politeness: AutoThrottle adapts the delay to the server's latency; robots.txt, the per-domain cap,
# the user agent, timeouts and retries (exponential backoff, see scrapers.middlewares) come from the
# configuration below.
AUTOTHROTTLE_ENABLED = True
AUTOTHROTTLE_MAX_DELAY = 10.0
RETRY_ENABLED = True

DOWNLOADER_MIDDLEWARES = {
    # First after the engine: a request off the retailer's hosts or to an internal address is refused
    # before robots.txt, retries or the download (scrapers.network).
    "scrapers.network.HostPolicyMiddleware": 20,
    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
    "scrapers.middlewares.BackoffRetryMiddleware": 550,
    "scrapy.downloadermiddlewares.redirect.RedirectMiddleware": None,
    "scrapers.middlewares.CountingRedirectMiddleware": 600,
    # Nearest the engine: sees only failures no other middleware turned into a retry or a response.
    "scrapers.middlewares.FailureStatsMiddleware": 10,
}

# The address a host name resolves to is checked at connect time (DNS rebinding, names of internal hosts).
TWISTED_DNS_RESOLVER = "scrapers.network.GuardedResolver"

ITEM_PIPELINES = {
    # Before the images: unchanged products of an incremental crawl never download their image.
    "scrapers.pipelines.IncrementalPipeline": 50,
    "scrapers.pipelines.StoreImagesPipeline": 100,
    "scrapers.pipelines.StoreExportPipeline": 800,
}
# Scrapy's S3 files store only reads credentials from settings when set; otherwise botocore uses the
# environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION).
AWS_REGION_NAME = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")


def images_store(store_uri: str) -> str:
    """IMAGES_STORE for a store URI: ``<store>/images`` (a local folder path for ``file://`` stores).

    Scrapy's S3 store joins its prefix and the file path without a separator, hence the trailing slash.
    """
    if store_uri.startswith("file://"):
        return store_uri[len("file://") :].rstrip("/") + "/" + IMAGES_PREFIX
    return store_uri.rstrip("/") + "/" + IMAGES_PREFIX + "/"


def fashionnet_settings(settings: Settings) -> dict[str, Any]:
    """The Scrapy settings derived from the FashionNet configuration."""
    crawl = settings.crawl
    per_domain = int(crawl.concurrent_requests_per_domain)
    return {
        "USER_AGENT": crawl.user_agent,
        "ROBOTSTXT_OBEY": bool(crawl.obey_robots_txt),
        "CONCURRENT_REQUESTS_PER_DOMAIN": per_domain,
        "DOWNLOAD_DELAY": float(crawl.download_delay_s),
        # Scrapy's default first delay (5 s) would dominate a small crawl; AutoThrottle adapts from here.
        "AUTOTHROTTLE_START_DELAY": float(crawl.autothrottle_start_delay_s),
        "AUTOTHROTTLE_TARGET_CONCURRENCY": float(per_domain),
        "CONCURRENT_REQUESTS": int(crawl.concurrent_requests),
        "CONCURRENT_ITEMS": int(crawl.concurrent_items),
        "DOWNLOAD_TIMEOUT": float(crawl.download_timeout_s),
        "RETRY_TIMES": int(crawl.retry_times),
        "RETRY_HTTP_CODES": [int(code) for code in crawl.retry_http_codes],
        "FASHIONNET_RETRY_BACKOFF_BASE": float(crawl.retry_backoff_base_s),
        "FASHIONNET_RETRY_BACKOFF_MAX": float(crawl.retry_backoff_max_s),
        # Bodies over these sizes are cut off (Scrapy's default is 1 GiB); images get their own limit
        # (request meta download_maxsize, scrapers.pipelines), and their declared pixel count is checked
        # before they are decoded.
        "DOWNLOAD_MAXSIZE": int(crawl.max_page_bytes),
        "DOWNLOAD_WARNSIZE": int(crawl.max_page_bytes) // 2,
        "FASHIONNET_MAX_IMAGE_BYTES": int(crawl.max_image_bytes),
        "FASHIONNET_MAX_IMAGE_PIXELS": int(settings.curation.max_image_pixels),
        "IMAGES_MIN_WIDTH": int(crawl.images_min_width),
        "IMAGES_MIN_HEIGHT": int(crawl.images_min_height),
        "FASHIONNET_INCREMENTAL": bool(crawl.incremental),
        "LOG_LEVEL": str(crawl.log_level).upper(),
        "IMAGES_STORE": images_store(settings.store_uri),
        "AWS_ENDPOINT_URL": settings.s3_endpoint_url,
        "FASHIONNET_STORE_URI": settings.store_uri,
    }


globals().update(fashionnet_settings(get_settings()))
