"""What the spiders share: retailer and crawl-id arguments, sitemaps, listing pages, product pages.

A product page becomes one ProductItem through :func:`scrapers.extract.extract_product` (JSON-LD,
microdata, OpenGraph) and, for spiders with ``structured_weak_labels``, WeakLabelItems from its
material, name and description (:mod:`scrapers.weak_labels`). A page without a product is counted
(``fashionnet/pages_without_product``, in the crawl summary) and listed with its reason (the first
``crawl.max_listed_pages_without_product`` of them, :attr:`ShopSpider.pages_without_product`), never an error.

Listing and pagination pages are capped per spider (:meth:`ShopSpider.listing_request`): the cap counts
the distinct listing URLs *requested*, not the pages parsed. Counting parsed pages (as the product
spider did) lets every page parsed before the cap schedule all of its pagination links, so a shop whose
pages each link a few fresh "next" URLs got 981 pages fetched under a cap of 50. A link refused by the
cap is counted (``fashionnet/pagination_capped``, ``pagination_capped`` in the summary).

Incremental crawls (:mod:`scrapers.seen`): a product page whose stored row carries the shop's ``ETag`` /
``Last-Modified`` is requested conditionally; a 304 re-emits the stored row (:meth:`restored_item`), as
does a sitemap entry whose ``lastmod`` is not newer than the stored one (no request at all). The night's
products table stays whole either way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy.crawler import Crawler
from scrapy.http import Response, TextResponse
from scrapy.pipelines.media import MediaPipeline
from scrapy.utils.misc import load_object
from scrapy.utils.sitemap import Sitemap

from pipeline.settings import Settings, get_settings
from scrapers.extract import extract_product
from scrapers.items import ProductItem, WeakLabelItem, item_id_for
from scrapers.seen import LASTMOD_UNCHANGED_STAT, NOT_MODIFIED_STAT, seen_tracker
from scrapers.weak_labels import WeakLabeller

CRAWL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_PRODUCT_LINK_CSS = 'a[href*="/product/"]::attr(href)'
NEXT_LINK_CSS = 'a[rel~="next"]::attr(href), link[rel~="next"]::attr(href)'
PAGES_WITHOUT_PRODUCT = "fashionnet/pages_without_product"
PRODUCT_PAGES = "fashionnet/product_pages"
WEAK_LABEL_STAT = "fashionnet/weak_labels/"
LISTING_PAGES = "fashionnet/listing_pages"
PAGINATION_CAPPED = "fashionnet/pagination_capped"
#: Per field, products whose value was refused (a negative or non-finite price, ...): its source says why.
REFUSED_FIELD_STAT = "fashionnet/refused_fields/"
#: Fields of a stored row that are not carried into a restored item (recomputed by this crawl).
NOT_RESTORED = frozenset({"crawled_at", "image_key", "image_urls", "images"})


def validate_crawl_id(crawl_id: str | None) -> str:
    """A crawl id usable as one store key segment (letters, digits, '.', '_', '-')."""
    if not crawl_id or not CRAWL_ID.match(crawl_id):
        raise ValueError(f"crawl_id must match {CRAWL_ID.pattern}, got {crawl_id!r}")
    return crawl_id


def same_site(url: str, other: str) -> bool:
    """Same host, ignoring a leading "www." (a shop's links to itself)."""

    def host(value: str) -> str:
        name = (urlsplit(value).hostname or "").lower()
        return name[4:] if name.startswith("www.") else name

    return bool(host(url)) and host(url) == host(other)


def sitemap_entries(body: bytes) -> tuple[str, list[str]]:
    """(sitemap type, <loc> URLs) of a sitemap or sitemap index; ("", []) when it is not one."""
    try:
        sitemap = Sitemap(body)
    except Exception:  # noqa: BLE001 - an unparsable sitemap has no entries
        return "", []
    return sitemap.type or "", [entry["loc"] for entry in sitemap if entry.get("loc")]


def sitemap_lastmods(body: bytes) -> dict[str, str]:
    """<loc> -> <lastmod> of the entries of a sitemap that give one."""
    try:
        sitemap = Sitemap(body)
    except Exception:  # noqa: BLE001 - an unparsable sitemap has no entries
        return {}
    return {entry["loc"]: entry["lastmod"] for entry in sitemap if entry.get("loc") and entry.get("lastmod")}


class ShopSpider(scrapy.Spider):
    """A spider over one retailer, writing under ``crawls/<crawl_id>/``.

    ``retailer`` names an entry of ``settings.retailers`` (base URL, search URL, link selectors) or, with
    a ``start_url``, any shop: its base URL is then the start URL's origin.
    """

    #: Whether product pages also yield WeakLabelItems from their structured data.
    structured_weak_labels = False

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> ShopSpider:
        """``images=false`` makes a metadata-only crawl: the media pipelines are switched off, so product
        rows keep their image URL but no image is downloaded (for evaluation, price monitoring)."""
        if not _flag(kwargs.get("images", "true")):
            pipelines = dict(crawler.settings.getwithbase("ITEM_PIPELINES"))
            kept = {path: order for path, order in pipelines.items() if not _is_media_pipeline(path)}
            crawler.settings.set("ITEM_PIPELINES", kept, priority="spider")
            crawler.settings.set("ITEM_PIPELINES_BASE", {}, priority="spider")
        return super().from_crawler(crawler, *args, **kwargs)

    def __init__(
        self, retailer: str = "demo-store", crawl_id: str | None = None, start_url: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.retailer = retailer
        self.crawl_id = validate_crawl_id(crawl_id)
        #: FashionNet's settings (config/settings.yaml), read once per spider; Scrapy's own are ``self.settings``.
        self.project_settings: Settings = get_settings()
        self.retailer_config: dict[str, Any] = dict(self.project_settings.retailers.get(retailer) or {})
        if not self.retailer_config and not start_url:
            raise ValueError(
                f"unknown retailer {retailer!r} and no start_url; known: {sorted(self.project_settings.retailers)}"
            )
        self.start_url = start_url
        self.base_url = str(self.retailer_config.get("base_url") or _origin(start_url or "")).rstrip("/")
        self._labeller: WeakLabeller | None = None
        crawl = self.project_settings.crawl
        #: (url, reason) of pages that gave no product, the first ``max_listed_pages_without_product``.
        self.pages_without_product: list[dict[str, str]] = []
        self.max_listed_pages_without_product = crawl.max_listed_pages_without_product
        #: Listing URLs requested so far, per group (a query spider's query; "" for the others).
        self.listing_urls: dict[str, set[str]] = {}

    # -- listing and pagination pages ------------------------------------------------------------------
    def listing_cap(self) -> int:
        """How many listing pages one group may request (each spider's ``crawl:`` setting)."""
        raise NotImplementedError(f"{type(self).__name__} follows no listing pages")

    def listing_request(self, url: str, callback: Any, group: str = "", **kwargs: Any) -> scrapy.Request | None:
        """A request for a listing/pagination page, or None when ``group`` has used up its cap.

        Counted when requested, per distinct URL (fragment dropped; a URL asked for again is not a new
        page and Scrapy's dupefilter drops it anyway), so the cap bounds what is fetched.
        """
        url = url.split("#", 1)[0]
        requested = self.listing_urls.setdefault(group, set())
        if url not in requested:
            if len(requested) >= self.listing_cap():
                self.crawler.stats.inc_value(PAGINATION_CAPPED)
                if self.crawler.stats.get_value(PAGINATION_CAPPED) == 1:
                    self.logger.warning("listing page cap (%d) reached; not following %s", self.listing_cap(), url)
                return None
            requested.add(url)
            self.crawler.stats.inc_value(LISTING_PAGES)
        return scrapy.Request(url, callback=callback, **kwargs)

    # -- links ---------------------------------------------------------------------------------------
    def product_links(self, response: Response) -> list[str]:
        css = self.retailer_config.get("product_link_css", DEFAULT_PRODUCT_LINK_CSS)
        return [response.urljoin(href) for href in response.css(css).getall()]

    @staticmethod
    def next_page(response: Response) -> str | None:
        href = response.css(NEXT_LINK_CSS).get()
        return response.urljoin(href) if href else None

    #: Only sitemap URLs matching this pattern are requested (None: all).
    sitemap_url_filter: re.Pattern[str] | None = None

    def parse_sitemap(
        self, response: Response, child: bool = False
    ) -> Iterator[scrapy.Request | ProductItem | WeakLabelItem]:
        """Product requests for a sitemap's URLs (a sitemap index is followed); the spider's
        :meth:`sitemap_fallback` when a top-level sitemap lists nothing."""
        kind, entries = sitemap_entries(response.body)
        if not entries:
            self.logger.info("no URLs in the sitemap %s", response.url)
            if not child:
                yield from self.sitemap_fallback()
            return
        lastmods = sitemap_lastmods(response.body) if kind == "urlset" else {}
        tracker = seen_tracker(self.crawler)
        for loc in entries:
            if kind == "sitemapindex":
                yield scrapy.Request(loc, callback=self.parse_sitemap, cb_kwargs={"child": True})
            elif self.sitemap_url_filter is None or self.sitemap_url_filter.search(loc):
                lastmod = lastmods.get(loc)
                stored = tracker.unchanged_by_lastmod(item_id_for(loc), lastmod) if tracker else None
                if stored is not None:
                    self.crawler.stats.inc_value(LASTMOD_UNCHANGED_STAT)
                    yield from self.restored(stored)
                else:
                    yield self.product_request(loc, lastmod=lastmod)

    def sitemap_fallback(self) -> Iterable[scrapy.Request]:
        """What to crawl when the sitemap lists nothing (default: nothing)."""
        return ()

    # -- product pages -------------------------------------------------------------------------------
    def product_request(self, url: str, lastmod: str | None = None) -> scrapy.Request:
        """The product page request; the canonical URL rides along so ids survive redirects.

        In an incremental crawl, a product with a stored row and validators is asked for conditionally
        (``If-None-Match`` / ``If-Modified-Since``); its sitemap ``lastmod`` rides along to be stored.
        """
        meta: dict[str, Any] = {"product_url": url, "lastmod": lastmod}
        tracker = seen_tracker(self.crawler)
        headers = tracker.conditional_headers(item_id_for(url)) if tracker else {}
        if headers:
            meta["handle_httpstatus_list"] = [304]
        return scrapy.Request(url, callback=self.parse_product, meta=meta, headers=headers or None)

    def restored_item(self, stored: dict[str, Any]) -> ProductItem:
        """The stored row of an unchanged product as tonight's item (its image is stored: the images
        pipeline finds it up to date and downloads nothing)."""
        fields = {k: v for k, v in stored.items() if k in ProductItem.fields and k not in NOT_RESTORED}
        image_url = fields.get("image_url")
        return ProductItem(**fields, image_urls=[image_url] if image_url else [], crawled_at=datetime.now(UTC))

    def restored(self, stored: dict[str, Any]) -> Iterator[ProductItem | WeakLabelItem]:
        """The restored item and, for spiders with ``structured_weak_labels``, its weak labels (the same
        ones its fields gave when it was read)."""
        item = self.restored_item(stored)
        yield item
        if self.structured_weak_labels:
            yield from self.weak_label_items(item)

    def note_page_without_product(self, url: str, reason: str) -> None:
        """Count a page that gave no product and list it (up to the configured number)."""
        self.crawler.stats.inc_value(PAGES_WITHOUT_PRODUCT)
        if len(self.pages_without_product) < self.max_listed_pages_without_product:
            self.pages_without_product.append({"url": url, "reason": reason})

    @property
    def labeller(self) -> WeakLabeller:
        if self._labeller is None:
            self._labeller = WeakLabeller.from_settings(self.project_settings)
        return self._labeller

    def parse_product(self, response: Response) -> Iterator[ProductItem | WeakLabelItem]:
        stats = self.crawler.stats
        url = response.meta.get("product_url", response.url)
        tracker = seen_tracker(self.crawler)
        if response.status == 304:
            stored = tracker.stored_product(item_id_for(url)) if tracker else None
            if stored is None:  # only asked conditionally with a stored row; a 304 without one is the shop's
                self.note_page_without_product(response.url, "not_modified_without_stored_row")
                return
            stats.inc_value(NOT_MODIFIED_STAT)
            yield from self.restored(stored)
            return
        data = extract_product(response)
        if data is None:
            reason = "no_product_data" if isinstance(response, TextResponse) else "not_a_text_page"
            self.note_page_without_product(response.url, reason)
            self.logger.warning("no product in the structured data of %s", response.url)
            return
        stats.inc_value(PRODUCT_PAGES)
        for field in refused_fields(data.get("field_sources")):
            stats.inc_value(REFUSED_FIELD_STAT + field)
        if tracker is not None:
            tracker.note_validators(
                item_id_for(url),
                etag=_header(response, b"ETag"),
                last_modified=_header(response, b"Last-Modified"),
                lastmod=response.meta.get("lastmod"),
            )
        item = self.product_item(data, url)
        yield item
        if self.structured_weak_labels:
            yield from self.weak_label_items(item)

    def product_item(self, data: dict[str, Any], url: str) -> ProductItem:
        """A ProductItem from extracted fields; only the main image goes to the images pipeline."""
        image_url = data.get("image_url")
        return ProductItem(
            item_id=item_id_for(url),
            retailer=self.retailer,
            product_url=url,
            sku=data.get("sku"),
            title=data.get("title"),
            price=data.get("price"),
            currency=data.get("currency"),
            category=data.get("category"),
            image_url=image_url,
            image_urls=[image_url] if image_url else [],
            brand=data.get("brand"),
            availability=data.get("availability"),
            color=data.get("color"),
            material=data.get("material"),
            description=data.get("description"),
            field_sources=data.get("field_sources"),
            crawled_at=datetime.now(UTC),
        )

    def weak_label_items(self, item: ProductItem) -> Iterator[WeakLabelItem]:
        """Weak labels from the product's material, name and description (sources name the field)."""
        for label in self.labeller.labels(dict(item)):
            self.crawler.stats.inc_value(WEAK_LABEL_STAT + label.source.split(":", 1)[0])
            yield WeakLabelItem(
                item_id=item["item_id"], attribute=label.attribute, label=label.label, source=label.source
            )


def refused_fields(field_sources: str | dict[str, str] | None) -> list[str]:
    """The fields whose value extraction refused (source ``"<markup>: refused (<reason>)"``); the sources come
    as the products table's JSON text (:func:`scrapers.extract.extract_product`) or as a mapping."""
    sources = json.loads(field_sources) if isinstance(field_sources, str) else (field_sources or {})
    return sorted(f for f, source in sources.items() if ": refused" in str(source))


def _header(response: Response, name: bytes) -> str | None:
    value = response.headers.get(name)
    return value.decode("latin-1") if value else None


def _flag(value: Any) -> bool:
    text = str(value).strip().lower()
    if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(f"expected true or false, got {value!r}")
    return text in ("1", "true", "yes", "on")


def _is_media_pipeline(path: Any) -> bool:
    cls = load_object(path) if isinstance(path, str) else path
    return isinstance(cls, type) and issubclass(cls, MediaPipeline)


def _origin(url: str) -> str:
    match = re.match(r"^(https?://[^/]+)", url)
    return match.group(1) if match else ""
