"""Product data from a page's schema.org ``Product`` JSON-LD.

Shops wrap JSON-LD in many ways: one object, a list of objects, an ``@graph``, several ``<script>``
blocks, ``@type`` as a string or a list, ``image`` as a string, list or ``ImageObject``, ``offers`` as
one ``Offer``, a list, or an ``AggregateOffer``. Broken JSON in one block does not hide a good block.
A page without a product gives None, never an exception.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

from scrapy.http import TextResponse

logger = logging.getLogger(__name__)

FIELDS = ("product_url", "sku", "title", "description", "category", "image_url", "price", "currency", "availability")


def _json_ld_blocks(response: TextResponse) -> Iterator[Any]:
    for raw in response.css('script[type="application/ld+json"]::text').getall():
        try:
            yield json.loads(raw, strict=False)
        except ValueError:
            logger.debug("unparsable JSON-LD block on %s", response.url)


def _nodes(value: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in a JSON-LD document, depth first (through lists and @graph)."""
    if isinstance(value, list):
        for entry in value:
            yield from _nodes(entry)
    elif isinstance(value, dict):
        yield value
        if "@graph" in value:
            yield from _nodes(value["@graph"])


def _is_product(node: dict[str, Any]) -> bool:
    types = node.get("@type")
    types = types if isinstance(types, list) else [types]
    return any(isinstance(t, str) and t.rsplit("/", 1)[-1] == "Product" for t in types)


def _text(value: Any) -> str | None:
    """A plain string from a JSON-LD value (string, number, or an object/list with a name)."""
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, dict):
        value = value.get("name") or value.get("@id")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _image(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, dict):
        value = value.get("url") or value.get("contentUrl")
    return value.strip() if isinstance(value, str) and value.strip() else None


def parse_price(value: Any) -> float | None:
    """A price as float: numbers, '12.99', '1.299,00', '€ 12,50'; None when there is no number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    digits = re.sub(r"[^\d.,]", "", value)
    if not re.search(r"\d", digits):
        return None
    if "," in digits and "." in digits:
        # The later separator is the decimal one.
        thousands = "," if digits.rfind(",") < digits.rfind(".") else "."
        digits = digits.replace(thousands, "").replace(",", ".")
    elif "," in digits:
        head, _, tail = digits.rpartition(",")
        digits = f"{head.replace(',', '')}.{tail}" if len(tail) != 3 else digits.replace(",", "")
    try:
        return float(digits)
    except ValueError:
        return None


def _offer(value: Any) -> dict[str, Any]:
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, dict)), None)
    return value if isinstance(value, dict) else {}


def extract_product(response: TextResponse) -> dict[str, Any] | None:
    """The first schema.org Product on the page as a flat dict (missing fields None), or None."""
    if not isinstance(response, TextResponse):
        return None
    for block in _json_ld_blocks(response):
        for node in _nodes(block):
            if _is_product(node):
                return _product_fields(node, response)
    return None


def _product_fields(node: dict[str, Any], response: TextResponse) -> dict[str, Any]:
    offer = _offer(node.get("offers"))
    price = offer.get("price", offer.get("lowPrice"))
    if price is None and isinstance(offer.get("priceSpecification"), dict):
        price = offer["priceSpecification"].get("price")
    image = _image(node.get("image"))
    return {
        "product_url": response.url,
        "sku": _text(node.get("sku") or node.get("productID") or node.get("mpn")),
        "title": _text(node.get("name")),
        "description": _text(node.get("description")),
        "category": _text(node.get("category")),
        "image_url": response.urljoin(image) if image else None,
        "price": parse_price(price),
        "currency": _text(offer.get("priceCurrency")),
        "availability": _text(offer.get("availability")),
    }
