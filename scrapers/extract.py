"""A page's product from its structured data: schema.org JSON-LD, microdata, and OpenGraph.

Parsing is done by extruct (microdata, OpenGraph) on one lxml tree; JSON-LD blocks are decoded one by
one (extruct's JSON-LD extractor drops every block when one is broken), leniently (comments, trailing
commas). Each syntax gives at most one product, normalised to the same flat fields; the three are then
merged **field by field** with the precedence JSON-LD > microdata > OpenGraph: a field comes from the
first syntax that has it, so a page whose JSON-LD lacks a price still gets the microdata price.
``image_urls`` is the exception: the union of all syntaxes in that order (absolute, deduplicated).

Real shops wrap JSON-LD in many ways: one object, a list, an ``@graph``, a ``WebPage`` whose
``mainEntity`` is the product, ``@type`` as a string or a list and in any case (``"product"``),
``ProductGroup`` with ``hasVariant``, one ``Product`` per size or colour (Zara lists eight), ``image``
as a string, list or ``ImageObject``, ``offers`` as one ``Offer``, a list, an ``AggregateOffer``
(``lowPrice``), a ``priceSpecification``, or a shop's own nested price object. A page without a
product gives None, never an exception.
"""
from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import jstyleson
from extruct.opengraph import OpenGraphExtractor
from extruct.utils import parse_html
from extruct.w3cmicrodata import MicrodataExtractor
from lxml.html import HtmlElement
from scrapy.http import TextResponse
from w3lib.html import remove_tags

logger = logging.getLogger(__name__)

FIELDS = (
    "product_url", "sku", "title", "description", "category", "brand", "image_url", "image_urls",
    "price", "currency", "availability", "color", "material",
)
#: Merge order, first wins per field.
SOURCES = ("json-ld", "microdata", "opengraph")

PRODUCT_TYPES = frozenset({"product", "productgroup", "productmodel", "individualproduct", "someproducts"})
# Containers a page's own product hides in. Not isRelatedTo/isSimilarTo: those are other products.
CONTAINER_KEYS = ("@graph", "mainEntity", "mainentity")
VARIANT_KEYS = ("hasVariant", "hasvariant")

AVAILABILITY = {
    "instock": "InStock", "available": "InStock", "in stock": "InStock", "instoreonly": "InStoreOnly",
    "onlineonly": "OnlineOnly", "limitedavailability": "LimitedAvailability", "outofstock": "OutOfStock",
    "out of stock": "OutOfStock", "soldout": "SoldOut", "sold out": "SoldOut", "preorder": "PreOrder",
    "presale": "PreSale", "backorder": "BackOrder", "availablefororder": "BackOrder",
    "discontinued": "Discontinued", "unavailable": "OutOfStock",
}
IN_STOCK = frozenset({"InStock", "LimitedAvailability", "OnlineOnly", "InStoreOnly"})

# Only symbols that name one currency. A bare "$" (USD, ARS, CAD, NZD, MXN...) or "¥" (JPY, CNY) does not.
CURRENCY_SYMBOLS = {
    "€": "EUR", "eur": "EUR", "£": "GBP", "us$": "USD", "u$s": "USD", "a$": "AUD", "au$": "AUD", "c$": "CAD",
    "ca$": "CAD", "nz$": "NZD", "r$": "BRL", "mx$": "MXN", "hk$": "HKD", "s$": "SGD", "₹": "INR",
    "₽": "RUB", "₺": "TRY", "₩": "KRW", "₪": "ILS", "₴": "UAH", "zł": "PLN", "kč": "CZK", "ft": "HUF",
    "lei": "RON", "лв": "BGN", "лв.": "BGN", "ر.س": "SAR", "د.إ": "AED", "chf": "CHF", "fr.": "CHF",
}
_ISO_CODE = re.compile(r"^[A-Za-z]{3}$")
_NUMBER = re.compile(r"\d(?:[\d.,'\u00a0\u202f]| (?=\d{3}(?!\d)))*")
# Unrendered shop templates ("$metabrand", "{{ product.brand }}") are not values.
_PLACEHOLDER = re.compile(r"^\$[A-Za-z_]\w*$|\{\{|\}\}|^\[%|^<%")


