"""A stock field's value as schema.org's short name (scrapers/extract.py normalize_availability): names,
and a shop's own words in a stock field, which used to be stored as they were and read as not buyable."""

from __future__ import annotations

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
