"""Item pipelines: product images into the store, then the crawl's tables and summary into the store.

``StoreImagesPipeline`` (an ImagesPipeline) downloads each product's image into ``<store>/images``
and sets ``image_key``; a product without a stored image is dropped and counted by reason.
``StoreExportPipeline`` keeps the surviving items and, when the spider closes, writes
``crawls/<crawl_id>/{products,weak_labels}.parquet`` and ``summary.json``. Keys are fixed per crawl id,
so a rerun overwrites instead of duplicating.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
from itemadapter import ItemAdapter
from scrapy import Request, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import DropItem
from scrapy.http import Response
from scrapy.http.request import NO_CALLBACK
from scrapy.pipelines.images import ImagesPipeline
from twisted.python.failure import Failure

from pipeline.storage import open_store
from scrapers.items import ProductItem, WeakLabelItem

logger = logging.getLogger(__name__)

IMAGES_PREFIX = "images/"
DROP_STAT = "fashionnet/dropped/"

PRODUCTS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("retailer", pa.string()),
        ("product_url", pa.string()),
        ("sku", pa.string()),
        ("title", pa.string()),
        ("price", pa.float64()),
        ("currency", pa.string()),
        ("category", pa.string()),
        ("image_url", pa.string()),
        ("image_key", pa.string()),
        ("crawled_at", pa.timestamp("us", tz="UTC")),
    ]
)
WEAK_LABELS_SCHEMA = pa.schema(
    [("item_id", pa.string()), ("attribute", pa.string()), ("label", pa.string()), ("source", pa.string())]
)


def crawl_key(crawl_id: str, name: str) -> str:
    return f"crawls/{crawl_id}/{name}"


def drop(crawler: Crawler, reason: str, message: str) -> DropItem:
    """Count a drop under ``fashionnet/dropped/<reason>`` and return the exception to raise."""
    assert crawler.stats is not None
    crawler.stats.inc_value(DROP_STAT + reason)
    return DropItem(f"{reason}: {message}")


def image_failure_reason(error: BaseException) -> str:
    """A short drop reason for an image that was downloaded but not stored."""
    message = str(error)
    if message == "download-error":
        return "image_http_error"
    if message == "empty-content":
        return "image_empty"
    return "image_invalid"


class StoreImagesPipeline(ImagesPipeline):
    """ImagesPipeline for ProductItems only; sets ``image_key`` = ``images/<stored path>``.

    Scrapy hands ``item_completed`` a bare FileException for every kind of failure, so the reason is
    recorded per image URL where it is still known (``media_downloaded`` / ``media_failed``).
    """

    # Failures are counted and logged as drops (warnings), not as errors.
    LOG_FAILED_RESULTS = False

    def open_spider(self) -> None:
        super().open_spider()
        self.failure_reasons: dict[str, str] = {}

    async def process_item(self, item: Any) -> Any:
        if not isinstance(item, ProductItem):
            return item
        if not item.get("image_urls"):
            raise drop(self.crawler, "no_image_url", f"{item.get('product_url')} has no image")
        return await super().process_item(item)

    async def media_downloaded(self, response: Response, request: Request, info: ImagesPipeline.SpiderInfo, *, item: Any = None) -> Any:
        try:
            return await super().media_downloaded(response, request, info, item=item)
        except Exception as error:
            self.failure_reasons[request.url] = image_failure_reason(error)
            raise

    def media_failed(self, failure: Failure, request: Request, info: ImagesPipeline.SpiderInfo) -> Any:
        self.failure_reasons.setdefault(request.url, "image_download_failed")
        return super().media_failed(failure, request, info)

    def item_completed(self, results: list[tuple[bool, Any]], item: Any, info: ImagesPipeline.SpiderInfo) -> Any:
        item = super().item_completed(results, item, info)
        stored = [value for ok, value in results if ok]
        if not stored:
            url = item["image_urls"][0]
            reason = self.failure_reasons.get(url, "image_download_failed")
            raise drop(self.crawler, reason, f"image {url} of {item.get('product_url')} not stored")
        ItemAdapter(item)["image_key"] = IMAGES_PREFIX + stored[0]["path"]
        return item


class StoreExportPipeline:
    """Collects kept items and writes the crawl's tables and summary through ``open_store``."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.store_uri: str | None = crawler.settings.get("FASHIONNET_STORE_URI")
        self.products: dict[str, dict[str, Any]] = {}
        self.weak_labels: dict[tuple[str, str, str, str], None] = {}
        self.pages = 0
        self.started = time.monotonic()
        crawler.signals.connect(self._response_received, signal=signals.response_received)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> "StoreExportPipeline":
        return cls(crawler)

    def _response_received(self, response: Response, request: Request, **_: Any) -> None:
        """Counts pages: responses to the spider's own requests (not robots.txt, not images)."""
        if request.callback is not NO_CALLBACK:
            self.pages += 1

    def open_spider(self) -> None:
        self.started = time.monotonic()

    def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        if isinstance(item, ProductItem):
            self.products[adapter["item_id"]] = {name: adapter.get(name) for name in PRODUCTS_SCHEMA.names}
        elif isinstance(item, WeakLabelItem):
            key = tuple(adapter.get(name) for name in WEAK_LABELS_SCHEMA.names)
            self.weak_labels[key] = None  # type: ignore[index]
        return item

    def close_spider(self) -> None:
        spider = self.crawler.spider
        crawl_id = spider.crawl_id  # type: ignore[union-attr]
        products = pa.Table.from_pylist(list(self.products.values()), schema=PRODUCTS_SCHEMA)
        kept = [dict(zip(WEAK_LABELS_SCHEMA.names, key)) for key in self.weak_labels if key[0] in self.products]
        weak_labels = pa.Table.from_pylist(kept, schema=WEAK_LABELS_SCHEMA)
        summary = self.summary(crawl_id, len(kept))
        store = open_store(self.store_uri)
        store.write_parquet(crawl_key(crawl_id, "products.parquet"), products)
        store.write_parquet(crawl_key(crawl_id, "weak_labels.parquet"), weak_labels)
        store.write_json(crawl_key(crawl_id, "summary.json"), summary)
        logger.info("crawl %s summary: %s", crawl_id, summary)

    def summary(self, crawl_id: str, n_weak_labels: int) -> dict[str, Any]:
        stats = self.crawler.stats.get_stats()  # type: ignore[union-attr]
        spider = self.crawler.spider
        drops = {k[len(DROP_STAT):]: v for k, v in sorted(stats.items()) if k.startswith(DROP_STAT)}
        exceptions = {
            k.rsplit("/", 1)[-1]: v for k, v in stats.items() if k.startswith("downloader/exception_type_count/")
        }
        return {
            "crawl_id": crawl_id,
            "run_token": getattr(spider, "run_token", None),
            "spider": spider.name if spider else None,
            "retailer": getattr(spider, "retailer", None),
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "duration_s": round(time.monotonic() - self.started, 3),
            "pages": self.pages,
            "pages_without_product": stats.get("fashionnet/pages_without_product", 0),
            "products": len(self.products),
            "images": len({p["image_key"] for p in self.products.values()}),
            "images_downloaded": stats.get("file_status_count/downloaded", 0),
            "weak_labels": n_weak_labels,
            "weak_labels_without_product": len(self.weak_labels) - n_weak_labels,
            "drops": drops,
            "errors": stats.get("log_count/ERROR", 0),
            "download_exceptions": exceptions,
            "robots_forbidden": stats.get("robotstxt/forbidden", 0),
        }