# -- values -----------------------------------------------------------------------------------------
def _get(node: dict[str, Any], *keys: str) -> Any:
    """The first present, non-empty value of ``keys``, matched case-insensitively."""
    lowered = {str(k).lower(): v for k, v in node.items()}
    for key in keys:
        value = lowered.get(key.lower())
        if value not in (None, "", [], {}):
            return value
    return None


def _clean(value: str) -> str | None:
    text = " ".join(html.unescape(remove_tags(value)).split())
    return text if text and not _PLACEHOLDER.search(text) else None


def _text(value: Any, join: bool = False) -> str | None:
    """A plain string from a structured value: a string, number, an object with a name, or a list.

    A list gives its first usable entry, or all of them joined with ", " when ``join`` (materials).
    """
    if isinstance(value, list):
        texts = [t for t in (_text(v) for v in value) if t]
        if not texts:
            return None
        return ", ".join(dict.fromkeys(texts)) if join else texts[0]
    if isinstance(value, dict):
        value = _get(value, "name", "value", "@value", "@id")
        return _text(value) if not isinstance(value, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(int(value)) if float(value).is_integer() else str(value)
    return _clean(value) if isinstance(value, str) else None


def _types(node: dict[str, Any]) -> set[str]:
    types = node.get("@type", node.get("type"))
    types = types if isinstance(types, list) else [types]
    return {t.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1].lower() for t in types if isinstance(t, str)}


def _is_product(node: Any) -> bool:
    return isinstance(node, dict) and bool(_types(node) & PRODUCT_TYPES)


def parse_price(value: Any) -> float | None:
    """A price as float from a number or a shop's text; None when there is no number.

    '12.99', '1.299,00', '1,299.00', '€ 12,50', '26,00 €', '1 299,00', '2.449' (a single separator
    followed by exactly three digits after a 1-3 digit head is a thousands separator, as in
    '1,299'; '0.999' stays a decimal). The first number of a range ('10 - 20') is taken.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    match = _NUMBER.search(value)
    if not match:
        return None
    digits = re.sub(r"[\s'\u00a0\u202f]", "", match.group()).rstrip(".,")
    if "," in digits and "." in digits:
        # The later separator is the decimal one.
        thousands = "," if digits.rfind(",") < digits.rfind(".") else "."
        digits = digits.replace(thousands, "").replace(",", ".")
    else:
        for sep in (",", "."):
            if sep not in digits:
                continue
            head, _, tail = digits.rpartition(sep)
            grouped = digits.count(sep) > 1 or (len(tail) == 3 and head.isdigit() and 1 <= len(head) <= 3 and head != "0")
            digits = digits.replace(sep, "") if grouped else f"{head.replace(sep, '')}.{tail}"
    try:
        return float(digits)
    except ValueError:
        return None


def normalize_currency(value: Any) -> str | None:
    """An ISO 4217 code from a code ('eur') or an unambiguous symbol ('€', '£', 'US$'); else None."""
    text = _text(value)
    if not text:
        return None
    text = text.strip()
    if _ISO_CODE.match(text):
        return text.upper()
    return CURRENCY_SYMBOLS.get(text.lower())


def currency_in_text(text: Any) -> str | None:
    """The currency a price text shows ('26,00 €' -> EUR); None when absent or ambiguous ('$ 10')."""
    if not isinstance(text, str):
        return None
    rest = _NUMBER.sub(" ", text).replace("-", " ").split()
    codes = {normalize_currency(token) for token in rest}
    codes.discard(None)
    return codes.pop() if len(codes) == 1 else None


def normalize_availability(value: Any) -> str | None:
    """schema.org short name ('http://schema.org/InStock', 'in_stock', 'instock' -> 'InStock')."""
    text = _text(value)
    if not text:
        return None
    short = text.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    key = re.sub(r"[_\-]+", " ", short).strip().lower()
    return AVAILABILITY.get(key) or AVAILABILITY.get(key.replace(" ", "")) or short


def _price_value(value: Any, depth: int = 0) -> tuple[float | None, str | None]:
    """(price, currency) from a price value, including a shop's nested object such as
    ``{"sales": {"value": 3499, "currency": "ARS"}}``."""
    if isinstance(value, dict) and depth < 3:
        currency = normalize_currency(_get(value, "priceCurrency", "currency"))
        direct = _get(value, "price", "value", "amount", "decimalPrice")
        if direct is not None and not isinstance(direct, dict):
            return parse_price(direct), currency
        for nested in value.values():
            price, nested_currency = _price_value(nested, depth + 1)
            if price is not None:
                return price, nested_currency or currency
        return None, currency
    if isinstance(value, list):
        value = value[0] if value else None
    price = parse_price(value) if not isinstance(value, dict) else None
    return price, currency_in_text(value)


# -- offers -----------------------------------------------------------------------------------------
def _offers(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The node's offers, flattened (an AggregateOffer's own ``offers`` come after it)."""
    raw = _get(node, "offers")
    raw = raw if isinstance(raw, list) else [raw]
    out: list[dict[str, Any]] = []
    for offer in raw:
        if isinstance(offer, dict):
            out.append(offer)
            nested = _get(offer, "offers")
            if nested is not None:
                out.extend(o for o in (nested if isinstance(nested, list) else [nested]) if isinstance(o, dict))
    return out


