"""Item pipelines: skip unchanged products, product images into the store, then the crawl's tables and
summary into the store.

``IncrementalPipeline`` (first) drops, in an incremental crawl, the products that did not change since an
earlier crawl emitted them (see :mod:`scrapers.seen`), before their image is downloaded.
``StoreImagesPipeline`` (an ImagesPipeline) downloads each product's image into ``<store>/images``
and sets ``image_key``; a product without a stored image is dropped and counted by reason.
``StoreExportPipeline`` keeps the surviving items and, when the spider closes, writes
``crawls/<crawl_id>/{products,weak_labels}.parquet`` and ``summary.json``. Keys are fixed per crawl id,
so a rerun overwrites instead of duplicating. An incremental crawl that finished writes its seen-set back.

Image bytes: the store keeps ImagesPipeline's output under ``images/full/<sha1(url)>.jpg``, which is
the shop's original bytes for an RGB JPEG (Scrapy >= 2.13 stores those untouched) and a JPEG re-encode
(Pillow's default quality, 75) for everything else: PNG and WebP (alpha flattened onto white), GIF,
palette images, CMYK or greyscale JPEGs, and JPEGs an EXIF tag turns. The pixels are
:func:`pipeline.images.open_image`'s, the decoder every later reader uses (upright, 16-bit scaled,
alpha on white). We keep this rather than storing every original: curation,
hashing and training then open one format and one colour mode, alpha is flattened once instead of by
every reader, and the decode is the validity check (an HTML "image", a truncated or a too-small one is
dropped here with its reason, before it reaches the store). The cost: a non-JPEG image's bytes are not
the shop's, so ``content_sha256`` identifies our copy and exact-duplicate detection across formats
relies on the perceptual hashes; ``image_url`` keeps the original's address.

Limits before decoding: an image body over ``FASHIONNET_MAX_IMAGE_BYTES`` is cut off by the downloader
(drop ``image_too_large``), and one whose header declares more than ``FASHIONNET_MAX_IMAGE_PIXELS``
(``curation.max_image_pixels``) is dropped as ``image_too_many_pixels`` from its header alone: a small
PNG can declare 12000x12000 pixels, which would take gigabytes to decode.

The tables and summary are written when the spider closes, whatever the reason, and once before that
at the crawl's deadline (``FASHIONNET_CRAWL_DEADLINE``, an epoch time set by :func:`scrapers.crawl.run_crawl`):
then the spider is closed (reason ``crawl_timeout``), and what was extracted until then is in the store
even if the close, which lets requests in flight finish, outlasts the grace period and the process is
killed. The summary says why the crawl ended (``finish_reason``, ``timed_out``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from io import BytesIO
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from itemadapter import ItemAdapter
from PIL import Image
from scrapy import Request, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import DownloadCancelledError, DropItem
from scrapy.http import Response
from scrapy.http.request import NO_CALLBACK
from scrapy.pipelines.images import ImageException, ImagesPipeline
from scrapy.utils.defer import deferred_from_coro
from twisted.python.failure import Failure

from pipeline.images import DECOMPRESSION_BOMB, UndecodableImage, open_image, rules_from_settings
from pipeline.storage import open_store
from pipeline.store_layout import crawl_products_key, crawl_summary_key, crawl_weak_labels_key, image_key
from scrapers.items import PRODUCTS_SCHEMA, WEAK_LABELS_SCHEMA, ProductItem, WeakLabelItem
from scrapers.middlewares import BACKOFF_STAT, FAILED_STAT

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.pipelines.media import FileInfoOrError
from scrapers.network import REFUSED_STAT, RefusedRequest
from scrapers.seen import SKIPPED_STAT, SeenTracker, seen_tracker

logger = logging.getLogger(__name__)

DROP_STAT = "fashionnet/dropped/"
#: The finish reason of a crawl stopped at its deadline (StoreExportPipeline).
DEADLINE_REASON = "crawl_timeout"
#: Finish reasons of a crawl that ran out of time: its deadline, Scrapy's CLOSESPIDER_TIMEOUT, and the
#: graceful stop on SIGTERM (run_crawl's escalation when the deadline did not stop it).
TIMED_OUT_REASONS = frozenset({DEADLINE_REASON, "closespider_timeout", "shutdown"})


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
    if message.startswith("Image too small"):
        return "image_too_small"
    if message.startswith("image_too_many_pixels"):
        return "image_too_many_pixels"
    if "truncated" in message.lower():
        return "image_truncated"
    return "image_invalid"


class IncrementalPipeline:
    """In an incremental crawl, drops (as ``skipped_unchanged``, not as a failure) unchanged products."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.tracker: SeenTracker | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> IncrementalPipeline:
        return cls(crawler)

    def open_spider(self) -> None:
        self.tracker = seen_tracker(self.crawler)

    def process_item(self, item: Any) -> Any:
        if self.tracker is None or not isinstance(item, ProductItem):
            return item
        adapter = ItemAdapter(item)
        if self.tracker.should_emit(adapter["item_id"], adapter.asdict()):
            return item
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value(SKIPPED_STAT)
        raise DropItem(f"unchanged since an earlier crawl: {adapter.get('product_url')}", log_level="DEBUG")


