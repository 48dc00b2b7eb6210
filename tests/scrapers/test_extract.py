"""extract_product on JSON-LD, microdata and OpenGraph pages: good, oddly shaped, broken and missing."""

from __future__ import annotations

import json

import pytest
from scrapy.http import HtmlResponse, Response

from scrapers.extract import (
    FIELDS,
    currency_in_text,
    extract_product,
    normalize_availability,
    normalize_currency,
    parse_price,
)

URL = "https://shop.example/p/1"


def page(*blocks: str, url: str = URL, head: str = "", body: str = "x") -> HtmlResponse:
    scripts = "".join(f'<script type="application/ld+json">{b}</script>' for b in blocks)
    return HtmlResponse(
        url, body=f"<html><head>{head}{scripts}</head><body>{body}</body></html>".encode(), encoding="utf-8"
    )


PRODUCT = {
    "@context": "https://schema.org",
    "@type": "Product",
    "name": "Striped Cotton Top",
    "image": "/img/1.jpg",
    "sku": "A-1",
    "description": "A top.",
    "category": "Tops",
    "offers": {
        "@type": "Offer",
        "price": "19.90",
        "priceCurrency": "EUR",
        "availability": "https://schema.org/InStock",
    },
}

MICRODATA = """
<div itemscope itemtype="https://schema.org/Product">
  <h1 itemprop="name">Lace Blouse</h1>
  <img itemprop="image" src="/img/blouse.jpg">
  <meta itemprop="sku" content="MD-7">
  <div itemprop="brand" itemscope itemtype="https://schema.org/Brand"><span itemprop="name">Maison</span></div>
  <span itemprop="color">Ivory</span><span itemprop="material">100% Polyester</span>
  <p itemprop="description">A <b>lace</b> blouse.</p>
  <div itemprop="offers" itemscope itemtype="https://schema.org/Offer">
    <span itemprop="price" content="1.299,00">1.299,00 EUR</span>
    <meta itemprop="priceCurrency" content="EUR">
    <link itemprop="availability" href="https://schema.org/OutOfStock">
  </div>
</div>"""

OPENGRAPH = """
<meta property="og:type" content="product">
<meta property="og:title" content="Wool Scarf">
<meta property="og:image" content="https://cdn.example/scarf.jpg">
<meta property="og:image" content="https://cdn.example/scarf-2.jpg">
<meta property="product:price:amount" content="€ 26">
<meta property="product:price:currency" content="EUR">
<meta property="product:availability" content="in stock">
<meta property="product:brand" content="Knit Co">"""


def test_plain_product():
    data = extract_product(page(json.dumps(PRODUCT)))
    assert set(data) == set(FIELDS)
    assert data == {
        "product_url": URL,
        "sku": "A-1",
        "title": "Striped Cotton Top",
        "description": "A top.",
        "category": "Tops",
        "brand": None,
        "image_url": "https://shop.example/img/1.jpg",
        "image_urls": ["https://shop.example/img/1.jpg"],
        "price": 19.9,
        "currency": "EUR",
        "availability": "InStock",
        "color": None,
        "material": None,
        "field_sources": json.dumps(
            {
                f: "jsonld"
                for f in ("availability", "category", "currency", "description", "image_url", "price", "sku", "title")
            },
            sort_keys=True,
        ),
    }


def test_product_inside_graph_after_other_nodes_lowercase_type():
    doc = {"@context": "https://schema.org", "@graph": [{"@type": "BreadcrumbList"}, {**PRODUCT, "@type": "product"}]}
    assert extract_product(page(json.dumps(doc)))["sku"] == "A-1"


def test_product_as_main_entity_of_a_web_page():
    doc = {"@type": "ItemPage", "mainEntity": PRODUCT}
    assert extract_product(page(json.dumps(doc)))["title"] == "Striped Cotton Top"


def test_list_of_nodes_type_list_image_objects_offer_list_and_brand_object():
    node = {
        **PRODUCT,
        "@type": ["Thing", "Product"],
        "image": [
            {"@type": "ImageObject", "url": "https://cdn.example/a.jpg"},
            "//cdn.example/b.jpg",
            {"contentUrl": "https://cdn.example/a.jpg"},
            None,
        ],
        "offers": [{"@type": "Offer", "price": 12, "priceCurrency": "usd"}],
        "category": {"@type": "Thing", "name": "Shirts"},
        "brand": {"@type": "Brand", "name": "Acme &amp; Sons"},
        "material": ["Cotton", "Elastane"],
    }
    data = extract_product(page(json.dumps([{"@type": "Organization"}, node])))
    assert data["image_urls"] == ["https://cdn.example/a.jpg", "https://cdn.example/b.jpg"]
    assert data["image_url"] == "https://cdn.example/a.jpg"
    assert data["price"] == 12.0 and data["currency"] == "USD" and data["category"] == "Shirts"
    assert data["brand"] == "Acme & Sons" and data["material"] == "Cotton, Elastane"


