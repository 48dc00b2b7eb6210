"""Scrapy items and the Parquet schemas of the crawl tables: the one place a product's fields are defined.

``ProductItem`` is one product page (with its image); ``WeakLabelItem`` is one weak label for a product,
from the shop's search (``query:<query>``) or from the product's own structured data
(``material:<value>``, ``name:<word>``, ``description:<word>``). ``PRODUCTS_SCHEMA`` and
``WEAK_LABELS_SCHEMA`` are the columns of ``crawls/<crawl_id>/{products,weak_labels}.parquet``.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import scrapy

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
        # Structured-data fields added for real shops (issue 3); all nullable.
        ("brand", pa.string()),
        ("availability", pa.string()),
        ("color", pa.string()),
        ("material", pa.string()),
        ("description", pa.string()),
        # Where each field came from, a JSON object {field: source} with source one of jsonld,
        # microdata, og, dom, or "<source>: refused (<reason>)" for a stated value refused (issue 11).
        ("field_sources", pa.string()),
    ]
)
WEAK_LABELS_SCHEMA = pa.schema(
    [("item_id", pa.string()), ("attribute", pa.string()), ("label", pa.string()), ("source", pa.string())]
)


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
    brand = scrapy.Field()
    # schema.org short name: InStock, OutOfStock, PreOrder, ...
    availability = scrapy.Field()
    color = scrapy.Field()
    material = scrapy.Field()
    description = scrapy.Field()
    # JSON {field: source}: jsonld, microdata, og, dom (the visible page), or why a value was refused.
    field_sources = scrapy.Field()


class WeakLabelItem(scrapy.Item):
    """``label`` of ``attribute`` for ``item_id`` as ``source`` suggests (a search query or a product field)."""

    item_id = scrapy.Field()
    attribute = scrapy.Field()
    label = scrapy.Field()
    source = scrapy.Field()
