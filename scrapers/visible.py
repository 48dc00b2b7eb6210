"""A product from the visible page, for pages whose structured data gives none (or misses fields).

General rules only, no shop's markup:

- title: the ``h1`` sharing most words with the document's ``<title>`` (pop-ups have h1s too);
- price: the price element (class, id or itemprop naming a price) nearest after the title, read without
  its struck or was/old-named parts, with a currency shown, not 0, and not inside a repeated card (three
  or more like siblings each with a price and a link: a listing's, a carousel's, a comparison table's);
  read by price-parser, the currency by its symbol or, for "$", "kr", "¥", the page's country (``lang``,
  ``og:locale``, the URL's country domain) through babel, which also settles "3.499" in a 3-decimal
  currency;
- sku: the identifiers the page prints after a label ("SKU:", "Art.-Nr.", "Product code", "ASIN",
  "Артикул", "Cod produs", ...) in the visible text (html-text), or in an element named for one
  (``class="product-code"``, ``data-qa="product-reference"``); which one is the product's is settled with
  the structured data in scrapers/extract.py (``_choose_sku``);
- availability: an enabled buy control (InStock) or a stock phrase in one of many languages; beside
  structured data that state the product out of stock, the page's own enabled buy control wins (the
  markup often states one variant's stock, a sold-out default size, while the page sells the others);
- brand: an element named brand (zyte-parsers); image: the first large-looking ``img`` after the title.

False positives are the risk: a listing, a search result, an event or an article also has a heading and
prices. The visible page names a product by itself (``is_product``) only with a title, a price and one to
:data:`MAX_BUY_BUTTONS` buy controls outside repeated cards, or an sku label; a listing's prices and
buttons sit in its cards, and none with no sku is not a product. Hidden elements (``display:none``,
``hidden``, ``aria-hidden``, the usual hidden classes), the navigation and the footer are not the page.
"""

from __future__ import annotations

import re
from copy import deepcopy
from typing import Any
from urllib.parse import urlsplit

import html_text
from babel.numbers import get_currency_precision, get_territory_currencies
from lxml import etree
from lxml.html import HtmlElement
from price_parser import Price
from scrapy.http import TextResponse
from zyte_parsers import extract_brand_name

from scrapers.extract import (
    AMBIGUOUS_SYMBOLS,
    IN_STOCK_PHRASES,
    OUT_OF_STOCK_PHRASES,
    _clean,
    absolute_images,
    check_price,
    currency_in_text,
    normalize_currency,
)