def test_aggregate_offer_uses_low_price():
    node = {
        **PRODUCT,
        "offers": {"@type": "AggregateOffer", "lowPrice": "9,99", "highPrice": "19,99", "priceCurrency": "EUR"},
    }
    assert extract_product(page(json.dumps(node)))["price"] == 9.99


def test_nested_shop_price_object_and_lowercase_keys():
    offers = {
        "@type": "AggregateOffer",
        "lowprice": {"sales": {"value": 3499, "currency": "ARS"}},
        "availability": "InStock",
    }
    data = extract_product(page(json.dumps({**PRODUCT, "offers": offers})))
    assert (data["price"], data["currency"], data["availability"]) == (3499.0, "ARS", "InStock")


def test_price_specification():
    offers = {
        "@type": "Offer",
        "priceSpecification": {"@type": "UnitPriceSpecification", "price": 45, "priceCurrency": "GBP"},
    }
    data = extract_product(page(json.dumps({**PRODUCT, "offers": offers})))
    assert (data["price"], data["currency"]) == (45.0, "GBP")


def test_the_offer_of_the_product_itself_is_picked():
    offers = [
        {"@type": "Offer", "sku": "OTHER", "price": "5.00", "priceCurrency": "EUR", "url": "https://shop.example/p/2"},
        {"@type": "Offer", "sku": "A-1", "price": "19.90", "priceCurrency": "EUR", "url": URL},
    ]
    assert extract_product(page(json.dumps({**PRODUCT, "offers": offers})))["price"] == 19.9
    no_sku = {k: v for k, v in PRODUCT.items() if k != "sku"}
    by_url = [{**offers[0], "sku": None}, {**offers[1], "sku": None}]
    assert extract_product(page(json.dumps({**no_sku, "offers": by_url})))["price"] == 19.9


def test_product_group_with_variants():
    group = {
        "@context": "https://schema.org",
        "@type": "ProductGroup",
        "name": "Linen Shirt",
        "productGroupID": "G-1",
        "brand": "Linea",
        "hasVariant": [
            {
                "@type": "Product",
                "sku": "G-1-S",
                "image": "/s.jpg",
                "color": "White",
                "offers": {"@type": "Offer", "price": "39.00", "priceCurrency": "EUR", "availability": "OutOfStock"},
            },
            {
                "@type": "Product",
                "sku": "G-1-M",
                "image": "/m.jpg",
                "offers": {"@type": "Offer", "price": "39.00", "priceCurrency": "EUR", "availability": "InStock"},
            },
        ],
    }
    data = extract_product(page(json.dumps(group)))
    assert data["title"] == "Linen Shirt" and data["brand"] == "Linea"
    assert data["price"] == 39.0 and data["currency"] == "EUR"
    assert data["availability"] == "InStock"  # buyable in one size
    assert data["color"] == "White"
    assert data["image_urls"] == ["https://shop.example/s.jpg", "https://shop.example/m.jpg"]


def test_one_product_per_size_siblings_are_variants_and_the_page_product_wins():
    sizes = [
        {**PRODUCT, "sku": f"A-1-{s}", "offers": {**PRODUCT["offers"], "availability": a}}
        for s, a in (("S", "OutOfStock"), ("M", "InStock"))
    ]
    related = {**PRODUCT, "name": "Other", "sku": "B", "url": "https://shop.example/p/9"}
    data = extract_product(page(json.dumps(related), *(json.dumps(s) for s in sizes), url="https://shop.example/p/1"))
    assert data["sku"] == "B"  # no node names the page: the first product
    sizes[1]["url"] = URL
    data = extract_product(page(json.dumps(related), *(json.dumps(s) for s in sizes)))
    assert data["sku"] == "A-1-M" and data["availability"] == "InStock"


def test_broken_block_does_not_hide_a_good_one():
    assert extract_product(page('{"@type": "Product", "name": ', json.dumps(PRODUCT)))["title"] == "Striped Cotton Top"


def test_json_ld_with_comments_and_trailing_commas():
    raw = '// shop template\n{"@type": "Product", "name": "Tee", "offers": {"price": "7", "priceCurrency": "EUR",},}'
    assert extract_product(page(raw))["price"] == 7.0


