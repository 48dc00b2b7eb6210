"""``shopify``: every product of a Shopify store from its public ``/products.json``.

Shopify stores serve their catalog as JSON, ``/products.json?page=N&limit=250``, until a page comes back
with no products; that is cheaper and more exact than parsing product pages. Each product becomes one
ProductItem: the price is the lowest price among the available variants (all variants when none is
available), the SKU is the first variant's, ``category`` the ``product_type``, ``brand`` the ``vendor``,
the description the text of ``body_html``, colour and material the values of single-valued ``Color`` /
``Material`` options, and the image the first of ``images`` (only that one is downloaded: the store
keeps one image per product). Weak labels come from the colleague module :mod:`scrapers.weak_labels`
(material, title, description), as for product pages. A product without
images is still yielded and dropped by the images pipeline as ``no_image_url`` (counted).

The currency is the retailer's ``currency`` setting or, when not configured, the shop's ``/meta.json``.
A malformed page is counted (``fashionnet/failed/malformed_json``) and skipped; the crawl stops after
``crawl.shopify_max_bad_pages`` malformed pages in a row, at an empty page, or at
``crawl.shopify_max_pages`` (a next page not fetched for the cap is counted, ``pagination_capped`` in the
summary). In an incremental crawl every product is still emitted (the night's snapshot stays whole,
:mod:`scrapers.seen`): the page already carries all its fields, and an unchanged image URL is found up to
date in the store, not downloaded again; the shop's ``updated_at`` is recorded in the seen-set.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import scrapy
from scrapy.http import Response
from twisted.python.failure import Failure

from scrapers.extract import check_price, plain_text
from scrapers.items import ProductItem, WeakLabelItem, item_id_for
from scrapers.middlewares import FAILED_STAT
from scrapers.seen import seen_tracker
from scrapers.spiders.base import LISTING_PAGES, PAGINATION_CAPPED, ShopSpider

PAGE_LIMIT = 250
IN_STOCK = "https://schema.org/InStock"
OUT_OF_STOCK = "https://schema.org/OutOfStock"
INVALID_PRODUCT_STAT = "fashionnet/dropped/invalid_product"


def html_text(value: Any) -> str | None:
    """Plain text of an HTML fragment (entities decoded, tags removed, whitespace collapsed): never markup,
    also where the shop entity-encoded it (scrapers.extract.plain_text)."""
    if not isinstance(value, str):
        return None
    text = " ".join(plain_text(value).split())
    return text or None


def variant_price(variant: dict[str, Any]) -> float | None:
    """A variant's price (Shopify sends decimal strings); None for a refused one ("-49.99", "inf", "nan"),
    as for every other source (scrapers.extract.check_price)."""
    price, _reason = check_price(variant.get("price"))
    return price


def pick_price(variants: list[dict[str, Any]]) -> tuple[float | None, str | None]:
    """(lowest price, availability): among available variants, else among all variants."""
    available = [v for v in variants if v.get("available")]
    prices = [p for p in (variant_price(v) for v in (available or variants)) if p is not None]
    availability = IN_STOCK if available else (OUT_OF_STOCK if variants else None)
    return (min(prices) if prices else None), availability


def option_value(product: dict[str, Any], *names: str) -> str | None:
    """The value of a single-valued option (e.g. Color), else None: a product in 5 colours has no one colour."""
    for option in product.get("options") or []:
        if isinstance(option, dict) and str(option.get("name", "")).strip().lower() in names:
            values = [v for v in option.get("values") or [] if isinstance(v, str) and v.strip()]
            if len(values) == 1:
                return values[0].strip()
    return None


def image_sources(product: dict[str, Any]) -> list[str]:
    return [
        img["src"]
        for img in product.get("images") or []
        if isinstance(img, dict) and isinstance(img.get("src"), str) and img["src"]
    ]


def text_or_none(value: Any) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return value.strip() or None if isinstance(value, str) else None


class ShopifySpider(ShopSpider):
    name = "shopify"
    #: Weak labels from each product's material, title and description (:mod:`scrapers.weak_labels`).
    structured_weak_labels = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        crawl = self.project_settings.crawl
        self.max_pages = crawl.shopify_max_pages
        self.max_bad_pages = crawl.shopify_max_bad_pages
        self.currency: str | None = self.retailer_config.get("currency")

    def page_request(self, page: int, bad_in_a_row: int = 0) -> scrapy.Request:
        self.crawler.stats.inc_value(LISTING_PAGES)
        return scrapy.Request(
            f"{self.base_url}/products.json?page={page}&limit={PAGE_LIMIT}",
            callback=self.parse_page,
            cb_kwargs={"page": page, "bad_in_a_row": bad_in_a_row},
        )

    async def start(self) -> AsyncIterator[scrapy.Request]:
        if self.currency:
            yield self.page_request(1)
        else:
            yield scrapy.Request(f"{self.base_url}/meta.json", callback=self.parse_meta, errback=self.meta_failed)

    def parse_meta(self, response: Response) -> Iterator[scrapy.Request]:
        try:
            meta = json.loads(response.text)
        except (ValueError, AttributeError):
            meta = None
        self.currency = text_or_none(meta.get("currency")) if isinstance(meta, dict) else None
        if self.currency is None:
            self.logger.warning("no currency in %s; products get currency null", response.url)
        yield self.page_request(1)

    def meta_failed(self, failure: Failure) -> Iterator[scrapy.Request]:
        self.logger.warning("shop meta unavailable (%s); products get currency null", failure.value)
        yield self.page_request(1)

    def parse_page(
        self, response: Response, page: int, bad_in_a_row: int
    ) -> Iterator[ProductItem | WeakLabelItem | scrapy.Request]:
        products = self.page_products(response)
        if products is None:
            self.crawler.stats.inc_value(FAILED_STAT + "malformed_json")
            self.logger.warning("malformed products page %s", response.url)
            if bad_in_a_row + 1 < self.max_bad_pages:
                yield from self.next_page_request(page, bad_in_a_row + 1)
            return
        if not products:
            return
        for product in products:
            item = self.shopify_item(product, response)
            if item is not None:
                yield item
                if self.structured_weak_labels:
                    yield from self.weak_label_items(item)
        yield from self.next_page_request(page)

    def next_page_request(self, page: int, bad_in_a_row: int = 0) -> Iterator[scrapy.Request]:
        """The request for the page after ``page``, unless that would pass ``crawl.shopify_max_pages``."""
        if page < self.max_pages:
            yield self.page_request(page + 1, bad_in_a_row)
        else:
            self.crawler.stats.inc_value(PAGINATION_CAPPED)
            self.logger.warning("products.json page cap (%d) reached at %s", self.max_pages, self.base_url)

    @staticmethod
    def page_products(response: Response) -> list[Any] | None:
        """The page's product list, or None when the page is not a products.json answer."""
        try:
            data = json.loads(response.body)
        except ValueError:
            return None
        products = data.get("products") if isinstance(data, dict) else None
        return products if isinstance(products, list) else None

    def shopify_item(self, product: Any, response: Response) -> ProductItem | None:
        """One products.json entry as a ProductItem; None for an invalid entry."""
        stats = self.crawler.stats
        if not isinstance(product, dict) or not text_or_none(product.get("handle")):
            stats.inc_value(INVALID_PRODUCT_STAT)
            return None
        url = f"{self.base_url}/products/{product['handle'].strip()}"
        item_id = item_id_for(url)
        updated_at = text_or_none(product.get("updated_at"))
        tracker = seen_tracker(self.crawler)
        if tracker is not None:
            tracker.note_stamp(item_id, updated_at)
        variants = [v for v in product.get("variants") or [] if isinstance(v, dict)]
        price, availability = pick_price(variants)
        images = [response.urljoin(src) for src in image_sources(product)]
        stats.inc_value("fashionnet/product_pages")
        return ProductItem(
            item_id=item_id,
            retailer=self.retailer,
            product_url=url,
            sku=text_or_none(variants[0].get("sku")) if variants else None,
            title=text_or_none(product.get("title")),
            price=price,
            currency=self.currency,
            category=text_or_none(product.get("product_type")),
            description=html_text(product.get("body_html")),
            brand=text_or_none(product.get("vendor")),
            availability=availability,
            color=option_value(product, "color", "colour"),
            material=option_value(product, "material", "fabric"),
            image_url=images[0] if images else None,
            image_urls=images[:1],
            crawled_at=datetime.now(UTC),
        )
