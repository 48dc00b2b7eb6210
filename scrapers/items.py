"""Scrapy items: one product (with its image) and one weak label (a product found by a search)."""
from __future__ import annotations

import hashlib

import scrapy


def item_id_for(product_url: str) -> str:
    """The project-wide item id: sha1 of the product URL, hex, first 20 characters."""
    return hashlib.sha1(product_url.encode("utf-8")).hexdigest()[:20]  # noqa: S324 - an id, not security


class ProductItem(scrapy.Item):
    item_id = scrapy.Field()
    retailer = scrapy.Field()
    product_url = scrapy.Field()
    sku = scrapy.Field()
    title = scrapy.Field()
    price = scrapy.Field()
    currency = scrapy.Field()
    category = scrapy.Field()
    image_url = scrapy.Field()
    # ImagesPipeline's input and output fields.
    image_urls = scrapy.Field()
    images = scrapy.Field()
    # The image's key in the store ("images/full/<sha1>.jpg"), set by StoreImagesPipeline.
    image_key = scrapy.Field()
    crawled_at = scrapy.Field()


class WeakLabelItem(scrapy.Item):
    """``label`` of ``attribute`` for ``item_id`` as the shop's search suggests (``source``)."""

    item_id = scrapy.Field()
    attribute = scrapy.Field()
    label = scrapy.Field()
    source = scrapy.Field()