def test_microdata_only():
    data = extract_product(page(body=MICRODATA))
    assert data["title"] == "Lace Blouse" and data["sku"] == "MD-7" and data["brand"] == "Maison"
    assert data["price"] == 1299.0 and data["currency"] == "EUR" and data["availability"] == "OutOfStock"
    assert data["image_url"] == "https://shop.example/img/blouse.jpg"
    assert data["description"] == "A lace blouse."
    assert (data["color"], data["material"]) == ("Ivory", "100% Polyester")


def test_malformed_json_ld_with_good_microdata():
    data = extract_product(page('{"@type": "Product", "name": "Bro', body=MICRODATA))
    assert data["title"] == "Lace Blouse" and data["price"] == 1299.0


def test_opengraph_only():
    data = extract_product(page(head=OPENGRAPH))
    assert data["title"] == "Wool Scarf" and data["brand"] == "Knit Co"
    assert (data["price"], data["currency"], data["availability"]) == (26.0, "EUR", "InStock")
    assert data["image_urls"] == ["https://cdn.example/scarf.jpg", "https://cdn.example/scarf-2.jpg"]


def test_sources_merge_field_by_field_json_ld_first():
    no_price = {k: v for k, v in PRODUCT.items() if k not in ("offers", "image")}
    data = extract_product(page(json.dumps(no_price), head=OPENGRAPH, body=MICRODATA))
    assert data["title"] == "Striped Cotton Top"  # JSON-LD beats microdata and OpenGraph
    assert data["sku"] == "A-1"
    assert data["price"] == 1299.0  # not in JSON-LD: microdata beats OpenGraph
    assert data["brand"] == "Maison"
    # Images: all sources, JSON-LD's (none here) first, then microdata's, then og:image.
    assert data["image_urls"] == [
        "https://shop.example/img/blouse.jpg",
        "https://cdn.example/scarf.jpg",
        "https://cdn.example/scarf-2.jpg",
    ]


def test_og_image_is_the_fallback_image():
    node = {k: v for k, v in PRODUCT.items() if k != "image"}
    head = '<meta property="og:image" content="/og.jpg">'
    assert extract_product(page(json.dumps(node), head=head))["image_url"] == "https://shop.example/og.jpg"


def test_template_placeholders_and_html_are_cleaned():
    node = {**PRODUCT, "brand": "$metabrand", "description": "<p>Soft &amp; light.</p>\r<p>Cotton.</p>"}
    data = extract_product(page(json.dumps(node)))
    assert data["brand"] is None and data["description"] == "Soft & light. Cotton."


def test_missing_fields_are_none():
    data = extract_product(page(json.dumps({"@type": "Product", "name": "Bare"})))
    assert data["title"] == "Bare" and data["image_urls"] == []
    assert all(data[k] is None for k in FIELDS if k not in ("product_url", "title", "image_urls", "field_sources"))
    assert json.loads(data["field_sources"]) == {"title": "jsonld"}


@pytest.mark.parametrize(
    ("blocks", "head"),
    [
        ((), ""),
        (("not json at all",), ""),
        ((json.dumps({"@type": "Organization", "name": "Shop"}),), ""),
        (("[]",), ""),
        (("null",), ""),
        (('"Product"',), ""),
        ((json.dumps({"@type": "Product"}),), ""),
        ((), '<meta property="og:type" content="website"><meta property="og:image" content="/logo.png">'),
    ],
)
def test_pages_without_a_product_give_none(blocks, head):
    assert extract_product(page(*blocks, head=head)) is None


def test_non_text_response_gives_none():
    assert extract_product(Response(URL, body=b"\xff\xd8binary")) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("19.90", 19.9),
        (5, 5.0),
        ("1.299,00", 1299.0),
        ("1,299.00", 1299.0),
        ("€ 12,50", 12.5),
        ("1,299", 1299.0),
        ("26,00 €", 26.0),
        ("€ 26", 26.0),
        ("1 299,00", 1299.0),
        ("2.449", 2449.0),
        ("0.999", 0.999),
        ("1.299.000", 1299000.0),
        ("10 - 20", 10.0),
        ("EUR110.00", 110.0),
        ("2449.00", 2449.0),
        ("free", None),
        (None, None),
        (True, None),
        ({"x": 1}, None),
    ],
)
def test_parse_price(raw, expected):
    assert parse_price(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("EUR", "EUR"),
        ("eur", "EUR"),
        ("€", "EUR"),
        ("£", "GBP"),
        ("US$", "USD"),
        ("ر.س", "SAR"),
        ("$", None),
        ("¥", None),
        (None, None),
        ("euros", None),
    ],
)
def test_normalize_currency(raw, expected):
    assert normalize_currency(raw) == expected


