"""A stock field's value as schema.org's short name (scrapers/extract.py normalize_availability): names,
and a shop's own words in a stock field, which used to be stored as they were and read as not buyable."""

from __future__ import annotations

import json

import pytest
from scrapy.http import HtmlResponse

from scrapers.extract import extract_product, normalize_availability


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("NOT SOLD", "InStock"),
        ("SOLD", "OutOfStock"),
        ("Sold by Amazon", None),
        ("Auf Lager", "InStock"),
        ("épuisé", "OutOfStock"),
        ("indisponible", "OutOfStock"),
        ("disponible", "InStock"),
        ("not available", "OutOfStock"),
        ("Нет в наличии", "OutOfStock"),
        ("MadeToOrder", "MadeToOrder"),
        ("Foo bar", None),
        ("in_stock", "InStock"),
    ],
)
def test_stock_words_in_a_stock_field(raw, expected):
    assert normalize_availability(raw) == expected


def test_a_classified_ads_not_sold_status_is_in_stock():
    body = (
        '<div itemscope itemtype="http://schema.org/Product"><h1 itemprop="name">Surfer Magazine 1970s</h1>'
        '<div itemprop="offers" itemscope itemtype="http://schema.org/Offer"><span itemprop="price">60</span>'
        '<meta itemprop="priceCurrency" content="CAD"><h4>Status</h4><span itemprop="availability"> NOT SOLD </span>'
        "</div></div>"
    )
    response = HtmlResponse(
        "https://www.usedvictoria.com/classified-ad/x_1",
        body=f"<html><body>{body}</body></html>".encode(),
        encoding="utf-8",
    )
    assert extract_product(response)["availability"] == "InStock"


def _page(offer_availability: str, buy_box: str, cards: str = "") -> HtmlResponse:
    json_ld = (
        '{"@context": "https://schema.org/", "@type": "Product", "name": "Akron leather Chelsea boot", '
        '"sku": "5095418", "offers": {"@type": "Offer", "price": "150.00", "priceCurrency": "GBP", '
        f'"availability": "{offer_availability}"}}}}'
    )
    body = (
        f'<html><head><title>Akron leather Chelsea boot</title><script type="application/ld+json">{json_ld}</script>'
        f'</head><body><h1>Akron leather Chelsea boot</h1><div class="price">£150.00</div>{buy_box}{cards}</body></html>'
    )
    return HtmlResponse("https://shop.test/p/5095418", body=body.encode(), encoding="utf-8")


ENABLED = '<button type="submit" class="add-to-basket">Add to basket</button>'
DISABLED = '<button type="submit" class="add-to-basket" disabled>Add to basket</button><p>Out of stock</p>'
CARDS = "".join(
    f'<div class="product-card"><a href="/p/{n}">Boot {n}</a><span class="price">£{n}.00</span>'
    '<button type="button" class="add-to-basket">Add to basket</button></div>'
    for n in (40, 50, 60, 70)
)


@pytest.mark.parametrize(
    ("stated", "buy_box", "cards", "expected", "source"),
    [
        # the markup states one variant sold out; the page's own basket button sells the product
        ("https://schema.org/OutOfStock", ENABLED, "", "InStock", "dom"),
        ("SoldOut", ENABLED, "", "InStock", "dom"),
        # sold out on the page too, or only related products' cards can be bought
        ("https://schema.org/OutOfStock", DISABLED, "", "OutOfStock", "jsonld"),
        ("https://schema.org/OutOfStock", "", CARDS, "OutOfStock", "jsonld"),
        # a pre-order's button says nothing against the markup
        ("https://schema.org/PreOrder", ENABLED, "", "PreOrder", "jsonld"),
        ("https://schema.org/InStock", DISABLED, "", "InStock", "jsonld"),
    ],
)
def test_the_pages_own_buy_button_outranks_a_stated_sold_out(stated, buy_box, cards, expected, source):
    product = extract_product(_page(stated, buy_box, cards))
    assert product["availability"] == expected
    assert json.loads(product["field_sources"])["availability"] == source
