"""``catalog``: every product of a shop, from its sitemap or, failing that, its listing pages."""
from __future__ import annotations

from typing import Any, AsyncIterator, Iterable, Iterator

import scrapy
from scrapy.http import Response
from twisted.python.failure import Failure

from scrapers.spiders.base import ShopSpider

DEFAULT_LISTING_LINK_CSS = 'a[href*="/catalog"]::attr(href)'


class CatalogSpider(ShopSpider):
    name = "catalog"

    async def start(self) -> AsyncIterator[scrapy.Request]:
        if self.start_url:
            yield scrapy.Request(self.start_url, callback=self.parse_listing)
        else:
            yield scrapy.Request(f"{self.base_url}/sitemap.xml", callback=self.parse_sitemap, errback=self.sitemap_failed)

    def listing_start(self) -> scrapy.Request:
        return scrapy.Request(f"{self.base_url}/", callback=self.parse_listing)

    def sitemap_fallback(self) -> Iterable[scrapy.Request]:
        self.logger.info("crawling the listing pages instead of the empty sitemap")
        return [self.listing_start()]

    def sitemap_failed(self, failure: Failure) -> Iterator[scrapy.Request]:
        self.logger.info("sitemap unavailable (%s); crawling the listing pages instead", failure.value)
        yield self.listing_start()

    def parse_listing(self, response: Response, **_: Any) -> Iterator[scrapy.Request]:
        for url in self.product_links(response):
            yield self.product_request(url)
        next_url = self.next_page(response)
        if next_url:
            yield scrapy.Request(next_url, callback=self.parse_listing)
        css = self.retailer_config.get("listing_link_css", DEFAULT_LISTING_LINK_CSS)
        for href in response.css(css).getall():
            yield response.follow(href, callback=self.parse_listing)
