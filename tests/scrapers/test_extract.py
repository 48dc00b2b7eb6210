"""extract_product on good, oddly shaped, broken and missing schema.org JSON-LD."""
from __future__ import annotations

import json

import pytest
from scrapy.http import HtmlResponse, Response

from scrapers.extract import extract_product, parse_price

URL = "https://shop.example/p/1"


def page(*blocks: str, url: str = URL) -> HtmlResponse:
    scripts = "".join(f'<script type="application/ld+json">{b}</script>' for b in blocks)
    return HtmlResponse(url, body=f"<html><head>{scripts}</head><body>x</body></html>".encode(), encoding="utf-8")


PRODUCT = {
    "@context": "https://schema.org",
    "@type": "Product",
    "name": "Striped Cotton Top",
    "image": "/img/1.jpg",
    "sku": "A-1",
    "description": "A top.",
    "category": "Tops",
    "offers": {"@type": "Offer", "price": "19.90", "priceCurrency": "EUR", "availability": "https://schema.org/InStock"},
}


def test_plain_product():
    data = extract_product(page(json.dumps(PRODUCT)))
    assert data == {
        "product_url": URL,
        "sku": "A-1",
        "title": "Striped Cotton Top",
        "description": "A top.",
        "category": "Tops",
        "image_url": "https://shop.example/img/1.jpg",
        "price": 19.9,
        "currency": "EUR",
        "availability": "https://schema.org/InStock",
    }


def test_product_inside_graph_after_other_nodes():
    doc = {"@context": "https://schema.org", "@graph": [{"@type": "BreadcrumbList"}, {**PRODUCT, "@context": None}]}
    assert extract_product(page(json.dumps(doc)))["sku"] == "A-1"


def test_list_of_nodes_type_list_image_object_and_offer_list():
    node = {
        **PRODUCT,
        "@type": ["Thing", "Product"],
        "image": [{"@type": "ImageObject", "url": "https://cdn.example/a.jpg"}],
        "offers": [{"@type": "Offer", "price": 12, "priceCurrency": "USD"}],
        "category": {"@type": "Thing", "name": "Shirts"},
    }
    data = extract_product(page(json.dumps([{"@type": "Organization"}, node])))
    assert data["image_url"] == "https://cdn.example/a.jpg"
    assert data["price"] == 12.0 and data["currency"] == "USD" and data["category"] == "Shirts"


def test_aggregate_offer_uses_low_price():
    node = {**PRODUCT, "offers": {"@type": "AggregateOffer", "lowPrice": "9,99", "priceCurrency": "EUR"}}
    assert extract_product(page(json.dumps(node)))["price"] == 9.99


def test_broken_block_does_not_hide_a_good_one():
    assert extract_product(page('{"@type": "Product", "name": ', json.dumps(PRODUCT)))["title"] == "Striped Cotton Top"


def test_missing_fields_are_none():
    data = extract_product(page(json.dumps({"@type": "Product", "name": "Bare"})))
    assert data["title"] == "Bare"
    assert all(data[k] is None for k in ("sku", "description", "category", "image_url", "price", "currency", "availability"))


@pytest.mark.parametrize(
    "blocks",
    [(), ("not json at all",), (json.dumps({"@type": "Organization", "name": "Shop"}),), ("[]",), ("null",), ('"Product"',)],
)
def test_pages_without_a_product_give_none(blocks):
    assert extract_product(page(*blocks)) is None


def test_non_text_response_gives_none():
    assert extract_product(Response(URL, body=b"\xff\xd8binary")) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("19.90", 19.9), (5, 5.0), ("1.299,00", 1299.0), ("1,299.00", 1299.0), ("€ 12,50", 12.5), ("1,299", 1299.0),
     ("free", None), (None, None), (True, None), ({"x": 1}, None)],
)
def test_parse_price(raw, expected):
    assert parse_price(raw) == expected
