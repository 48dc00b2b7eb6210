"""The visible page (scrapers/visible.py) through extract_product: product pages without structured
data give a product with ``dom`` sources; listings, search results, events and articles give none."""

from __future__ import annotations

import json

from scrapy.http import HtmlResponse

from scrapers.extract import extract_product

URL = "https://shop.example/p/1"


def page(body: str, head: str = "") -> HtmlResponse:
    return HtmlResponse(URL, body=f"<html><head>{head}</head><body>{body}</body></html>".encode(), encoding="utf-8")


PRODUCT_PAGE = """
<nav><a href="/">Home</a> <span class="price">€ 1,00</span></nav>
<h1>Wollpullover Nord</h1>
<img src="/img/logo.png" class="logo">
<img src="/img/pullover-large.jpg" width="600">
<span class="price old-price">€ 89,00</span>
<span class="product-price">€ 59,90</span>
<p>Art.-Nr.: NP-4471</p>
<p>Sofort lieferbar</p>
<button type="submit">In den Warenkorb</button>
<div class="related"><span class="price">€ 19,90</span></div>
"""


def test_a_product_page_without_structured_data_is_read_from_the_visible_page():
    data = extract_product(page(PRODUCT_PAGE))
    assert data is not None
    assert data["title"] == "Wollpullover Nord"
    assert data["price"] == 59.9 and data["currency"] == "EUR"  # not the old price, the nav's or a related one
    assert data["sku"] == "NP-4471"
    assert data["availability"] == "InStock"
    assert data["image_url"] == "https://shop.example/img/pullover-large.jpg"
    sources = json.loads(data["field_sources"])
    assert {sources[f] for f in ("title", "price", "sku", "availability", "image_url")} == {"dom"}


def test_sold_out_without_a_buy_button_is_out_of_stock():
    body = (
        '<h1>Silk Scarf</h1><span class="price">$12.00 USD</span><p>SKU: SC-9</p><p>Sold out</p>'
        '<button type="submit" disabled>Add to cart</button>'
    )
    data = extract_product(page(body))
    assert data["availability"] == "OutOfStock" and data["sku"] == "SC-9" and data["price"] == 12.0


def test_structured_data_wins_and_the_page_fills_only_gaps():
    block = json.dumps({"@type": "Product", "name": "Pullover", "offers": {"price": "49.00", "priceCurrency": "EUR"}})
    data = extract_product(page(PRODUCT_PAGE, head=f'<script type="application/ld+json">{block}</script>'))
    sources = json.loads(data["field_sources"])
    assert data["title"] == "Pullover" and data["price"] == 49.0 and sources["price"] == "jsonld"
    assert data["sku"] == "NP-4471" and sources["sku"] == "dom"


def test_a_negative_visible_price_is_refused():
    data = extract_product(page('<h1>Cap</h1><span class="price">-€ 9,99</span><p>SKU: CP-1</p>'))
    assert data is not None and data["price"] is None
    assert json.loads(data["field_sources"])["price"] == "dom: refused (negative)"


def _cards(n: int, button: str = "<button>Add to cart</button>") -> str:
    return "".join(
        f'<div class="card"><a href="/p/{i}">Shirt {i}</a><span class="price">€ {i},99</span>{button}</div>'
        for i in range(1, n + 1)
    )


def test_a_listing_is_not_a_product():
    assert extract_product(page(f"<h1>Shirts</h1>{_cards(12)}")) is None


def test_a_search_result_is_not_a_product():
    assert extract_product(page(f"<h1>Search results for “shirt”</h1><p>24 results</p>{_cards(8)}")) is None


def test_an_event_is_not_a_product():
    body = (
        '<h1>Summer Fashion Show 2026</h1><p>Tickets from</p><span class="price">€ 25,00</span>'
        '<a class="button" href="/tickets">Get tickets</a><p>12 June, Berlin</p>'
    )
    assert extract_product(page(body)) is None


def test_an_article_is_not_a_product():
    head = '<meta property="og:type" content="article"><meta property="og:title" content="Ten coats under €100">'
    body = '<h1>Ten coats under €100</h1><p>Our picks this winter.</p><span class="price-tag">€ 99</span>'
    assert extract_product(page(body, head=head)) is None
