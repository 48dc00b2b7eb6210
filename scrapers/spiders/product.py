"""``product``: products of any shop that publishes structured data (JSON-LD, microdata, OpenGraph).

Arguments (``scrapy crawl product -a name=value`` or ``run_crawl(..., spider_args=...)``):
``retailer`` (any name; it keys the crawl's rows), ``crawl_id``, and exactly one entry point:

- ``sitemap_url``: a sitemap or sitemap index; every listed URL is a candidate product page
  (``url_pattern``, a regular expression, keeps only matching URLs);
- ``listing_url`` (or ``start_url``): a category or search page; product links and pagination links on
  the same site are followed (:attr:`product_link_pattern`, :attr:`pagination_pattern`, ``crawl.product_spider``);
- ``urls``: comma-separated product URLs;
- ``urls_file``: a file with one product URL per line (``#`` starts a comment).

Every product page yields a ProductItem and WeakLabelItems from its material, name and description;
pages without a product are counted (``pages_without_product`` in the crawl summary).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import scrapy
from scrapy.http import Response

from scrapers.spiders.base import NEXT_LINK_CSS, ShopSpider, same_site

ENTRY_ARGUMENTS = ("sitemap_url", "listing_url", "urls", "urls_file")


def read_urls_file(path: str) -> list[str]:
    """Product URLs from a file: one per line, blank lines and ``#`` comments skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


class ProductSpider(ShopSpider):
    name = "product"
    structured_weak_labels = True

    def __init__(
        self,
        retailer: str = "",
        crawl_id: str | None = None,
        sitemap_url: str | None = None,
        listing_url: str | None = None,
        urls: str | None = None,
        urls_file: str | None = None,
        start_url: str | None = None,
        url_pattern: str | None = None,
        **kwargs: Any,
    ) -> None:
        if start_url and not listing_url:
            listing_url, start_url = start_url, None
        given = {k: v for k, v in zip(ENTRY_ARGUMENTS, (sitemap_url, listing_url, urls, urls_file)) if v}
        if len(given) != 1:
            raise ValueError(
                f"the product spider needs exactly one of {', '.join(ENTRY_ARGUMENTS)}; got {sorted(given) or 'none'}"
            )
        if not retailer:
            raise ValueError("the product spider needs a retailer name")
        self.product_urls = self._product_urls(urls, urls_file)
        entry = sitemap_url or listing_url or (self.product_urls[0] if self.product_urls else "")
        super().__init__(retailer=retailer, crawl_id=crawl_id, start_url=entry, **kwargs)
        self.sitemap_url, self.listing_url = sitemap_url, listing_url
        config = self.project_settings.crawl.product_spider
        self.product_link_pattern = re.compile(config.product_link_pattern)
        self.pagination_pattern = re.compile(config.pagination_pattern)
        self.max_listing_pages = config.max_listing_pages
        self.sitemap_url_filter = re.compile(url_pattern) if url_pattern else None

    def listing_cap(self) -> int:
        return self.max_listing_pages

    @staticmethod
    def _product_urls(urls: str | None, urls_file: str | None) -> list[str]:
        if urls_file:
            found = read_urls_file(urls_file)
        else:
            found = [u.strip() for u in (urls or "").split(",") if u.strip()]
        if (urls or urls_file) and not found:
            raise ValueError("no product URLs given")
        bad = [u for u in found if not re.match(r"^https?://", u)]
        if bad:
            raise ValueError(f"product URLs must be absolute http(s) URLs: {bad[:3]}")
        return list(dict.fromkeys(found))

    async def start(self) -> AsyncIterator[scrapy.Request]:
        if self.sitemap_url:
            yield scrapy.Request(self.sitemap_url, callback=self.parse_sitemap)
        elif self.listing_url:
            request = self.listing_request(self.listing_url, self.parse_listing)
            if request is not None:
                yield request
        else:
            for url in self.product_urls:
                yield self.product_request(url)

    def listing_links(self, response: Response) -> tuple[list[str], list[str]]:
        """(product links, pagination links) of a listing page, on the listing's own site."""
        products: dict[str, None] = {}
        pages: dict[str, None] = {}
        for href in response.css(NEXT_LINK_CSS).getall():
            pages[response.urljoin(href)] = None
        for href in response.css("a::attr(href)").getall():
            url = response.urljoin(href.strip()).split("#", 1)[0]
            if not url.startswith(("http://", "https://")) or not same_site(url, response.url) or url == response.url:
                continue
            if self.pagination_pattern.search(url):
                pages[url] = None
            elif self.product_link_pattern.search(url):
                products[url] = None
        return list(products), [p for p in pages if same_site(p, response.url) and p not in products]

    def parse_listing(self, response: Response) -> Iterator[scrapy.Request]:
        """Product requests, then pagination requests while the listing cap allows (counted when requested)."""
        products, pages = self.listing_links(response)
        self.logger.info("listing %s: %d product links, %d pagination links", response.url, len(products), len(pages))
        for url in products:
            yield self.product_request(url)
        for url in pages:
            request = self.listing_request(url, self.parse_listing)
            if request is not None:
                yield request