# Elements never part of the product's own block.
# Elements never part of the product's own block (see _skips).
_HIDDEN_CLASSES = frozenset({"hidden", "hide", "d-none", "is-hidden", "invisible", "sr-only", "visually-hidden"})
_SKIP_TAGS = frozenset({"script", "style", "noscript", "nav", "footer", "del", "s", "strike", "template"})
_OLD_PRICE = re.compile(
    r"old|was|strike|regular|compare|before|original|list|crossed|previous|rrp|uvp|msrp|save|saving|discount|per[-_]?unit|unit[-_]?price",
    re.I,
)
_PRICE_XPATH = (
    "//*[(contains(translate(@class,'PRICE','price'),'price') or contains(translate(@id,'PRICE','price'),'price') "
    "or @itemprop='price' or contains(translate(@class,'PREIS','preis'),'preis'))]"
)
_BUY = re.compile(
    r"add to (?:cart|bag|basket|trolley)|buy now|buy it now|in den warenkorb|warenkorb|ajouter au panier|"
    r"añadir al carrito|añadir a la cesta|aggiungi al carrello|in winkelwagen|do koszyka|adicionar ao carrinho|"
    r"в корзину|до кошика|do košíku|do košarice|u košaricu|v košarico|kosárba|lägg i varukorg|læg i kurv|"
    r"legg i handlekurv|lisää ostoskoriin|lisa ostukorvi|ielikt grozā|į krepšelį|adaugă în coș|в количката|"
    r"στο καλάθι|sepete ekle|カートに入れる|加入购物车|加入購物車|장바구니|바로구매|thêm vào giỏ|mua ngay|أضف إلى|"
    r"הוסף לסל|\b(?:купить|купи|купити|comprar|compra ora|acheter|kaufen|kupi|kupite|kup teraz|köp|køb|kjøp|"
    r"osta|koop|kopen|acquista|cumpără|satın al|vásárlás|nupirkti|pirkt|beli|αγορά|購入|购买|구매|ซื้อ|شراء|קנה)\b",
    re.I,
)
# A notice that the product was added ("Добавлено в корзину", "Added to cart") is no control.
_ADDED = re.compile(
    r"\badded to|hinzugefügt|ajouté|añadido|aggiunto|toegevoegd|dodano|adicionado|добавлен|додано|přidáno|"
    r"hozzáadva|lagt i|lisätty|담았습니다|追加しました|已加入",
    re.I,
)
_BUY_ATTR = re.compile(r"add[-_]?to[-_]?(?:cart|bag|basket)|addtocart|buy[-_]?now|buy[-_]?button", re.I)
# Labels a shop prints before the product's own identifier, in many languages. EAN/GTIN/UPC/ISBN are
# not among them (those are barcodes, not the shop's product number). The separator may be missing in
# spec tables ("ID Produto 1236291"), so the value must hold a digit.
_ID_LABELS = (
    r"SKU|Art(?:ikel)?\.?\s*-?\s*Nr\.?|Artikel-?nummer|Artikelnr\.?|Bestell-?(?:nummer|nr\.?)|Modell-?(?:nummer|nr\.?)|"
    r"Item\s*(?:No\.?|number|#|code)|Product\s*(?:code|ID|No\.?|number)|Article\s*(?:No\.?|number|code)|"
    r"Style\s*(?:No\.?|number|#|code)|Model\s*(?:No\.?|number|#)|Part\s*(?:No\.?|number)|ASIN|"
    r"Num[ée]ro\s+(?:de\s+l['’]objet(?:\s+eBay)?|d['’]article|de\s+produit)|R[ée]f(?:[ée]rence)?\.?|Ref(?:erence|erencia)?\.?|"
    r"ID\s+(?:do\s+)?Produto|C[óo]d(?:igo|\.)?(?:\s+(?:do|de)\s+(?:produto|producto|art[íi]culo|artigo))?|"
    r"Cod(?:ice)?\.?(?:\s+(?:articolo|prodotto|produs))?|Kod(?:\s+produktu)?|K[óo]d\s+produktu|Numer\s+katalogowy|"
    r"Produkta\s+kods|Prekės\s+kodas|Tootekood|Tuotenumero|Tuotekoodi|Varenr\.?|Varenummer|Artikelnummer|"
    r"Cikkszám|Katalógové\s+číslo|Ürün\s+kodu|Stok\s+kodu|Mã\s+sản\s+phẩm|Артикул|Код(?:\s+товара)?|"
    r"品番|商品番号|型番|货号|商品编号|商品編號|상품번호|딜번호|상품코드|מק\"ט"
)
_SKU_LABEL = re.compile(
    r"(?<![\w-])(?:" + _ID_LABELS + r")(?:\s*[:#：]\s*|\s+)(?=[^\s:#：]*\d)([A-Za-z0-9][A-Za-z0-9\-_./]{2,40})",
    re.IGNORECASE,
)
_ID_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-_./]{2,40}")
# Elements a shop names for the product's identifier (class, id, itemprop or a data- attribute).
_ID_ATTR = re.compile(
    r"(?<![a-z])(?:sku|product[-_]?(?:code|ref|reference|number|no|id)|reference|ref[-_]?(?:code|number)|"
    r"article[-_]?(?:number|no|code)|item[-_]?(?:number|code|no)|model[-_]?(?:number|no)|style[-_]?(?:number|code|no)|"
    r"part[-_]?(?:number|no)|mpn)(?![a-z])",
    re.IGNORECASE,
)
_BRAND_XPATH = "//*[contains(translate(@class,'BRAND','brand'),'brand') or @itemprop='brand' or contains(translate(@id,'BRAND','brand'),'brand')]"


