"""``query``: the shop's search as a labeller.

For every class of every taxonomy attribute, search the shop for each of its queries
(:func:`search_queries`: ``crawl.search_queries`` gives one query or a list per class), follow the
result pages, and emit a WeakLabelItem per (product found, attribute, class) with the query as its
source (``query:<query>``). Each product page is parsed once (Scrapy's dupefilter drops repeated
requests); with ``crawl.weak_labels.in_query_spider`` it also yields weak labels from the product's own
structured data (``material:...``, ``name:...``, ``description:...``), so review sees both kinds.
Each query follows at most ``crawl.query_max_result_pages`` result pages (its first page included).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote_plus

import scrapy
from scrapy.http import Response

from pipeline.settings import search_queries
from scrapers.items import WeakLabelItem, item_id_for
from scrapers.spiders.base import ShopSpider


class QuerySpider(ShopSpider):
    name = "query"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        crawl = self.project_settings.crawl
        self.structured_weak_labels = crawl.weak_labels.in_query_spider
        self.max_result_pages = crawl.query_max_result_pages

    def listing_cap(self) -> int:
        return self.max_result_pages

    def search_url(self, query: str) -> str:
        template = self.retailer_config.get("search_url")
        if not template:
            raise ValueError(f"retailer {self.retailer!r} has no search_url in the settings")
        return template.format(base_url=self.base_url, query=quote_plus(query))

    async def start(self) -> AsyncIterator[scrapy.Request]:
        settings = self.project_settings
        for attribute in settings.taxonomy.names:
            for label in settings.taxonomy.classes(attribute):
                for query in search_queries(settings.crawl, label):
                    request = self.result_page_request(self.search_url(query), attribute, label, query)
                    if request is not None:
                        yield request

    def result_page_request(self, url: str, attribute: str, label: str, query: str) -> scrapy.Request | None:
        """A search result page of ``query`` for (attribute, label), within that search's page cap."""
        return self.listing_request(
            url,
            self.parse_search,
            group=f"{attribute}/{label}/{query}",
            cb_kwargs={"attribute": attribute, "label": label, "query": query},
        )

    def parse_search(
        self, response: Response, attribute: str, label: str, query: str
    ) -> Iterator[WeakLabelItem | scrapy.Request]:
        for url in self.product_links(response):
            yield WeakLabelItem(item_id=item_id_for(url), attribute=attribute, label=label, source=f"query:{query}")
            yield self.product_request(url)
        next_url = self.next_page(response)
        request = self.result_page_request(next_url, attribute, label, query) if next_url else None
        if request is not None:
            yield request