def _offer_price(offer: dict[str, Any]) -> tuple[float | None, str | None]:
    currency = normalize_currency(_get(offer, "priceCurrency"))
    for key in ("price", "lowPrice", "highPrice"):
        value = _get(offer, key)
        if value is not None:
            price, found_currency = _price_value(value)
            if price is not None and price > 0:
                return price, currency or found_currency
    spec = _get(offer, "priceSpecification")
    for entry in spec if isinstance(spec, list) else [spec]:
        if isinstance(entry, dict):
            price, found_currency = _price_value(entry)
            if price is not None and price > 0:
                return price, currency or found_currency
    return None, currency


def _pick_offer(offers: list[dict[str, Any]], page_url: str, sku: str | None) -> dict[str, Any] | None:
    """The product's own offer: the one naming the page (url) or the product's sku, else the first
    offer with a price, else the first offer."""
    priced = [o for o in offers if _offer_price(o)[0] is not None]
    for offer in priced:
        if sku and _text(_get(offer, "sku")) == sku:
            return offer
    for offer in priced:
        url = _text(_get(offer, "url"))
        if url and _same_page(url, page_url):
            return offer
    return (priced or offers or [None])[0]


def _same_page(a: str, b: str) -> bool:
    def key(url: str) -> str:
        return unquote(urlsplit(url).path).rstrip("/").lower()

    return bool(key(a)) and key(a) == key(b)


# -- images -----------------------------------------------------------------------------------------
def _image_candidates(value: Any) -> Iterator[str]:
    """Image URLs from every shape: string, list, ImageObject (url/contentUrl/@id), nested lists."""
    if isinstance(value, list):
        for entry in value:
            yield from _image_candidates(entry)
    elif isinstance(value, dict):
        yield from _image_candidates(_get(value, "url", "contentUrl", "@id", "value"))
    elif isinstance(value, str) and value.strip():
        yield value.strip()


def absolute_images(values: Iterable[str], response: TextResponse) -> list[str]:
    """Absolute http(s) URLs, deduplicated in order (no data: URIs, no placeholders)."""
    out: dict[str, None] = {}
    for value in values:
        if _PLACEHOLDER.search(value) or value.startswith("data:"):
            continue
        url = response.urljoin(html.unescape(value))
        if urlsplit(url).scheme in ("http", "https"):
            out[url] = None
    return list(out)