_NO_TEXT = frozenset({"script", "style", "noscript", "template", "iframe", "object", "embed", "head", "title", "svg"})
_PUNCT_AFTER = re.compile(r'^[,:;.!?")]')


def _text_of(element: HtmlElement) -> str:
    """The element's text as html-text's ``extract_text(guess_layout=False)`` gives it (a space between
    text nodes unless punctuation follows), without html-text's copy-and-clean of the subtree per call
    (which made the visible page 2x slower): scripts, styles, comments and the like are skipped here."""
    chunks: list[str] = []
    skip = 0
    prev = ""

    def add(raw: str | None) -> None:
        nonlocal prev
        if not raw:
            return
        text = " ".join(raw.split())
        if text:
            if prev and (prev[-1:].isspace() or (not _PUNCT_AFTER.match(text) and not prev.endswith("("))):
                chunks.append(" ")
            chunks.append(text)
            prev = raw

    for event, node in etree.iterwalk(element, events=("start", "end")):
        silent = not isinstance(node.tag, str) or node.tag in _NO_TEXT
        if event == "start":
            if skip or silent:
                skip += 1
            else:
                add(node.text)
        else:
            if skip:
                skip -= 1
            if not skip and node is not element:
                add(node.tail)
    return "".join(chunks)


def _skips(node: Any) -> bool:
    """Whether ``node`` is no part of the page a shopper sees (script, navigation, footer, struck
    text, a hidden element)."""
    if node.tag in _SKIP_TAGS:
        return True
    attrib = node.attrib
    if "hidden" in attrib or attrib.get("aria-hidden") == "true":
        return True
    style = attrib.get("style")
    if style:
        declarations = ";" + style.replace(" ", "").lower()
        # ";" first: "-webkit-backface-visibility: hidden" on the body hides nothing.
        if ";display:none" in declarations or ";visibility:hidden" in declarations:
            return True
    classes = attrib.get("class")
    return bool(classes) and not _HIDDEN_CLASSES.isdisjoint(classes.split())


def _in_page(element: HtmlElement) -> bool:
    return not any(_skips(node) for node in (element, *element.iterancestors()))


_WORD = re.compile(r"\w+")


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 1}


def _title(tree: HtmlElement, page_title: str) -> tuple[HtmlElement | None, str | None]:
    """The ``h1`` naming the product: of the page's headings, the one sharing most words with the
    document's ``<title>`` (a page may have other h1s: a pop-up's "Adding to basket...", a banner's)."""
    known = _words(page_title)
    best: tuple[float, HtmlElement | None, str | None] = (-1.0, None, None)
    for h1 in tree.xpath("//h1"):
        if not _in_page(h1):
            continue
        text = _clean(_text_of(h1))
        if not text or len(text) > 300:
            continue
        words = _words(text)
        overlap = len(words & known) / len(words) if words else 0.0
        if overlap > best[0]:
            best = (overlap, h1, text)
    return best[1], best[2]


# -- the page's country and its currency ----------------------------------------------------------
# Top-level domains that name no country (or are used as if they did not: .co, .io, .me, .tv).
_GENERIC_TLDS = frozenset(
    {
        "com",
        "net",
        "org",
        "info",
        "biz",
        "shop",
        "store",
        "io",
        "co",
        "me",
        "tv",
        "ai",
        "app",
        "online",
        "eu",
        "site",
        "xyz",
        "club",
        "fm",
        "ly",
        "to",
        "cc",
        "ws",
    }
)
_REGION = re.compile(r"^[a-z]{2,3}[-_]([a-z]{2})$", re.I)


def page_country(tree: HtmlElement, url: str) -> str | None:
    """The page's country (ISO 3166 alpha-2) from ``<html lang="es-CL">``, ``og:locale`` ("en_GB") or
    the URL's country-code domain (".kz", ".co.uk"); None when none says."""
    root = tree.getroottree().getroot()
    values = [root.get("lang") or "", root.get("xml:lang") or ""]
    values += root.xpath("//meta[@property='og:locale']/@content")[:1]
    for value in values:
        match = _REGION.match(value.strip())
        if match:
            return match.group(1).upper()
    host = (urlsplit(url).hostname or "").rstrip(".")
    tld = host.rsplit(".", 1)[-1].lower() if "." in host else ""
    if len(tld) == 2 and tld not in _GENERIC_TLDS:
        return "GB" if tld == "uk" else tld.upper()
    return None