def _served_as_stored(body: bytes) -> bool:
    """True for an RGB JPEG without an EXIF turn: what the shop served is what every reader decodes."""
    try:
        with Image.open(BytesIO(body)) as original:
            return original.format == "JPEG" and original.mode == "RGB" and original.getexif().get(0x0112, 1) == 1
    except Exception:  # noqa: BLE001 - it decoded in open_image; an unreadable EXIF block means re-encode
        return False


def _jpeg(image: Image.Image) -> BytesIO:
    """The decoded RGB image as a JPEG at Pillow's default quality (75), as Scrapy stores images."""
    buffer = BytesIO()
    image.save(buffer, "JPEG")
    return buffer


class StoreImagesPipeline(ImagesPipeline):
    """ImagesPipeline for ProductItems only; sets ``image_key`` = ``images/<stored path>``.

    Scrapy hands ``item_completed`` a bare FileException for every kind of failure, so the reason is
    recorded per image URL where it is still known (``media_downloaded`` / ``media_failed``).
    """

    # Failures are counted and logged as drops (warnings), not as errors.
    LOG_FAILED_RESULTS = False

    def open_spider(self, spider: Spider | None = None) -> None:
        """``spider``: the supertype's deprecated argument; Scrapy passes none (optional, so it never will)."""
        super().open_spider()
        self.failure_reasons: dict[str, str] = {}
        self.max_image_bytes = self.crawler.settings.getint("FASHIONNET_MAX_IMAGE_BYTES", 0)
        self.max_image_pixels = self.crawler.settings.getint("FASHIONNET_MAX_IMAGE_PIXELS", 0)

    def get_media_requests(self, item: Any, info: ImagesPipeline.SpiderInfo) -> list[Request]:
        """Scrapy's image requests, each with the image body size limit instead of the page one."""
        requests = super().get_media_requests(item, info)
        if self.max_image_bytes:
            for request in requests:
                request.meta["download_maxsize"] = self.max_image_bytes
                request.meta["download_warnsize"] = 0
        return requests

    async def process_item(self, item: Any, spider: Spider | None = None) -> Any:
        """``spider``: as in :meth:`open_spider`, unused."""
        if not isinstance(item, ProductItem):
            return item
        if not item.get("image_urls"):
            raise drop(self.crawler, "no_image_url", f"{item.get('product_url')} has no image")
        return await super().process_item(item)

    async def media_downloaded(
        self, response: Response, request: Request, info: ImagesPipeline.SpiderInfo, *, item: Any = None
    ) -> Any:
        try:
            return await super().media_downloaded(response, request, info, item=item)
        except Exception as error:
            self.failure_reasons[request.url] = image_failure_reason(error)
            raise

    def media_failed(self, failure: Failure, request: Request, info: ImagesPipeline.SpiderInfo) -> Any:
        error = getattr(failure, "value", None)
        if isinstance(error, RefusedRequest):  # off the retailer's hosts or an internal address
            reason = f"image_{error.reason}"
        elif isinstance(error, DownloadCancelledError):  # over FASHIONNET_MAX_IMAGE_BYTES
            reason = "image_too_large"
        else:
            reason = "image_download_failed"
        self.failure_reasons.setdefault(request.url, reason)
        return super().media_failed(failure, request, info)

    def get_images(
        self, response: Response, request: Request, info: ImagesPipeline.SpiderInfo, *, item: Any = None
    ) -> Iterator[tuple[str, Image.Image, BytesIO]]:
        """Scrapy's ``get_images``, decoding through :func:`pipeline.images.open_image`.

        So the declared pixel count is checked before decoding (drop ``image_too_many_pixels``), the
        stored image is upright (EXIF orientation applied), and a 16-bit, transparent, CMYK or palette
        image is stored as the RGB every reader gets from the same decoder (Scrapy's own conversion
        clips 16-bit greys to white). An upright RGB JPEG is stored as the shop served it.
        """
        path = self.file_path(request, response=response, info=info, item=item)
        max_pixels = self.max_image_pixels or rules_from_settings().max_pixels
        try:
            image = open_image(response.body, max_pixels=max_pixels)
        except UndecodableImage as error:
            prefix = "image_too_many_pixels" if error.reason == DECOMPRESSION_BOMB else f"image {error.reason}"
            raise ImageException(f"{prefix}: {error.detail} ({response.url})") from error
        width, height = image.size
        if width < self.min_width or height < self.min_height:
            raise ImageException(f"Image too small ({width}x{height} < {self.min_width}x{self.min_height})")
        buffer = BytesIO(response.body) if _served_as_stored(response.body) else _jpeg(image)
        yield path, image, buffer
        for thumb_id, size in self.thumbs.items():
            thumb_path = self.thumb_path(request, thumb_id, response=response, info=info, item=item)
            thumb_image, thumb_buf = self.convert_image(image, size, response_body=buffer)
            yield thumb_path, thumb_image, thumb_buf

    def item_completed(self, results: list[FileInfoOrError], item: Any, info: ImagesPipeline.SpiderInfo) -> Any:
        item = super().item_completed(results, item, info)
        stored = [result[1] for result in results if result[0]]
        if not stored:
            url = item["image_urls"][0]
            reason = self.failure_reasons.get(url, "image_download_failed")
            raise drop(self.crawler, reason, f"image {url} of {item.get('product_url')} not stored")
        ItemAdapter(item)["image_key"] = image_key(stored[0]["path"])
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
        self.deadline: float = crawler.settings.getfloat("FASHIONNET_CRAWL_DEADLINE", 0.0)
        self._deadline_call: Any = None
        crawler.signals.connect(self._response_received, signal=signals.response_received)
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> StoreExportPipeline:
        return cls(crawler)

    def _response_received(self, response: Response, request: Request, **_: Any) -> None:
        """Counts pages: responses to the spider's own requests (not robots.txt, not images)."""
        if request.callback is not NO_CALLBACK:
            self.pages += 1

    def open_spider(self) -> None:
        self.started = time.monotonic()
        if self.deadline:
            from twisted.internet import reactor

            # Twisted's zope interfaces declare methods without self, so mypy (lacking the mypy-zope plugin)
            # reads the delay as self and the callable as the delay.
            self._deadline_call = reactor.callLater(
                max(0.0, self.deadline - time.time()),  # type: ignore[arg-type]
                self._deadline_reached,
            )

    def _deadline_reached(self) -> None:
        """Write what was extracted so far, then close the spider (requests in flight may still finish)."""
        self._deadline_call = None
        logger.warning("crawl deadline reached: writing what was extracted and closing the spider")
        try:
            self.write_outputs(DEADLINE_REASON)
        finally:  # a store error is logged by Twisted; the crawl still stops (and writes again when closed)
            assert self.crawler.engine is not None
            deferred_from_coro(self.crawler.engine.close_spider_async(reason=DEADLINE_REASON))

    def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        if isinstance(item, ProductItem):
            self.products[adapter["item_id"]] = {name: adapter.get(name) for name in PRODUCTS_SCHEMA.names}
        elif isinstance(item, WeakLabelItem):
            key = tuple(adapter.get(name) for name in WEAK_LABELS_SCHEMA.names)
            self.weak_labels[key] = None  # type: ignore[index]
        return item

    def write_outputs(self, reason: str) -> None:
        """The crawl's tables and summary into the store (whatever ``reason`` the spider closed for)."""
        spider = self.crawler.spider
        crawl_id = spider.crawl_id  # type: ignore[union-attr]
        products = pa.Table.from_pylist(list(self.products.values()), schema=PRODUCTS_SCHEMA)
        kept = [dict(zip(WEAK_LABELS_SCHEMA.names, key)) for key in self.weak_labels if key[0] in self.products]
        weak_labels = pa.Table.from_pylist(kept, schema=WEAK_LABELS_SCHEMA)
        summary = self.summary(crawl_id, len(kept), reason)
        store = open_store(self.store_uri)
        store.write_parquet(crawl_products_key(crawl_id), products)
        store.write_parquet(crawl_weak_labels_key(crawl_id), weak_labels)
        store.write_json(crawl_summary_key(crawl_id), summary)
        logger.info("crawl %s summary: %s", crawl_id, summary)

    def _spider_closed(self, reason: str, **_: Any) -> None:
        """Writes the outputs (here, not in close_spider, which is not told why the spider closed), then an
        incremental crawl's seen-set, but only when the crawl finished normally."""
        if self._deadline_call is not None and self._deadline_call.active():
            self._deadline_call.cancel()
        self.write_outputs(reason)
        tracker = seen_tracker(self.crawler)
        if tracker is None:
            return
        if reason != "finished":
            logger.warning("crawl closed (%s): the seen-set of %s is left as it was", reason, tracker.seen.retailer)
            return
        size = tracker.commit(list(self.products))
        logger.info("seen-set of %s updated: %d products", tracker.seen.retailer, size)

    def summary(self, crawl_id: str, n_weak_labels: int, reason: str = "finished") -> dict[str, Any]:
        stats = self.crawler.stats.get_stats()
        spider = self.crawler.spider
        drops = {k[len(DROP_STAT) :]: v for k, v in sorted(stats.items()) if k.startswith(DROP_STAT)}
        exceptions = {
            k.rsplit("/", 1)[-1]: v for k, v in stats.items() if k.startswith("downloader/exception_type_count/")
        }
        failed = {k[len(FAILED_STAT) :]: v for k, v in sorted(stats.items()) if k.startswith(FAILED_STAT)}
        http_errors = {
            k.rsplit("/", 1)[-1]: v
            for k, v in sorted(stats.items())
            if k.startswith("httperror/response_ignored_status_count/")
        }
        retry_reasons = {
            k.rsplit("/", 1)[-1]: v for k, v in sorted(stats.items()) if k.startswith("retry/reason_count/")
        }
        return {
            "crawl_id": crawl_id,
            "run_token": getattr(spider, "run_token", None),
            "spider": spider.name if spider else None,
            "retailer": getattr(spider, "retailer", None),
            "finished_at": datetime.now(UTC).isoformat(),
            # Why the crawl ended: "finished", or e.g. "closespider_timeout" / "shutdown" (timed_out: its
            # outputs are what it had extracted until then).
            "finish_reason": reason,
            "timed_out": reason in TIMED_OUT_REASONS,
            "duration_s": round(time.monotonic() - self.started, 3),
            "pages": self.pages,
            "pages_without_product": stats.get("fashionnet/pages_without_product", 0),
            # The first crawl.max_listed_pages_without_product of them: {"url", "reason"} (scrapers.spiders.base).
            "pages_without_product_list": list(getattr(spider, "pages_without_product", [])),
            # Listing/pagination pages requested, and links not followed because the spider's cap was reached.
            "listing_pages": stats.get("fashionnet/listing_pages", 0),
            "pagination_capped": stats.get("fashionnet/pagination_capped", 0),
            # Products kept without a field whose value was refused (e.g. a negative price), per field.
            "refused_fields": {
                k.rsplit("/", 1)[-1]: v for k, v in sorted(stats.items()) if k.startswith("fashionnet/refused_fields/")
            },
            "products": len(self.products),
            "images": len({p["image_key"] for p in self.products.values()}),
            "images_downloaded": stats.get("file_status_count/downloaded", 0),
            "weak_labels": n_weak_labels,
            "weak_labels_without_product": len(self.weak_labels) - n_weak_labels,
            "drops": drops,
            "errors": stats.get("log_count/ERROR", 0),
            "download_exceptions": exceptions,
            "robots_forbidden": stats.get("robotstxt/forbidden", 0),
            # Requests that failed for good (after retries), by reason; HTTP error answers by status.
            "failed_requests": failed,
            # Requests never made: off the retailer's hosts, to an internal address, not http(s) (scrapers.network).
            "refused_requests": {
                k[len(REFUSED_STAT) :]: v for k, v in sorted(stats.items()) if k.startswith(REFUSED_STAT)
            },
            "http_errors": http_errors,
            "retries": stats.get("retry/count", 0),
            "retries_by_reason": retry_reasons,
            "retries_given_up": stats.get("retry/max_reached", 0),
            "retry_backoff_s": round(float(stats.get(BACKOFF_STAT, 0.0)), 3),
            "incremental": seen_tracker(self.crawler) is not None,
            "skipped_unchanged": stats.get(SKIPPED_STAT, 0),
            # Incremental nights (scrapers.seen): products whose fields matched the stored ones, of which
            # answered 304 Not Modified, and not requested because their sitemap lastmod was not newer.
            "unchanged": stats.get("fashionnet/unchanged", 0),
            "not_modified": stats.get("fashionnet/not_modified", 0),
            "lastmod_unchanged": stats.get("fashionnet/lastmod_unchanged", 0),
        }