# -- one syntax -> normalised fields ------------------------------------------------------------------
def _walk(value: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    """Every object of a JSON-LD document through lists, @graph and mainEntity."""
    if depth > 6:
        return
    if isinstance(value, list):
        for entry in value:
            yield from _walk(entry, depth + 1)
    elif isinstance(value, dict):
        yield value
        for key in CONTAINER_KEYS:
            if key in value:
                yield from _walk(value[key], depth + 1)


def _main_product(candidates: list[dict[str, Any]], page_url: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The page's product and its variants.

    The product whose url/@id is the page wins, else the first ProductGroup, else the first Product.
    Variants: a group's ``hasVariant`` plus sibling products of the same name (one Product per size).
    """
    if not candidates:
        return None
    main = next((c for c in candidates if any(_same_page(u, page_url) for u in _urls_of(c))), None)
    main = main or next((c for c in candidates if "productgroup" in _types(c)), None) or candidates[0]
    variants = [v for v in _as_list(_get(main, *VARIANT_KEYS)) if isinstance(v, dict)]
    name = (_text(_get(main, "name")) or "").lower()
    variants += [c for c in candidates if c is not main and name and (_text(_get(c, "name")) or "").lower() == name]
    return main, variants


def _urls_of(node: dict[str, Any]) -> list[str]:
    return [u for u in (_text(_get(node, "url")), node.get("@id")) if isinstance(u, str)]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _product_fields(main: dict[str, Any], variants: list[dict[str, Any]], response: TextResponse) -> dict[str, Any]:
    """Normalised fields of a schema.org product (JSON-LD, or microdata converted to the same shape)."""
    def first(*keys: str, join: bool = False) -> str | None:
        for node in [main, *variants]:
            text = _text(_get(node, *keys), join=join)
            if text:
                return text
        return None

    sku = _text(_get(main, "sku", "productID", "mpn"))
    offers = _offers(main) or [o for v in variants for o in _offers(v)]
    offer = _pick_offer(offers, response.url, sku)
    price, currency = _offer_price(offer) if offer else (None, None)
    if offer and sku is None:
        sku = _text(_get(offer, "sku"))
    every_offer = offers + [o for v in variants for o in _offers(v) if o not in offers]
    availabilities = [normalize_availability(_get(o, "availability")) for o in every_offer]
    availability = normalize_availability(_get(offer, "availability")) if offer else None
    if len(every_offer) > 1 and any(a in IN_STOCK for a in availabilities):
        # One offer per size or colour: the product is buyable when any of them is.
        availability = next(a for a in availabilities if a in IN_STOCK)
    images = [u for node in [main, *variants] for u in _image_candidates(_get(node, "image"))]
    return {
        "sku": sku or first("sku", "productID", "mpn"),
        "title": first("name"),
        "description": first("description"),
        "category": first("category") or (_text(_get(offer, "category")) if offer else None),
        "brand": first("brand", "manufacturer"),
        "image_urls": absolute_images(images, response),
        "price": price,
        "currency": currency,
        "availability": availability or next((a for a in availabilities if a), None),
        "color": first("color"),
        "material": first("material", join=True),
    }


def _json_ld_documents(tree: HtmlElement, url: str) -> Iterator[Any]:
    for script in tree.xpath('//script[@type="application/ld+json"]'):
        raw = script.text_content() or ""
        try:
            yield json.loads(raw, strict=False)
        except ValueError:
            try:  # comments and trailing commas, as some shops write them
                yield jstyleson.loads(re.sub(r"^\s*<!--|-->\s*$", "", raw.strip()), strict=False)
            except Exception:  # noqa: BLE001 - any unreadable block is skipped
                logger.debug("unparsable JSON-LD block on %s", url)


def from_json_ld(tree: HtmlElement, response: TextResponse) -> dict[str, Any] | None:
    candidates = [n for doc in _json_ld_documents(tree, response.url) for n in _walk(doc) if _is_product(n)]
    found = _main_product(candidates, response.url)
    return _product_fields(*found, response) if found else None


def _microdata_to_node(item: Any) -> Any:
    """extruct's microdata item ({type, properties}) as a JSON-LD-shaped dict."""
    if isinstance(item, list):
        return [_microdata_to_node(i) for i in item]
    if not isinstance(item, dict) or "properties" not in item and "type" not in item:
        return item
    node: dict[str, Any] = {"@type": item.get("type")}
    for key, value in (item.get("properties") or {}).items():
        node[key] = _microdata_to_node(value)
    if "value" in item and "name" not in node:
        node["name"] = item["value"]
    return node


def from_microdata(tree: HtmlElement, response: TextResponse) -> dict[str, Any] | None:
    items = [_microdata_to_node(i) for i in MicrodataExtractor().extract_items(tree, base_url=response.url)]
    candidates = [n for item in items for n in _walk(item) if _is_product(n)]
    found = _main_product(candidates, response.url)
    return _product_fields(*found, response) if found else None


def from_opengraph(tree: HtmlElement, response: TextResponse) -> dict[str, Any] | None:
    """OpenGraph (``og:*``, ``product:*``) fields, with ``is_product``: by itself a page's OpenGraph
    is a product only when og:type says so or it gives a price, else every article page would be one."""
    props: dict[str, list[str]] = {}
    for entry in OpenGraphExtractor().extract_items(tree, base_url=response.url):
        for key, value in entry.get("properties", []):
            if isinstance(value, str) and value.strip():
                props.setdefault(key.lower(), []).append(value.strip())

    def one(*keys: str) -> str | None:
        return next((_clean(props[k][0]) for k in keys if k in props and _clean(props[k][0])), None)

    if not props:
        return None
    price_text = one("product:price:amount", "og:price:amount", "product:sale_price:amount")
    og_type = (one("og:type") or "").lower()
    images = [u for k in ("og:image", "og:image:secure_url", "og:image:url") for u in props.get(k, [])]
    return {
        "sku": one("product:retailer_item_id", "product:sku", "og:sku"),
        "title": one("og:title"),
        "description": one("og:description"),
        "category": one("product:category"),
        "brand": one("product:brand", "og:brand"),
        "image_urls": absolute_images(images, response),
        "price": parse_price(price_text),
        "currency": normalize_currency(one("product:price:currency", "og:price:currency", "product:sale_price:currency")),
        "availability": normalize_availability(one("product:availability", "og:availability")),
        "color": one("product:color"),
        "material": one("product:material"),
        # By itself OpenGraph names a product only when og:type says so or it gives a price; else it
        # only fills gaps (og:image) of a product another syntax found.
        "is_product": "product" in og_type or price_text is not None,
    }


# -- the page ---------------------------------------------------------------------------------------
def extract_sources(response: TextResponse) -> dict[str, dict[str, Any]]:
    """The product as each syntax states it (syntaxes without a product left out)."""
    try:
        tree = parse_html(response.body, encoding=response.encoding)
    except Exception:  # noqa: BLE001 - an unparsable page has no product
        logger.debug("unparsable HTML on %s", response.url)
        return {}
    extractors = {"json-ld": from_json_ld, "microdata": from_microdata, "opengraph": from_opengraph}
    found: dict[str, dict[str, Any]] = {}
    for name in SOURCES:
        try:
            fields = extractors[name](tree, response)
        except Exception:  # noqa: BLE001 - one broken syntax must not hide the others
            logger.warning("%s extraction failed on %s", name, response.url, exc_info=True)
            continue
        if fields is not None:
            found[name] = fields
    og = found.get("opengraph")
    if og is not None and not og.pop("is_product") and len(found) == 1:
        del found["opengraph"]
    return found


def merge_sources(found: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Field by field, the first source in :data:`SOURCES` order that has a value; images united."""
    ordered = [found[name] for name in SOURCES if name in found]
    merged: dict[str, Any] = {}
    for field in FIELDS:
        if field in ("product_url", "image_url", "image_urls"):
            continue
        merged[field] = next((src[field] for src in ordered if src.get(field) is not None), None)
    merged["image_urls"] = list(dict.fromkeys(u for src in ordered for u in src.get("image_urls", [])))
    merged["image_url"] = merged["image_urls"][0] if merged["image_urls"] else None
    return merged


def extract_product(response: TextResponse) -> dict[str, Any] | None:
    """The page's product as a flat dict of :data:`FIELDS` (missing fields None), or None."""
    if not isinstance(response, TextResponse):
        return None
    found = extract_sources(response)
    if not found:
        return None
    merged = merge_sources(found)
    if not (merged["title"] or merged["sku"] or merged["price"] is not None):
        return None  # a bare Product node with nothing in it is not a product page
    return {"product_url": response.url, **{f: merged[f] for f in FIELDS if f != "product_url"}}