def price_currency(text: str, symbol: str | None, country: str | None) -> str | None:
    """The ISO code of the currency a price text shows: a code or an unambiguous symbol, else a shared
    symbol ("$", "kr", "¥") resolved by the page's country (Chile's "$" is CLP)."""
    code = (normalize_currency(symbol) if symbol else None) or currency_in_text(text)
    if code or not symbol:
        return code
    shared = AMBIGUOUS_SYMBOLS.get(symbol.strip().lower())
    if shared and country:
        try:
            local = set(get_territory_currencies(country))
        except Exception:  # noqa: BLE001 - babel knows no such territory
            return None
        match = shared & local
        return next(iter(match)) if len(match) == 1 else None
    return None


_THREE_AFTER_ONE_SEPARATOR = re.compile(r"^\D*\d{1,3}([.,])\d{3}\D*$")


def decimal_separator_for(text: str, currency: str | None) -> str | None:
    """The decimal separator where the text alone is ambiguous and the currency decides.

    "3.499" is read as 3499 (price-parser: three digits after a lone separator are thousands), right for
    currencies with 0 or 2 minor digits, where three decimals cannot be; for the dinars with 3 (KWD,
    BHD, OMR, JOD, TND, ...) it is 3.499.
    """
    match = _THREE_AFTER_ONE_SEPARATOR.match(text.strip())
    if not match or not currency:
        return None
    try:
        digits = get_currency_precision(currency)
    except Exception:  # noqa: BLE001 - unknown currency
        return None
    return match.group(1) if digits == 3 else None


# -- the price ------------------------------------------------------------------------------------
def _is_old(element: HtmlElement) -> bool:
    names = f"{element.get('class', '')} {element.get('id', '')}"
    return element.tag in ("del", "s", "strike") or bool(_OLD_PRICE.search(names))


def _current_text(element: HtmlElement) -> str:
    """The element's text without its old prices (``del``, ``s``, was/old-named children): a price box
    "<s>49 890 тг.</s> 44 890 тг." reads 44 890 тг."""
    old = [child for child in element.iterdescendants() if isinstance(child.tag, str) and _is_old(child)]
    if not old:
        return _text_of(element)
    copy = deepcopy(element)
    for child in [c for c in copy.iterdescendants() if isinstance(c.tag, str) and _is_old(c)]:
        if child.getparent() is not None:
            child.drop_tree()
    return _text_of(copy)


#: A card is small: a name, a price, a button (page sections that happen to be alike are larger).
_CARD_MAX_CHARS = 2000


def _is_card(element: HtmlElement) -> bool:
    """A price and a link to somewhere in a small block: what a listing's or a carousel's card holds."""
    if len(element.text_content()) > _CARD_MAX_CHARS:
        return False
    names = f"{element.get('class', '')} {element.get('id', '')}".lower()
    has_price = "price" in names or bool(element.xpath(".//*[contains(translate(@class,'PRICE','price'),'price')]"))
    return has_price and bool(element.xpath("descendant-or-self::a[@href]"))


def _holds_buy(element: HtmlElement) -> bool:
    """A card (price and link) or a small block with a buy control's words."""
    text = element.text_content()
    return len(text) <= _CARD_MAX_CHARS and (_is_card(element) or bool(_BUY.search(text)))


def _kind(element: HtmlElement) -> tuple[str, tuple[str, ...]]:
    """Tag and class, without the class words that hold a digit (a card's own "jq_id971098")."""
    return element.tag, tuple(sorted(w for w in (element.get("class") or "").split() if not re.search(r"\d", w)))


