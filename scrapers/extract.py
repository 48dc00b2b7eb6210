"""A page's product from its structured data: schema.org JSON-LD, microdata, RDFa and OpenGraph.

Parsing is done by extruct (microdata, OpenGraph) on one lxml tree, RDFa (extruct/pyRdfa) only on pages
whose markup names a product in a ``typeof``; JSON-LD blocks are decoded one by one (extruct's JSON-LD
extractor drops every block when one is broken), leniently (comments, trailing commas). Each syntax gives
at most one product, normalised to the same flat fields; they are then merged **field by field** with the precedence JSON-LD > microdata > RDFa > OpenGraph: a field comes from the
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
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import jstyleson
from extruct.opengraph import OpenGraphExtractor
from extruct.utils import parse_html
from extruct.w3cmicrodata import MicrodataExtractor
from lxml.html import HtmlElement
from price_parser import Price
from price_parser import _currencies as _price_currencies
from scrapy.http import Response, TextResponse
from w3lib.html import remove_tags

logger = logging.getLogger(__name__)

FIELDS = (
    "product_url",
    "sku",
    "title",
    "description",
    "category",
    "brand",
    "image_url",
    "image_urls",
    "price",
    "currency",
    "availability",
    "color",
    "material",
    "field_sources",
)
#: Merge order, first wins per field; ``dom`` (the visible page, scrapers/visible.py) fills what is left.
SOURCES = ("jsonld", "microdata", "rdfa", "og", "dom")

#: og:type values (before any ".") of pages that are not a product page whatever their buttons say.
NOT_PRODUCT_OG_TYPES = frozenset({"article", "blog", "video", "music", "book", "profile", "event"})
PRODUCT_TYPES = frozenset({"product", "productgroup", "productmodel", "individualproduct", "someproducts"})
# Containers a page's own product hides in. Not isRelatedTo/isSimilarTo: those are other products.
CONTAINER_KEYS = ("@graph", "mainEntity", "mainentity")
VARIANT_KEYS = ("hasVariant", "hasvariant")

AVAILABILITY = {
    "instock": "InStock",
    "available": "InStock",
    "in stock": "InStock",
    "instoreonly": "InStoreOnly",
    "onlineonly": "OnlineOnly",
    "limitedavailability": "LimitedAvailability",
    "outofstock": "OutOfStock",
    "out of stock": "OutOfStock",
    "soldout": "SoldOut",
    "sold out": "SoldOut",
    "preorder": "PreOrder",
    "presale": "PreSale",
    "backorder": "BackOrder",
    "availablefororder": "BackOrder",
    "discontinued": "Discontinued",
    "unavailable": "OutOfStock",
}
IN_STOCK = frozenset({"InStock", "LimitedAvailability", "OnlineOnly", "InStoreOnly"})
#: Not buyable now (a pre-order or back-order is: its buy control says nothing against the markup).
SOLD_OUT = frozenset({"OutOfStock", "SoldOut", "Discontinued"})

# Only symbols that name one currency. A bare "$" (USD, ARS, CAD, NZD, MXN...) or "¥" (JPY, CNY) does not.
CURRENCY_SYMBOLS = {
    "€": "EUR",
    "eur": "EUR",
    "£": "GBP",
    "us$": "USD",
    "u$s": "USD",
    "a$": "AUD",
    "au$": "AUD",
    "c$": "CAD",
    "ca$": "CAD",
    "nz$": "NZD",
    "r$": "BRL",
    "mx$": "MXN",
    "hk$": "HKD",
    "s$": "SGD",
    "₹": "INR",
    "₽": "RUB",
    "₺": "TRY",
    "₩": "KRW",
    "₪": "ILS",
    "₴": "UAH",
    "zł": "PLN",
    "kč": "CZK",
    "ft": "HUF",
    "lei": "RON",
    "лв": "BGN",
    "лв.": "BGN",
    "ر.س": "SAR",
    "د.إ": "AED",
    "chf": "CHF",
    "fr.": "CHF",
}
# Symbols beyond the table above, from price-parser's currency list: those naming one current currency
# (ASCII ones of two letters or more: a lone "R" or "L" in a text is no currency).
_REPLACED_BY_EURO = frozenset(getattr(_price_currencies, "REPLACED_BY_EURO", ()) or ())


# Two-letter symbols that are no common word or unit ("km", "le", "da" are): Kuna, Forint, Rupiah, ...
_TWO_LETTER_SYMBOLS = frozenset({"kn", "ft", "rp", "rm", "tl", "kd", "qr", "bd", "jd"})


def _symbol_table() -> tuple[dict[str, str], dict[str, frozenset[str]]]:
    codes: dict[str, set[str]] = {}
    for code, info in _price_currencies.CURRENCIES.items():
        if code in _REPLACED_BY_EURO:
            continue
        for symbol in (info.get("s"), info.get("sn"), *(info.get("sn2") or ())):
            symbol = symbol.strip().lower().rstrip("\u200f") if isinstance(symbol, str) else ""
            if symbol and (
                not symbol.isascii()
                or len(symbol) >= 3
                or symbol in _TWO_LETTER_SYMBOLS
                or (len(symbol) == 2 and not symbol.isalpha())
            ):
                codes.setdefault(symbol, set()).add(code)
    unique = {s: next(iter(c)) for s, c in codes.items() if len(c) == 1 and not _ISO_LIKE.match(s)}
    return unique, {s: frozenset(c) for s, c in codes.items() if len(c) > 1}


_ISO_LIKE = re.compile(r"^[a-z]{3}$")


def _dollar_codes() -> frozenset[str]:
    return frozenset(
        c for c, info in _price_currencies.CURRENCIES.items() if info.get("s") == "$" or info.get("sn") == "$"
    )


_EXTRA_SYMBOLS, _SHARED_SYMBOLS = _symbol_table()
CURRENCY_SYMBOLS = {
    **_EXTRA_SYMBOLS,
    "тг": "KZT",
    "тг.": "KZT",
    "₸": "KZT",
    "kn": "HRK",
    "грн": "UAH",
    "грн.": "UAH",
    "руб": "RUB",
    "руб.": "RUB",
    "р.": "RUB",
    "원": "KRW",
    "₩": "KRW",
    "₫": "VND",
    "đ": "VND",
    "元": "CNY",
    "円": "JPY",
    "din": "RSD",
    "дин.": "RSD",
    "ден": "MKD",
    "₾": "GEL",
    "₼": "AZN",
    "֏": "AMD",
    **CURRENCY_SYMBOLS,
}
#: Symbols several currencies use ("$", "kr", "¥"): the page's country decides (scrapers/visible.py).
AMBIGUOUS_SYMBOLS = {s: c for s, c in _SHARED_SYMBOLS.items() if s not in CURRENCY_SYMBOLS}
AMBIGUOUS_SYMBOLS.update(
    {
        "$": _dollar_codes(),
        "¥": frozenset({"JPY", "CNY"}),
        "kr": frozenset({"SEK", "NOK", "DKK", "ISK"}),
        "kr.": frozenset({"DKK", "ISK"}),
    }
)
CURRENCY_SYMBOLS.pop("¥", None)
_KNOWN_CODES = frozenset(_price_currencies.CURRENCIES) - _REPLACED_BY_EURO
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


_DANGLING_TAG = re.compile(r"<[A-Za-z!/?][^<>]*$")


def plain_text(value: str) -> str:
    """``value`` as plain text: entities decoded, then tags removed, until neither changes anything.

    Decoding after stripping (the old order) turned ``&lt;img onerror=...&gt;`` into live markup; a
    double-encoded ``&amp;lt;img&amp;gt;`` needs a second round. A tag left open at the end is dropped.
    """
    for _ in range(4):
        stripped = remove_tags(html.unescape(value))
        if stripped == value:
            break
        value = stripped
    return _DANGLING_TAG.sub("", value)


def _clean(value: str) -> str | None:
    text = " ".join(plain_text(value).split())
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
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif isinstance(value, float):
        value = str(int(value)) if math.isfinite(value) and value.is_integer() else str(value)
    return _clean(value) if isinstance(value, str) else None


def _types(node: dict[str, Any]) -> set[str]:
    types = node.get("@type", node.get("type"))
    types = types if isinstance(types, list) else [types]
    return {t.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1].lower() for t in types if isinstance(t, str)}


def _is_product(node: Any) -> bool:
    return isinstance(node, dict) and bool(_types(node) & PRODUCT_TYPES)


# A minus before the first digit, perhaps with a currency sign between ('-49.99', '- € 5', '€ -5').
_SIGN_BEFORE = re.compile(r"(?<!\w)[-\u2212]\s*(?:[^\d\s]{1,3}\s*)?[.,]?$")
_EXPONENT = re.compile(r"\d[eE][-+]?\d")
_NOT_A_NUMBER = re.compile(r"\b(?:nan|inf|infinity)\b", re.IGNORECASE)


def check_price(value: Any, decimal_separator: str | None = None) -> tuple[float | None, str | None]:
    """(price, None) for a usable price, (None, reason) for a refused one, (None, None) for no number.

    Numbers and shop texts ('12.99', '1.299,00', '€ 12,50', '26,00 €', '10 - 20' gives 10) are read
    by price-parser. A price keeps its sign or is refused: negative ('-49.99'), not finite ('1e309',
    'NaN', a 400-digit number) and exponent notation are refused with the reason, never turned into
    49.99, 1.0 or inf. ``decimal_separator`` settles a text the page's currency makes unambiguous
    (scrapers/visible.py: "3.499" in dinars).
    """
    if isinstance(value, bool) or value is None:
        return None, None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            return None, "not finite"
        if not math.isfinite(number):
            return None, "not finite"
        return (number, None) if number >= 0 else (None, "negative")
    if not isinstance(value, str):
        return None, None
    text = value.strip()
    if _NOT_A_NUMBER.search(text):
        return None, "not a number"
    if _EXPONENT.search(text):
        return None, "exponent notation"
    # A leading "0." or "0," is a decimal separator ('0.999'); price-parser would read it as thousands.
    leading_zero = re.search(r"(?<![\d.,])0([.,])\d", text)
    separator = decimal_separator or (leading_zero.group(1) if leading_zero else None)
    amount = Price.fromstring(text, decimal_separator=separator).amount
    if amount is None:
        return None, None
    first_digit = re.search(r"\d", text)
    if first_digit is None:  # price-parser reads 'free' as 0; a price needs a number
        return None, None
    if _SIGN_BEFORE.search(text[: first_digit.start()]):
        return None, "negative"
    number = float(amount)
    if not math.isfinite(number):
        return None, "not finite"
    return number, None


def parse_price(value: Any) -> float | None:
    """A price as float from a number or a shop's text; None when there is none or it is refused
    (see :func:`check_price`)."""
    return check_price(value)[0]


def normalize_currency(value: Any) -> str | None:
    """An ISO 4217 code from a code ('eur') or an unambiguous symbol ('€', '£', 'US$'); else None."""
    text = _text(value)
    if not text:
        return None
    text = text.strip()
    if text.lower() in CURRENCY_SYMBOLS:
        return CURRENCY_SYMBOLS[text.lower()]
    return text.upper() if _ISO_CODE.match(text) and text.upper() in _KNOWN_CODES else None


def currency_in_text(text: Any) -> str | None:
    """The currency a price text shows ('26,00 €' -> EUR); None when absent or ambiguous ('$ 10')."""
    if not isinstance(text, str):
        return None
    rest = [t.strip("~*()[]") for t in _NUMBER.sub(" ", text).replace("-", " ").split()]
    codes = {normalize_currency(token) for token in rest}
    codes.discard(None)
    return codes.pop() if len(codes) == 1 else None


# A shop's own stock words, in many languages (out-of-stock ones are checked first: "нет в наличии"
# holds "в наличии", "not available" holds "available").
OUT_OF_STOCK_PHRASES = re.compile(
    r"out of stock|indisponible|sold out|currently unavailable|no longer available|ausverkauft|nicht (?:auf lager|verfügbar|lieferbar)|"
    r"agotado|sin stock|épuisé|rupture de stock|esaurito|non disponibile|uitverkocht|niet (?:op voorraad|leverbaar)|"
    r"brak w magazynie|niedostępny|esgotado|indisponível|нет в наличии|немає в наявності|vyprodáno|není skladem|"
    r"nincs raktáron|slutsåld|udsolgt|utsolgt|tükendi|stokta yok|hết hàng|在庫切れ|売り切れ|缺货|품절",
    re.I,
)
IN_STOCK_PHRASES = re.compile(
    r"\bin stock\b|auf lager|sofort lieferbar|en stock|disponible|in magazzino|disponibile|op voorraad|na stanie|"
    r"dostępny|em estoque|em stock|в наличии|в наявності|skladem|raktáron|på lager|i lager|i butik|stokta|còn hàng|"
    r"在庫あり|有货|재고 있음",
    re.I,
)


# Words that say it in a stock field, too short or too common to look for in a whole page's text.
_VALUE_IN_STOCK = re.compile(r"\bnot sold\b|\bunsold\b", re.IGNORECASE)
_VALUE_OUT_OF_STOCK = re.compile(r"\bnot available\b|\bunavailable\b|\bsold\b(?! by)", re.IGNORECASE)


def normalize_availability(value: Any) -> str | None:
    """schema.org short name ('http://schema.org/InStock', 'in_stock', 'instock' -> 'InStock').

    A shop's free text ('NOT SOLD' on a classified ad, 'Auf Lager', 'épuisé') is read by its stock
    words; a one-word name schema.org may add later ('MadeToOrder') is kept; other text gives None
    (it used to be stored as it was, and read as not buyable).
    """
    text = _text(value)
    if not text:
        return None
    short = text.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    key = re.sub(r"[_\-]+", " ", short).strip().lower()
    known = AVAILABILITY.get(key) or AVAILABILITY.get(key.replace(" ", ""))
    if known:
        return known
    if _VALUE_IN_STOCK.search(text):
        return "InStock"
    if OUT_OF_STOCK_PHRASES.search(text) or _VALUE_OUT_OF_STOCK.search(text):
        return "OutOfStock"
    if IN_STOCK_PHRASES.search(text) or re.search(r"\bavailable\b", text, re.IGNORECASE):
        return "InStock"
    return short if re.fullmatch(r"[A-Z][a-z]+(?:[A-Z][a-z]+)+", short) else None


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


def _price_rejection(offers: list[dict[str, Any]]) -> str | None:
    """Why the offers' stated price was refused ('negative', 'not finite', ...), if it was."""
    for offer in offers:
        for key in ("price", "lowPrice", "highPrice"):
            reason = check_price(_get(offer, key))[1]
            if reason:
                return reason
    return None


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
    if priced:
        return priced[0]
    return offers[0] if offers else None


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


