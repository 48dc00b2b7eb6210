"""Which identifier is the product's (scrapers/visible.py, merged in scrapers/extract.py): the one the
page prints with a label or in an element named for it wins over a stated sku the page never shows."""

from __future__ import annotations

import json

import pytest
from scrapy.http import HtmlResponse

from scrapers.extract import extract_product
from scrapers.visible import labelled_ids

URL = "https://shop.example/p/1"


def page(body: str, block: dict | None = None) -> HtmlResponse:
    head = f'<script type="application/ld+json">{json.dumps(block)}</script>' if block else ""
    return HtmlResponse(URL, body=f"<html><head>{head}</head><body>{body}</body></html>".encode(), encoding="utf-8")


def product(sku: str) -> dict:
    return {
        "@type": "Product",
        "name": "Chelsea Boot",
        "sku": sku,
        "offers": {"price": "136.00", "priceCurrency": "GBP"},
    }


BUY_BOX = '<h1>Chelsea Boot</h1><span class="price">£136.00</span>{code}<button type="submit">Add to basket</button>'


def test_a_printed_product_code_beats_a_stated_sku_the_page_never_shows():
    data = extract_product(page(BUY_BOX.format(code="<p>Product code: 39139301</p>"), product("238887908")))
    assert data["sku"] == "39139301"
    assert json.loads(data["field_sources"])["sku"] == "dom"


def test_a_stated_sku_the_page_shows_is_kept():
    body = BUY_BOX.format(code="<p>Product code: 39139301</p><p>Item 238887908 in stock</p>")
    data = extract_product(page(body, product("238887908")))
    assert data["sku"] == "238887908"
    assert json.loads(data["field_sources"])["sku"] == "jsonld"


def test_an_element_named_for_the_reference_gives_it_without_a_label():
    body = BUY_BOX.format(code='<p>Black - <span data-qa-qualifier="product-reference">1002/710</span></p>')
    data = extract_product(page(body, product("84518927-040-35")))
    assert data["sku"] == "1002/710"


def test_a_size_selector_named_sku_is_not_an_identifier():
    body = BUY_BOX.format(code='<select class="msku-sel"><option>- Select -</option><option>7-8</option></select>')
    data = extract_product(page(body, product("SB-4471")))
    assert data["sku"] == "SB-4471"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("eBay item number: 223820586800 Seller assumes", "223820586800"),
        ("Numéro de l'objet eBay : 293565036718 Le vendeur", "293565036718"),
        ("Identificação ID Produto 1236291 CARACTERÍSTICAS", "1236291"),
        ("Bestellnummer 79961 Mögliche Lieferziele", "79961"),
        ("Cod produs: DR2401 Share", "DR2401"),
        ("Article Number: 12185160 EAN:", "12185160"),
        ("딜번호 : 4548094738 생활에", "4548094738"),
        ("Код: 01245", "01245"),
    ],
)
def test_sku_labels_in_many_languages(text, expected):
    assert [v for _, v in labelled_ids(text)] == [expected]


@pytest.mark.parametrize("text", ["SKU: EUR", "Ref: shirt", "Product code", "Style number: TBD", "EAN: 4006381333931"])
def test_a_label_without_an_identifier_after_it_gives_none(text):
    assert labelled_ids(text) == []


def test_of_the_shown_identifiers_the_one_in_the_url_is_the_products():
    body = (
        '<h1>Tefal Pan Set</h1><span class="price">£48.99</span><button>Add to Basket</button>'
        "<table><tr><th>Item model number</th><td>A157S546</td></tr><tr><th>ASIN</th><td>B004SNMXRS</td></tr></table>"
    )
    response = HtmlResponse(
        "https://www.amazon.co.uk/dp/B004SNMXRS", body=f"<html><body>{body}</body></html>".encode(), encoding="utf-8"
    )
    assert extract_product(response)["sku"] == "B004SNMXRS"


def test_a_stated_sku_missing_from_the_page_loses_even_when_the_url_has_it():
    # The URL holds the shop's catalogue key; the page prints the product code the shopper knows.
    body = BUY_BOX.format(code="<p>Cod produs: DR2401</p>")
    response = HtmlResponse(
        "https://shop.example/drum-unit-dr2401/pd/DMCSZ4BBM/",
        body=f'<html><head><script type="application/ld+json">{json.dumps(product("DMCSZ4BBM"))}'
        f"</script></head><body>{body}</body></html>".encode(),
        encoding="utf-8",
    )
    assert extract_product(response)["sku"] == "DR2401"