def in_repeated_block(element: HtmlElement, depth: int = 10, holds=_is_card, cache: dict | None = None) -> bool:
    """Whether ``element`` sits in one of three or more like siblings (same tag and class) that each
    hold a price and a link: a listing's or a carousel's cards, a comparison table's cells. The
    product's own price and buy button are not repeated; a listing's and the related products' are.
    (A price table's rows, "RRP / Price / You save", have no links; a page's feature blocks are not
    alike.)"""
    cache = {} if cache is None else cache
    node = element
    for _ in range(depth):
        parent = node.getparent()
        if parent is None:
            return False
        key = (holds, parent, _kind(node))
        if key not in cache:
            like = [c for c in parent if isinstance(c.tag, str) and _kind(c) == key[2]]
            cache[key] = len(like) >= 3 and sum(1 for c in like if holds(c)) >= 3
        if cache[key]:
            return True
        node = parent
    return False


def _read_price(
    element: HtmlElement, text: str, country: str | None
) -> tuple[float | None, str | None, str | None, bool]:
    """(price, currency, refusal, has_currency) of a price element's text."""
    parsed = Price.fromstring(text)
    currency = price_currency(text, parsed.currency, country)
    if parsed.amount is None:
        return None, currency, None, False
    price, refused = check_price(text, decimal_separator=decimal_separator_for(text, currency))
    return price, currency, refused, bool(parsed.currency or currency)


class _Prices:
    """The page's prices: the one nearest after the title, and every current and every old (struck,
    was/old-named) price outside repeated cards, for the merge's "is the stated price the old one?"."""

    def __init__(self) -> None:
        self.price: float | None = None
        self.currency: str | None = None
        self.refused: str | None = None
        self.shown: set[float] = set()
        self.old: set[float] = set()


def _price(tree: HtmlElement, order: dict[HtmlElement, int], after: int, country: str | None, cache: dict) -> _Prices:
    """The price element nearest after the title (``after``): not an old price, not a repeated card's,
    with a currency shown, not 0 (a placeholder a script fills)."""
    out = _Prices()
    candidates: list[tuple[int, float | None, str | None, str | None]] = []
    for element in tree.xpath(_PRICE_XPATH + " | //del | //s | //strike"):
        old = _is_old(element)
        if not (_in_page(element) or (old and _in_page(element.getparent()))):
            continue
        text = _text_of(element)
        if not text or len(text) > 120 or not re.search(r"\d", text):
            continue
        if old:
            price, _, _, has_currency = (
                _read_price(element, text, country) if len(text) <= 60 else (None, None, None, False)
            )
            if price and has_currency and not in_repeated_block(element, cache=cache):
                out.old.add(round(price, 2))
            continue
        text = _current_text(element)
        if not text or len(text) > 60 or not re.search(r"\d", text):
            continue
        price, currency, refused, has_currency = _read_price(element, text, country)
        # A price the page shows comes with its currency; a bare number in a price box is often a
        # quantity, a rating or a per-unit figure.
        if not has_currency or (price is None and not refused) or price == 0 or in_repeated_block(element, cache=cache):
            continue
        if price is not None:
            out.shown.add(round(price, 2))
        position = order.get(element, 0)
        distance = position - after if position >= after else 10 * (after - position) + 10**6
        candidates.append((distance, price, currency, refused))
    if candidates:
        _, out.price, out.currency, out.refused = min(candidates, key=lambda c: c[0])
    return out


# -- the buy button -------------------------------------------------------------------------------
#: More buy controls outside repeated cards than a buy box has (add, buy now, one per seller or
#: bundle, a sticky bar's copy) is a listing whose cards are not alike.
MAX_BUY_BUTTONS = 6
_CONTROL_NAMES = re.compile(r"btn|button|buy|cart|basket|bag|purchase|checkout|cta", re.I)


def _is_buy_control(element: HtmlElement) -> bool:
    tag = element.tag
    attrs = f"{element.get('id', '')} {element.get('name', '')} {element.get('class', '')}"
    is_input = tag == "input" and (element.get("type") or "").lower() in ("submit", "button", "image")
    if not (tag == "button" or is_input or element.get("role") == "button" or _CONTROL_NAMES.search(attrs)):
        return False
    if element.get("disabled") is not None or element.get("aria-disabled") == "true":
        return False
    label = (element.get("value") or element.get("alt") or "") if tag == "input" else _text_of(element)
    if label and _ADDED.search(label):
        return False
    if label and len(label) < 40 and _BUY.search(label):
        return True
    return (tag == "button" or is_input) and bool(_BUY_ATTR.search(attrs))


