"""The visible page's buy box (scrapers/visible.py): the title h1, the price and the buy button are the
product's own, not a carousel's, a comparison table's, a pop-up's or an old price; a currency symbol
several countries use is read by the page's country."""

from __future__ import annotations

import json

import pytest
from scrapy.http import HtmlResponse

from scrapers.extract import extract_product, normalize_currency

URL = "https://shop.example/p/1"


def page(body: str, head: str = "", url: str = URL, lang: str = "") -> HtmlResponse:
    html = f'<html lang="{lang}"><head>{head}</head><body>{body}</body></html>'
    return HtmlResponse(url, body=html.encode(), encoding="utf-8")


def carousel(n: int = 4, cls: str = "tile") -> str:
    return (
        '<div class="related">'
        + "".join(
            f'<div class="{cls} {cls}-{i}"><a href="/p/{i + 10}">Other {i}</a><span class="price">£{i}9.00</span>'
            f"<button>Add to basket</button></div>"
            for i in range(1, n + 1)
        )
        + "</div>"
    )


def test_carousel_and_comparison_buttons_do_not_hide_the_product():
    body = (
        '<h1>Tefal Pan Set</h1><span class="price">£48.99</span><button>Add to Basket</button>'
        "<button>Buy Now</button>"
        + carousel(6)
        + "<table><tr>"
        + "".join(
            '<td class="cmp"><a href="/x">x</a><span class="price">£1.00</span><button>Add to Basket</button></td>'
            for _ in range(5)
        )
        + "</tr></table>"
    )
    data = extract_product(page(body, head="<title>Tefal Pan Set : Amazon.co.uk</title>"))
    assert data is not None and data["price"] == 48.99 and data["currency"] == "GBP"


def test_the_h1_that_names_the_page_is_the_title():
    body = (
        '<div class="popup"><h1>Adding to basket...</h1></div><h1>Tefal Pan Set, Black</h1>'
        '<span class="price">£48.99</span><button>Add to Basket</button>'
    )
    data = extract_product(page(body, head="<title>Tefal Pan Set, Black: Amazon.co.uk: Kitchen</title>"))
    assert data["title"] == "Tefal Pan Set, Black"


def test_a_price_box_with_a_struck_old_price_gives_the_current_one():
    body = (
        '<h1>Samsung Galaxy A01</h1><div class="aa_e_price"><s>49 890 тг.</s> <span>44 890 тг.</span></div>'
        '<div class="buy">Купить</div>'
    )
    data = extract_product(page(body, url="https://www.mechta.kz/product/a01/"))
    assert data is not None and data["price"] == 44890 and data["currency"] == "KZT"


@pytest.mark.parametrize(
    ("lang", "url", "currency"),
    [
        ("es-CL", URL, "CLP"),
        ("", "https://www.tienda.cl/p/1", "CLP"),
        ("en-US", URL, "USD"),
        ("", URL, None),
    ],
)
def test_a_dollar_sign_is_read_by_the_page_country(lang, url, currency):
    body = '<h1>Entrada</h1><span class="price">$3.340</span><button>Comprar</button>'
    data = extract_product(page(body, url=url, lang=lang))
    assert data["price"] == 3340 and data["currency"] == currency


def test_three_decimals_in_a_three_decimal_currency():
    body = '<h1>Perfume</h1><span class="price">3.499 KWD</span><button>Add to cart</button>'
    assert extract_product(page(body))["price"] == 3.499


def test_a_visible_price_of_zero_is_a_placeholder_not_a_price():
    body = (
        '<h1>Wool Coat</h1><span class="price">€0,00</span><div><span class="product-price">€189,00</span></div>'
        "<button>Add to cart</button>"
    )
    assert extract_product(page(body))["price"] == 189.0


def test_a_listing_whose_cards_differ_by_an_id_class_is_not_a_product():
    body = "<h1>Coats</h1>" + carousel(8, cls="card")
    assert extract_product(page(body)) is None


def test_a_hidden_buy_button_is_no_buy_button():
    body = (
        '<h1>Summer Show 2026</h1><span class="price">€ 25,00</span>'
        '<div class="sticky-bar" style="display: none"><button>Add to cart</button></div>'
    )
    assert extract_product(page(body)) is None


def test_og_price_with_its_currency_in_the_text():
    head = '<meta property="og:title" content="Good Thoughts, 1 year"><meta property="og:price" content="30,000원~">'
    data = extract_product(page("<h1>Good Thoughts</h1>", head=head))
    assert data["price"] == 30000 and data["currency"] == "KRW"
    assert json.loads(data["field_sources"])["price"] == "og"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("Lei", "RON"),
        ("Kn", "HRK"),
        ("тг.", "KZT"),
        ("원", "KRW"),
        ("zł", "PLN"),
        ("KD", "KWD"),
        ("kr", None),
        ("¥", None),
        ("$", None),
        ("km", None),
        ("XYZ", None),
    ],
)
def test_currency_symbols(raw, code):
    assert normalize_currency(raw) == code