def _main_product(
    candidates: list[dict[str, Any]], page_url: str
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
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
    # Offers of the variants not already among the product's own, by identity: comparing dicts
    # (``o not in offers``) made a 16,000-variant ProductGroup quadratic (36 s).
    own = {id(o) for o in offers}
    every_offer = offers + [o for v in variants for o in _offers(v) if id(o) not in own]
    availabilities = [normalize_availability(_get(o, "availability")) for o in every_offer]
    availability = normalize_availability(_get(offer, "availability")) if offer else None
    if len(every_offer) > 1 and any(a in IN_STOCK for a in availabilities):
        # One offer per size or colour: the product is buyable when any of them is.
        availability = next(a for a in availabilities if a in IN_STOCK)
    images = [u for node in [main, *variants] for u in _image_candidates(_get(node, "image"))]
    rejected = {"price": _price_rejection(every_offer)} if price is None and _price_rejection(every_offer) else {}
    return {
        "_rejected": rejected,
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


#: Longer integers than this are not a quantity a page states (a 400-digit "price"): kept as text.
MAX_INT_DIGITS = 30


def _json_int(text: str) -> int | str:
    return int(text) if len(text.lstrip("-")) <= MAX_INT_DIGITS else text


def _json_constant(text: str) -> None:
    """NaN and Infinity are no JSON values; a block using them loses that value only."""
    return None


def _load_json_ld(raw: str) -> Any:
    options: dict[str, Any] = {"strict": False, "parse_int": _json_int, "parse_constant": _json_constant}
    try:
        return json.loads(raw, **options)
    except ValueError:  # comments and trailing commas, as some shops write them
        return jstyleson.loads(re.sub(r"^\s*<!--|-->\s*$", "", raw.strip()), **options)


def _json_ld_documents(tree: HtmlElement, url: str) -> Iterator[Any]:
    """Each readable JSON-LD block; an unreadable one (broken, nested 100k deep) is skipped alone."""
    for script in tree.xpath('//script[@type="application/ld+json"]'):
        raw = script.text_content() or ""
        try:
            yield _load_json_ld(raw)
        except (Exception, RecursionError):  # noqa: BLE001 - any unreadable block is skipped
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


# RDFa is parsed (pyRdfa, through extruct) only on pages whose markup names a product or an offer in a
# typeof: a second DOM of the page costs more than the other syntaxes together.
_RDFA_PRODUCT = re.compile(rb"""typeof\s*=\s*["'][^"']*(?:Product|Offer)""", re.IGNORECASE)
_SCHEMA_IRI = re.compile(r"^https?://schema\.org/")


def _rdfa_node(node: dict[str, Any], by_id: dict[str, dict[str, Any]], depth: int = 0) -> dict[str, Any]:
    """An expanded RDFa node (extruct: ``{"https://schema.org/name": [{"@value": ...}]}``) as a
    JSON-LD-shaped dict, its references (offers, brand) resolved."""
    out: dict[str, Any] = {"@type": node.get("@type", [])}
    if isinstance(node.get("@id"), str) and not node["@id"].startswith("_:"):
        out["url"] = node["@id"]
    for key, values in node.items():
        match = _SCHEMA_IRI.match(key)
        if not match or not isinstance(values, list):
            continue
        converted = []
        for value in values:
            if not isinstance(value, dict):
                continue
            if "@value" in value:
                converted.append(value["@value"])
            elif "@id" in value:
                ref = by_id.get(value["@id"])
                converted.append(
                    _rdfa_node(ref, by_id, depth + 1) if ref and ref.get("@type") and depth < 4 else value["@id"]
                )
        if converted:
            out[key[match.end() :]] = converted[0] if len(converted) == 1 else converted
    return out


def from_rdfa(tree: HtmlElement, response: TextResponse) -> dict[str, Any] | None:
    """schema.org RDFa (``vocab="https://schema.org/" typeof="Product"``), through extruct's extractor."""
    if not _RDFA_PRODUCT.search(response.body):
        return None
    from extruct.rdfa import RDFaExtractor
    from extruct.utils import parse_xmldom_html

    dom = parse_xmldom_html(response.body, encoding=response.encoding)
    items = [i for i in RDFaExtractor().extract_items(dom, base_url=response.url) if isinstance(i, dict)]
    by_id = {i["@id"]: i for i in items if isinstance(i.get("@id"), str)}
    candidates = [_rdfa_node(i, by_id) for i in items if _is_product(i)]
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
    price_text = one("product:price:amount", "og:price:amount", "product:sale_price:amount", "og:price")
    price, price_refused = check_price(price_text)
    og_type = (one("og:type") or "").lower()
    images = [u for k in ("og:image", "og:image:secure_url", "og:image:url") for u in props.get(k, [])]
    return {
        "sku": one("product:retailer_item_id", "product:sku", "og:sku"),
        "title": one("og:title"),
        "description": one("og:description"),
        "category": one("product:category"),
        "brand": one("product:brand", "og:brand"),
        "image_urls": absolute_images(images, response),
        "price": price,
        "_rejected": {"price": price_refused} if price_refused else {},
        "currency": normalize_currency(
            one("product:price:currency", "og:price:currency", "product:sale_price:currency")
        )
        or currency_in_text(price_text),
        "availability": normalize_availability(one("product:availability", "og:availability")),
        "color": one("product:color"),
        "material": one("product:material"),
        # By itself OpenGraph names a product only when og:type says so or it gives a price; else it
        # only fills gaps (og:image) of a product another syntax found.
        "is_product": "product" in og_type or price_text is not None,
        "_og_type": og_type,
    }


def shown(value: str | None, text: str) -> bool:
    """Whether ``value`` appears in the visible ``text`` as a whole token."""
    if not value:
        return False
    return re.search(r"(?<![A-Za-z0-9])" + re.escape(value) + r"(?![A-Za-z0-9])", text) is not None


def from_visible_page(tree: HtmlElement, response: TextResponse) -> dict[str, Any] | None:
    """The visible page's product (:mod:`scrapers.visible`, which builds on this module's normalisers)."""
    from scrapers.visible import visible_product

    return visible_product(tree, response)


# -- the page ---------------------------------------------------------------------------------------
def extract_sources(response: TextResponse) -> dict[str, dict[str, Any]]:
    """The product as each syntax states it (syntaxes without a product left out)."""
    try:
        tree = parse_html(response.body, encoding=response.encoding)
    except Exception:  # noqa: BLE001 - an unparsable page has no product
        logger.debug("unparsable HTML on %s", response.url)
        return {}
    extractors = {
        "jsonld": from_json_ld,
        "microdata": from_microdata,
        "rdfa": from_rdfa,
        "og": from_opengraph,
        "dom": from_visible_page,
    }
    found: dict[str, dict[str, Any]] = {}
    for name in SOURCES:
        try:
            fields = extractors[name](tree, response)
        except Exception:  # noqa: BLE001 - one broken syntax must not hide the others
            logger.warning("%s extraction failed on %s", name, response.url, exc_info=True)
            continue
        if fields is not None:
            found[name] = fields
    og = found.get("og")
    og_type = og.pop("_og_type", "") if og is not None else ""
    if og is not None and not og.pop("is_product") and set(found) <= {"og", "dom"}:
        del found["og"]
    dom = found.get("dom")
    if dom is not None:
        _choose_sku(found, dom.pop("_text", ""), response.url)
        if og_type.split(".")[0] in NOT_PRODUCT_OG_TYPES and not dom.get("sku"):
            # The page says what it is: an article's shop widget is no product page. (A shop that
            # mislabels its product pages still names them by the product code they print.)
            dom["is_product"] = False
    if dom is not None and not dom.pop("is_product") and not set(found) - {"dom"}:
        del found["dom"]  # the visible page alone names a product only when it looks like one
    elif dom is not None and set(found) - {"dom"}:
        if _stated_out_of_stock_but_buyable(found):
            dom["_prefer"] = (*dom.get("_prefer", ()), "availability")
        if _stated_price_is_the_old_one(found):
            dom["_prefer"] = (*dom.get("_prefer", ()), "price")
        else:
            # Beside structured data the page's own price markup is more often another price (a
            # related product's, a per-unit one) than the missing one: the visible price is not used.
            dom["price"] = dom["currency"] = None
            dom["_rejected"] = {}
    if dom is not None:
        dom.pop("_shown_prices", None)
        dom.pop("_old_prices", None)
        dom.pop("_buy_controls", None)
    return found


def _stated_out_of_stock_but_buyable(found: dict[str, dict[str, Any]]) -> bool:
    """Whether the structured data state the product sold out (:data:`SOLD_OUT`) while the
    page itself offers an enabled buy control of its own (not a related product card's): the markup
    often states one variant's stock (the default size, sold out) while the page sells the others."""
    dom = found["dom"]
    stated = next(
        (found[n]["availability"] for n in SOURCES if n != "dom" and n in found and found[n].get("availability")),
        None,
    )
    return stated in SOLD_OUT and dom.get("_buy_controls", 0) > 0


def _stated_price_is_the_old_one(found: dict[str, dict[str, Any]]) -> bool:
    """Whether the structured data state the price the page shows struck through (a sale the markup
    was not updated for: microdata 219.99, the page "<s>219.99</s> -50% 110.00"): the page shows the
    stated price only as an old one, and its own current price, lower, in the buy box."""
    dom = found["dom"]
    stated = next(
        (found[n]["price"] for n in SOURCES if n != "dom" and n in found and found[n].get("price") is not None), None
    )
    if stated is None or dom.get("price") is None:
        return False
    key = round(stated, 2)
    return key in dom.get("_old_prices", ()) and key not in dom.get("_shown_prices", ()) and dom["price"] < stated


def in_url(value: str | None, url: str) -> bool:
    """Whether the identifier ``value`` (5 characters or more) is a token of the page's URL path or query
    (``/dp/B004SNMXRS``, ``/p4781720``, ``?pid=260591``); a number may follow a letter ("p4781720")."""
    if not value or len(value) < 5:
        return False
    parts = urlsplit(url)
    where = unquote(f"{parts.path}?{parts.query}")
    before = r"(?<!\d)" if value.isdigit() else r"(?<![A-Za-z0-9])"
    return re.search(before + re.escape(value) + r"(?![A-Za-z0-9])", where, re.IGNORECASE) is not None


def _choose_sku(found: dict[str, dict[str, Any]], text: str, url: str) -> None:
    """Which identifier is the product's, when the page shows others than its structured data states.

    1. A stated sku the page also shows is kept.
    2. Else, of the identifiers the page shows (labelled "Product code:", "ASIN", ...), the first one the
       page's URL carries (``/dp/B004SNMXRS``, ``/p4781720``): a shop's product URL names its product.
    3. Else the first one the page shows beats a stated sku it never shows: shops' structured data often
       carry a variant's or an internal id (a size's "84518927-040-35", a catalogue key) while the page
       prints the product's own number ("Product code: 83810610", "Ref. 1002/710"), the one a shopper
       and the shop's search know the product by.
    """
    dom = found["dom"]
    ids = dom.pop("_ids", []) or ([dom["sku"]] if dom.get("sku") else [])
    stated = next((found[n]["sku"] for n in SOURCES if n != "dom" and n in found and found[n].get("sku")), None)
    if stated and shown(stated, text):
        return
    from_url = next((i for i in ids if in_url(i, url)), None)
    if from_url:
        dom["sku"], dom["_prefer"] = from_url, ("sku",)
    elif dom.get("sku") and stated and stated != dom["sku"]:
        dom["_prefer"] = ("sku",)


def merge_sources(found: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Field by field, the first source in :data:`SOURCES` order that has a value; images united."""
    ordered = [(name, found[name]) for name in SOURCES if name in found]
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field in FIELDS:
        if field in ("product_url", "image_url", "image_urls", "field_sources"):
            continue
        merged[field] = None
        preferred = [(n, s) for n, s in ordered if field in s.get("_prefer", ())]
        for name, src in preferred + ordered:
            if src.get(field) is not None:
                merged[field], sources[field] = src[field], name
                break
        else:
            refused = next(((n, s["_rejected"][field]) for n, s in ordered if field in s.get("_rejected", {})), None)
            if refused:
                sources[field] = f"{refused[0]}: refused ({refused[1]})"
    # A stated price outranks the visible page's even when the stated one was refused.
    if (
        merged["price"] is not None
        and sources.get("price") == "dom"
        and any("price" in s.get("_rejected", {}) for n, s in ordered if n != "dom")
    ):
        refused_by = next(n for n, s in ordered if "price" in s.get("_rejected", {}))
        merged["price"] = None
        sources["price"] = f"{refused_by}: refused ({found[refused_by]['_rejected']['price']})"
    merged["image_urls"] = list(dict.fromkeys(u for _, src in ordered for u in src.get("image_urls", [])))
    merged["image_url"] = merged["image_urls"][0] if merged["image_urls"] else None
    image_source = next((n for n, src in ordered if src.get("image_urls")), None)
    if image_source:
        sources["image_url"] = image_source
    merged["field_sources"] = sources
    return merged


def extract_product(response: Response) -> dict[str, Any] | None:
    """The page's product as a flat dict of :data:`FIELDS` (missing fields None), or None (also for a
    page that is not text)."""
    if not isinstance(response, TextResponse):
        return None
    found = extract_sources(response)
    if not found:
        return None
    merged = merge_sources(found)
    if not (merged["title"] or merged["sku"] or merged["price"] is not None):
        return None  # a bare Product node with nothing in it is not a product page
    product = {"product_url": response.url, **{f: merged[f] for f in FIELDS if f != "product_url"}}
    # {field: source} as JSON, the products table's field_sources column.
    product["field_sources"] = json.dumps(merged["field_sources"], sort_keys=True)
    return product