def _buy_buttons(tree: HtmlElement, cache: dict) -> int:
    """The page's own buy controls: an enabled add-to-cart / buy-now control, counted once however
    deeply a shop nests it (a span around an input around a label), and not a repeated card's (a
    listing's or the related products'), not in the navigation or the footer."""
    found = [e for e in tree.iter() if isinstance(e.tag, str) and _is_buy_control(e) and _in_page(e)]
    matched = set(found)
    outermost = [e for e in found if not any(a in matched for a in e.iterancestors())]
    return sum(1 for e in outermost if not in_repeated_block(e, holds=_holds_buy, cache=cache))


def _identifier(value: str) -> str | None:
    value = value.rstrip("./-")
    return value if _ID_VALUE.fullmatch(value) and re.search(r"\d", value) else None


def labelled_ids(text: str) -> list[tuple[int, str]]:
    """(position, value) of every identifier the visible ``text`` shows after an sku label."""
    out = []
    for match in _SKU_LABEL.finditer(text):
        value = _identifier(match.group(1))
        if value:
            out.append((match.start(), value))
    return out


def _named_ids(tree: HtmlElement) -> list[str]:
    """Identifiers in elements named for one (``class="product-code"``, ``data-qa="product-reference"``,
    ``itemprop="sku"``) whose whole visible text is the identifier, perhaps after a label."""
    out = []
    for element in tree.iter():
        if not isinstance(element.tag, str) or element.tag in _FORM_TAGS:
            continue
        names = " ".join(
            v for k, v in element.attrib.items() if k in ("class", "id", "itemprop") or k.startswith("data-")
        )
        if not names or not _ID_ATTR.search(names) or len(names) > 300:
            continue
        value = _clean(_text_of(element)) if _in_page(element) else None
        if not value or len(value) > 60:
            continue
        value = re.sub(r"^[^:：#]*[:：#]\s*", "", value)
        if len(value.split()) == 1 and len(value) >= 4:
            identifier = _identifier(value)
            if identifier:
                out.append(identifier)
    return out


_FORM_TAGS = frozenset({"select", "option", "input", "button", "label", "textarea", "form", "script", "style"})


def _ids(tree: HtmlElement, text: str, title_at: int) -> list[str]:
    """The identifiers the page shows, best first: the labelled ones from the title on, the labelled
    ones before it, then those in elements named for one."""
    labelled = labelled_ids(text)
    ordered = [v for p, v in labelled if p >= title_at] + [v for p, v in labelled if p < title_at] + _named_ids(tree)
    return list(dict.fromkeys(ordered))


def _brand(tree: HtmlElement, title: str | None) -> str | None:
    """The brand an element named brand shows (zyte-parsers), when it is the product's: marked
    ``itemprop="brand"``, or named in the product's title ("Samsung Galaxy A01"). Elements named brand
    are as often a menu ("Popular Brands"), a blog's or a date."""
    title_words = _words(title or "")
    for element in tree.xpath(_BRAND_XPATH)[:20]:
        if element.tag in ("body", "html", "main") or not _in_page(element):
            continue
        name = extract_brand_name(element, search_depth=2)
        name = _clean(name) if name else None
        if not name or len(name) > 60 or len(re.findall(r"[^\W\d_]", name)) < 2:
            continue
        if element.get("itemprop") == "brand" or (_words(name) and _words(name) <= title_words):
            return name
    return None


# Where shops keep an image's large version; a "data:" placeholder in src is no image.
_IMAGE_ATTRS = ("data-old-hires", "data-zoom-image", "data-large-image", "data-large", "data-zoom", "data-src", "src")
_NOT_A_PHOTO = re.compile(
    r"logo|icon|sprite|pixel|spacer|badge|flag|rating|star|payment|maps\.google|staticmap|\.svg|\.gif", re.I
)
_URL_SIZE = re.compile(r"(?<!\d)(\d{2,4})x(\d{2,4})(?!\d)")
_MIN_SIDE = 150