def test_currency_in_text_only_when_unambiguous():
    assert currency_in_text("26,00 €") == "EUR"
    assert currency_in_text("$ 26") is None
    assert currency_in_text("26") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://schema.org/InStock", "InStock"),
        ("http://schema.org/OutOfStock", "OutOfStock"),
        ("instock", "InStock"),
        ("in stock", "InStock"),
        ("out_of_stock", "OutOfStock"),
        ("PreOrder", "PreOrder"),
        ("schema:SoldOut", "SoldOut"),
        (None, None),
    ],
)
def test_normalize_availability(raw, expected):
    assert normalize_availability(raw) == expected


# -- hostile inputs (issue 11) ---------------------------------------------------------------------
class CountingOffer(dict):
    """An offer that counts how often it is compared for equality."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountingOffer.comparisons += 1
        return dict.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]


def test_variant_offers_are_deduplicated_without_comparing_offers_pairwise():
    # A ProductGroup with 16,000 variants took 36 s: every variant offer was compared with every other.
    from scrapers.extract import _product_fields

    def comparisons(n: int) -> int:
        variants = [
            {
                "@type": "Product",
                "sku": f"V-{i}",
                "offers": CountingOffer({"@type": "Offer", "price": "10", "sku": f"V-{i}"}),
            }
            for i in range(n)
        ]
        CountingOffer.comparisons = 0
        fields = _product_fields({"@type": "ProductGroup", "name": "Group"}, variants, page())
        assert fields["price"] == 10.0
        return CountingOffer.comparisons

    small, large = comparisons(200), comparisons(400)
    assert large <= 2 * small + 10  # linear: twice the variants, twice the comparisons (pairwise: 4x)
    assert large <= 10 * 400  # a few per offer (pairwise: ~80,000)


def test_a_deeply_nested_block_is_skipped_alone():
    deep = "[" * 100_000 + "]" * 100_000
    data = extract_product(page(deep, json.dumps(PRODUCT)))
    assert data is not None and data["sku"] == "A-1" and data["price"] == 19.9


def test_a_400_digit_number_is_refused_and_the_other_fields_stay():
    huge = "9" * 400
    block = (
        json.dumps({**PRODUCT, "offers": {"@type": "Offer", "priceCurrency": "EUR"}})[:-2] + f', "price": {huge}}}}}'
    )
    data = extract_product(page(block))
    assert data is not None and data["sku"] == "A-1" and data["title"] == "Striped Cotton Top"
    assert data["price"] is None
    assert json.loads(data["field_sources"])["price"] == "jsonld: refused (not finite)"


@pytest.mark.parametrize(
    ("price", "reason"),
    [
        ('"-49.99"', "negative"),
        ("-49.99", "negative"),
        ('"1e309"', "exponent notation"),
        ("1e309", "not finite"),
        ('"NaN"', "not a number"),
        ("NaN", None),
        ('"− 12,00 €"', "negative"),
    ],
)
def test_a_price_keeps_its_sign_or_is_refused_with_the_reason(price, reason):
    block = json.dumps({**PRODUCT, "offers": {"@type": "Offer", "priceCurrency": "EUR", "price": "P"}}).replace(
        '"P"', price
    )
    data = extract_product(page(block))
    assert data["price"] is None  # never 49.99, 1.0, inf or nan
    sources = json.loads(data["field_sources"])
    assert sources.get("price") == (f"jsonld: refused ({reason})" if reason else None)


def test_a_refused_og_price_is_recorded():
    head = (
        '<meta property="og:type" content="product"><meta property="og:title" content="Hat">'
        '<meta property="product:price:amount" content="-5.00">'
    )
    data = extract_product(page(head=head))
    assert data["price"] is None and json.loads(data["field_sources"])["price"] == "og: refused (negative)"


@pytest.mark.parametrize(
    "name",
    [
        "&lt;img src=x onerror=alert(1)&gt;Shirt",
        "&amp;lt;img src=x onerror=alert(1)&amp;gt;Shirt",
        "<b>&lt;script&gt;alert(1)&lt;/script&gt;</b>Shirt",
        "Shirt &lt;img src=x onerror=alert(1)",
    ],
)
def test_text_fields_are_stored_as_plain_text_never_markup(name):
    data = extract_product(page(json.dumps({**PRODUCT, "name": name, "description": name})))
    for field in ("title", "description"):
        assert "<" not in data[field] and "&lt;" not in data[field]
        assert "Shirt" in data[field] and "<img" not in data[field] and "<script" not in data[field]


def test_plain_text_keeps_a_lone_less_than_sign():
    data = extract_product(page(json.dumps({**PRODUCT, "name": "Sizes 1 &lt; 2"})))
    assert data["title"] == "Sizes 1 < 2"
