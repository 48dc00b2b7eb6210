"""What both spiders share: retailer and crawl-id arguments, product pages to ProductItems."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Iterator

import scrapy
from scrapy.http import Response

from pipeline.settings import get_settings
from scrapers.extract import extract_product
from scrapers.items import ProductItem, item_id_for

CRAWL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_PRODUCT_LINK_CSS = 'a[href*="/product/"]::attr(href)'
NEXT_LINK_CSS = 'a[rel~="next"]::attr(href), link[rel~="next"]::attr(href)'


def validate_crawl_id(crawl_id: str | None) -> str:
    """A crawl id usable as one store key segment (letters, digits, '.', '_', '-')."""
    if not crawl_id or not CRAWL_ID.match(crawl_id):
        raise ValueError(f"crawl_id must match {CRAWL_ID.pattern}, got {crawl_id!r}")
    return crawl_id


class ShopSpider(scrapy.Spider):
    """A spider over one retailer of ``settings.retailers``, writing under ``crawls/<crawl_id>/``."""

    def __init__(self, retailer: str = "demo-store", crawl_id: str | None = None, start_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retailer = retailer
        self.crawl_id = validate_crawl_id(crawl_id)
        self.retailer_config: dict[str, Any] = dict(get_settings().retailers.get(retailer) or {})
        if not self.retailer_config and not start_url:
            raise ValueError(f"unknown retailer {retailer!r} and no start_url; known: {sorted(get_settings().retailers)}")
        self.start_url = start_url
        self.base_url = str(self.retailer_config.get("base_url") or _origin(start_url or "")).rstrip("/")

    def product_links(self, response: Response) -> list[str]:
        css = self.retailer_config.get("product_link_css", DEFAULT_PRODUCT_LINK_CSS)
        return [response.urljoin(href) for href in response.css(css).getall()]

    @staticmethod
    def next_page(response: Response) -> str | None:
        href = response.css(NEXT_LINK_CSS).get()
        return response.urljoin(href) if href else None

    def product_request(self, url: str) -> scrapy.Request:
        """The product page request; the canonical URL rides along so ids survive redirects."""
        return scrapy.Request(url, callback=self.parse_product, meta={"product_url": url})

    def parse_product(self, response: Response) -> Iterator[ProductItem]:
        data = extract_product(response)
        stats = self.crawler.stats
        if data is None:
            stats.inc_value("fashionnet/pages_without_product")
            self.logger.warning("no schema.org Product on %s", response.url)
            return
        stats.inc_value("fashionnet/product_pages")
        url = response.meta.get("product_url", response.url)
        image_url = data["image_url"]
        yield ProductItem(
            item_id=item_id_for(url),
            retailer=self.retailer,
            product_url=url,
            sku=data["sku"],
            title=data["title"],
            price=data["price"],
            currency=data["currency"],
            category=data["category"],
            image_url=image_url,
            image_urls=[image_url] if image_url else [],
            crawled_at=datetime.now(timezone.utc),
        )


def _origin(url: str) -> str:
    match = re.match(r"^(https?://[^/]+)", url)
    return match.group(1) if match else ""
