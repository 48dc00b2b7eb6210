"""``catalog``: every product of a shop, from its sitemap or, failing that, its listing pages.

Listing pages (``rel=next`` and the retailer's ``listing_link_css`` links) are capped at
``crawl.catalog_max_listing_pages`` distinct pages per crawl (:meth:`ShopSpider.listing_request`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import scrapy
from scrapy.http import Response
from twisted.python.failure import Failure

from scrapers.spiders.base import ShopSpider

DEFAULT_LISTING_LINK_CSS = 'a[href*="/catalog"]::attr(href)'


class CatalogSpider(ShopSpider):
    name = "catalog"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_listing_pages = self.project_settings.crawl.catalog_max_listing_pages

    def listing_cap(self) -> int:
        return self.max_listing_pages

    async def start(self) -> AsyncIterator[scrapy.Request]:
        if self.start_url:
            request = self.listing_request(self.start_url, self.parse_listing)
            if request is not None:
                yield request
        else:
            yield scrapy.Request(
                f"{self.base_url}/sitemap.xml", callback=self.parse_sitemap, errback=self.sitemap_failed
            )

    def listing_start(self) -> list[scrapy.Request]:
        request = self.listing_request(f"{self.base_url}/", self.parse_listing)
        return [request] if request is not None else []

    def sitemap_fallback(self) -> Iterable[scrapy.Request]:
        self.logger.info("crawling the listing pages instead of the empty sitemap")
        return self.listing_start()

    def sitemap_failed(self, failure: Failure) -> Iterator[scrapy.Request]:
        self.logger.info("sitemap unavailable (%s); crawling the listing pages instead", failure.value)
        yield from self.listing_start()

    def parse_listing(self, response: Response, **_: Any) -> Iterator[scrapy.Request]:
        for url in self.product_links(response):
            yield self.product_request(url)
        next_url = self.next_page(response)
        css = self.retailer_config.get("listing_link_css", DEFAULT_LISTING_LINK_CSS)
        listing_urls = ([next_url] if next_url else []) + [
            response.urljoin(href) for href in response.css(css).getall()
        ]
        for url in listing_urls:
            request = self.listing_request(url, self.parse_listing)
            if request is not None:
                yield request
