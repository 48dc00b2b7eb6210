"""schema.org RDFa (scrapers/extract.py from_rdfa): a product stated only in RDFa is read, merged
after JSON-LD and microdata, and a page whose RDFa names no product costs no RDFa parse."""

from __future__ import annotations

import json

from scrapy.http import HtmlResponse

from scrapers import extract
from scrapers.extract import extract_product

RDFA = """<html><body><div vocab="https://schema.org/" typeof="Product">
<h1 property="name">Wool Coat Nord</h1><img property="image" src="/img/coat.jpg">
<span>SKU: <span property="sku">WC-1001</span></span>
<div property="brand" typeof="Brand"><span property="name">Nord</span></div>
<div property="offers" typeof="Offer"><span property="price" content="189.00">189,00 €</span>
<meta property="priceCurrency" content="EUR"><link property="availability" href="https://schema.org/OutOfStock"></div>
</div>{extra}</body></html>"""


def page(extra: str = "") -> HtmlResponse:
    return HtmlResponse("https://shop.example/p/1", body=RDFA.format(extra=extra).encode(), encoding="utf-8")


def test_a_product_stated_in_rdfa_only():
    data = extract_product(page())
    assert data["title"] == "Wool Coat Nord" and data["sku"] == "WC-1001" and data["brand"] == "Nord"
    assert data["price"] == 189.0 and data["currency"] == "EUR" and data["availability"] == "OutOfStock"
    assert data["image_url"] == "https://shop.example/img/coat.jpg"
    sources = json.loads(data["field_sources"])
    assert {sources[f] for f in ("title", "sku", "price", "currency", "availability")} == {"rdfa"}


def test_json_ld_outranks_rdfa_field_by_field():
    block = json.dumps({"@type": "Product", "name": "Wool Coat", "offers": {"price": "179.00", "priceCurrency": "EUR"}})
    data = extract_product(page(f'<script type="application/ld+json">{block}</script>'))
    sources = json.loads(data["field_sources"])
    assert data["price"] == 179.0 and sources["price"] == "jsonld"
    assert data["sku"] == "WC-1001" and sources["sku"] == "rdfa"


def test_no_rdfa_parse_without_a_product_typeof(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("RDFa parsed")

    monkeypatch.setattr("extruct.utils.parse_xmldom_html", fail)
    body = '<html><body><ol vocab="https://schema.org/" typeof="BreadcrumbList"><li>Home</li></ol></body></html>'
    assert extract.from_rdfa(None, HtmlResponse("https://shop.example/", body=body.encode(), encoding="utf-8")) is None