def _too_small(img: HtmlElement, src: str) -> bool:
    width = img.get("width", "")
    if width.isdigit() and int(width) < _MIN_SIDE:  # (a height alone: a slider shows a photo 100 px high)
        return True
    size = _URL_SIZE.search(src)  # "thumbnail_135x85.png"
    return size is not None and max(int(size.group(1)), int(size.group(2))) < _MIN_SIDE


def _image(
    tree: HtmlElement, order: dict[HtmlElement, int], after: int, response: TextResponse, title: str | None
) -> list[str]:
    """The product's photo: the image whose ``alt`` names the product (half the title's words or more;
    shops put the main photo before or after the title), else the first photo-looking image after the
    title; never an icon, a logo, a map or a thumbnail-sized one. (Related products' photos name other
    products.)"""
    words = _words(title or "")
    named: tuple[tuple[float, bool], str] | None = None
    first_after: str | None = None
    for img in tree.xpath("//img"):
        src = next((img.get(a) for a in _IMAGE_ATTRS if img.get(a) and not img.get(a, "").startswith("data:")), None)
        if not src or _NOT_A_PHOTO.search(f"{src} {img.get('class', '')} {img.get('id', '')}") or _too_small(img, src):
            continue
        if not _in_page(img):
            continue
        alt = _words(img.get("alt") or img.get("title") or "")
        # Ties go to an image with a large version (data-old-hires, data-zoom-image, ...): the main photo.
        score = (len(alt & words) / len(words) if words else 0.0, img.get("src") != src)
        if score[0] >= 0.5 and (named is None or score > named[0]):
            named = (score, src)
        if first_after is None and order.get(img, 0) >= after:
            first_after = src
    chosen = named[1] if named else first_after
    return absolute_images([chosen], response) if chosen else []


def visible_product(tree: HtmlElement, response: TextResponse) -> dict[str, Any] | None:
    """The product fields the visible page shows, with ``is_product`` (see the module docstring)."""
    body = tree.find("body") if tree.find("body") is not None else tree
    order = {element: index for index, element in enumerate(body.iter())}
    page_title = " ".join(tree.xpath("//title//text()")[:1] + tree.xpath("//meta[@property='og:title']/@content")[:1])
    heading, title = _title(body, page_title)
    after = order.get(heading, 0) if heading is not None else 0
    cache: dict = {}  # repeated-block answers, shared by the price and the buy buttons
    prices = _price(body, order, after, page_country(tree, response.url), cache)
    price, currency, refused = prices.price, prices.currency, prices.refused
    # The page's visible text (sku labels, stock phrases) from html-text, which cleans the page once.
    text = " ".join(html_text.extract_text(body, guess_layout=False).split())
    title_at = text.find(title) if title else -1
    ids = _ids(body, text, max(title_at, 0))
    sku = ids[0] if ids else None
    buttons = _buy_buttons(body, cache)
    if OUT_OF_STOCK_PHRASES.search(text) and not buttons:
        availability = "OutOfStock"
    elif buttons or IN_STOCK_PHRASES.search(text):
        availability = "InStock"
    else:
        availability = None
    looks_like_product = (
        bool(title)
        and (price is not None or refused)
        and (1 <= buttons <= MAX_BUY_BUTTONS or (buttons == 0 and sku is not None))
    )
    return {
        "sku": sku,
        "title": title,
        "description": None,
        "category": None,
        "brand": _brand(body, title),
        "image_urls": _image(body, order, after, response, title),
        "price": price,
        "currency": currency,
        "availability": availability,
        "color": None,
        "material": None,
        "_rejected": {"price": refused} if refused else {},
        "_buy_controls": buttons,
        "is_product": looks_like_product,
        # The visible text, for the merge's "is the stated sku shown on the page?" (not a field).
        "_text": text,
        "_ids": ids,
        "_shown_prices": prices.shown,
        "_old_prices": prices.old,
    }