def test_a_call_to_action_link_in_another_language_is_a_buy_control():
    body = '<h1>Ortopedski ulošci S-plus</h1><span class="price-new">270,00 Kn</span><a class="ek-cta" href="/kupi">Kupi</a>'
    data = extract_product(page(body, url="https://www.eklinika.hr/usluga-380"))
    assert data is not None and data["price"] == 270 and data["currency"] == "HRK"


def test_an_added_to_cart_notice_is_no_buy_control():
    body = '<h1>Concert Almaty</h1><span class="price">5 000 тг.</span><div class="cart-note">Добавлено в корзину</div>'
    assert extract_product(page(body, url="https://tickets.example.kz/event/1")) is None


def test_backface_visibility_hidden_hides_nothing():
    html = (
        '<html><body style="-webkit-backface-visibility: hidden;"><h1>Good Thoughts</h1>'
        '<span class="price">30,000원</span><button>바로구매</button></body></html>'
    )
    data = extract_product(HtmlResponse("http://www.tmon.co.kr/deal/1", body=html.encode(), encoding="utf-8"))
    assert data is not None and data["availability"] == "InStock" and data["currency"] == "KRW"


MICRODATA_OFFER = (
    '<div itemscope itemtype="http://schema.org/Product"><meta itemprop="name" content="Bag Rosso">'
    '<div itemprop="offers" itemscope itemtype="http://schema.org/Offer">'
    '<meta itemprop="price" content="219.99"><meta itemprop="priceCurrency" content="EUR"></div></div>'
)


def test_a_stated_price_the_page_shows_struck_through_gives_way_to_the_sale_price():
    body = (
        MICRODATA_OFFER + '<h1>Bag Rosso</h1><div class="price-block"><span class="original-price">EUR219.99</span>'
        '<span class="discount">-50%</span><span class="product-price">EUR110.00</span></div><button>Add to cart</button>'
    )
    data = extract_product(page(body))
    assert data["price"] == 110.0 and data["currency"] == "EUR"
    assert json.loads(data["field_sources"])["price"] == "dom"


def test_a_stated_price_the_page_also_shows_as_current_stays():
    body = (
        MICRODATA_OFFER + '<h1>Bag Rosso</h1><span class="price">EUR219.99</span><del>EUR219.99</del>'
        '<span class="price">EUR110.00</span><button>Add to cart</button>'
    )
    data = extract_product(page(body))
    assert data["price"] == 219.99 and json.loads(data["field_sources"])["price"] == "microdata"


def test_the_photo_named_by_its_alt_is_the_image_even_before_the_title():
    body = (
        '<div class="gallery"><img src="/img/coat-500.jpg" data-old-hires="/img/coat-1500.jpg" alt="Wool Coat Nord, grey">'
        '</div><h1>Wool Coat Nord</h1><img src="/img/secure-checkout.png" width="300">'
        '<img src="/cards/thumbnail_135x85.png"><span class="price">€ 189,00</span><button>Add to cart</button>'
    )
    data = extract_product(page(body))
    assert data["image_url"] == "https://shop.example/img/coat-1500.jpg"


def test_without_a_named_photo_the_first_photo_after_the_title_not_a_thumbnail():
    body = (
        '<img src="/img/banner.jpg"><h1>Wool Coat Nord</h1><img src="/cards/thumbnail_135x85.png">'
        '<img src="/img/p/1.jpg" height="100"><span class="price">€ 189,00</span><button>Add to cart</button>'
    )
    assert extract_product(page(body))["image_url"] == "https://shop.example/img/p/1.jpg"


def test_an_article_with_a_shop_widget_is_not_a_product():
    head = '<meta property="og:type" content="article"><meta property="og:title" content="Ten coats under €100">'
    body = (
        '<h1>Ten coats under €100</h1><p>Our pick:</p><div class="widget"><span class="price">€ 99,00</span>'
        "<button>Add to cart</button></div>"
    )
    assert extract_product(page(body, head=head)) is None


@pytest.mark.parametrize(
    ("brand_html", "expected"),
    [
        ('<div class="brand-logo">Samsung</div>', "Samsung"),
        ('<span itemprop="brand">Nord</span>', "Nord"),
        ('<div class="top-brands">Popular Brands</div>', None),
        ('<span class="brand-date">12/09(수)</span>', None),
    ],
)
def test_the_brand_is_the_products_not_a_menus(brand_html, expected):
    body = f'{brand_html}<h1>Samsung Galaxy A01 red</h1><span class="price">44 890 тг.</span><button>Купить</button>'
    assert extract_product(page(body, url="https://www.mechta.kz/product/a01/"))["brand"] == expected
