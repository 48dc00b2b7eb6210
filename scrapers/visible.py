"""A product from the visible page, for pages whose structured data gives none (or misses fields).

General rules only, no shop's markup: the title is the page's ``h1``; the price is the price element
(class, id or itemprop naming a price, not an old/was/strike price) nearest after the title, read by
zyte-parsers / price-parser; the sku follows a label ("SKU:", "Art.-Nr.", "Item number", "ASIN",
"Артикул", ...) in the visible text (html-text) or sits in an element named sku; availability is an
enabled buy button (InStock) or a stock phrase in one of many languages; the brand is an element named
brand (zyte-parsers); the image is the first large-looking ``img`` after the title.

False positives are the risk: a listing, a search result, an event or an article also has a heading and
prices. The visible page names a product by itself (``is_product``) only with a title, a price and one
or two buy buttons or an sku label; many buy buttons (a listing's) or none with no sku is not a product.
"""
from __future__ import annotations

import re
from typing import Any

import html_text
from lxml.html import HtmlElement
from scrapy.http import TextResponse
from zyte_parsers import extract_brand_name, extract_price

from scrapers.extract import _clean, absolute_images, check_price, normalize_currency

# Elements never part of the product's own block.
_SKIP = "ancestor-or-self::*[self::script or self::style or self::noscript or self::nav or self::footer or self::del or self::s or self::strike]"
_OLD_PRICE = re.compile(r"old|was|strike|regular|compare|before|original|list|crossed|previous|rrp|uvp|msrp|save|saving|discount|per[-_]?unit|unit[-_]?price", re.I)
_PRICE_XPATH = (
    "//*[(contains(translate(@class,'PRICE','price'),'price') or contains(translate(@id,'PRICE','price'),'price') "
    "or @itemprop='price' or contains(translate(@class,'PREIS','preis'),'preis'))]"
)
_BUY = re.compile(
    r"add to (?:cart|bag|basket|trolley)|buy now|buy it now|in den warenkorb|warenkorb|ajouter au panier|"
    r"añadir al carrito|añadir a la cesta|aggiungi al carrello|in winkelwagen|do koszyka|adicionar ao carrinho|"
    r"в корзину|до кошика|do košíku|do košarice|kosárba|lägg i varukorg|læg i kurv|legg i handlekurv|"
    r"sepete ekle|カートに入れる|加入购物车|加入購物車|장바구니|thêm vào giỏ|أضف إلى|הוסף לסל|купить|comprar|acheter|kaufen",
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
_OUT_OF_STOCK = re.compile(
    r"out of stock|sold out|currently unavailable|no longer available|ausverkauft|nicht (?:auf lager|verfügbar|lieferbar)|"
    r"agotado|sin stock|épuisé|rupture de stock|esaurito|non disponibile|uitverkocht|niet (?:op voorraad|leverbaar)|"
    r"brak w magazynie|niedostępny|esgotado|indisponível|нет в наличии|немає в наявності|vyprodáno|není skladem|"
    r"nincs raktáron|slutsåld|udsolgt|utsolgt|tükendi|stokta yok|hết hàng|在庫切れ|売り切れ|缺货|품절",
    re.I,
)
_IN_STOCK = re.compile(
    r"\bin stock\b|auf lager|sofort lieferbar|en stock|disponible|in magazzino|disponibile|op voorraad|na stanie|"
    r"dostępny|em estoque|em stock|в наличии|в наявності|skladem|raktáron|på lager|i lager|i butik|stokta|còn hàng|"
    r"在庫あり|有货|재고 있음",
    re.I,
)
_BRAND_XPATH = "//*[contains(translate(@class,'BRAND','brand'),'brand') or @itemprop='brand' or contains(translate(@id,'BRAND','brand'),'brand')]"


def _text_of(element: HtmlElement) -> str:
    return " ".join(html_text.extract_text(element, guess_layout=False).split())


def _in_page(element: HtmlElement) -> bool:
    return not element.xpath(_SKIP)


def _title(tree: HtmlElement) -> tuple[HtmlElement | None, str | None]:
    for h1 in tree.xpath("//h1"):
        if _in_page(h1):
            text = _clean(_text_of(h1))
            if text and len(text) <= 300:
                return h1, text
    return None, None


def _price(tree: HtmlElement, order: dict[HtmlElement, int], after: int) -> tuple[float | None, str | None, str | None]:
    """(price, currency, refusal) of the price element nearest after the title (``after``)."""
    candidates: list[tuple[int, float | None, str | None, str | None]] = []
    for element in tree.xpath(_PRICE_XPATH):
        names = f"{element.get('class', '')} {element.get('id', '')}"
        if _OLD_PRICE.search(names) or not _in_page(element):
            continue
        text = _text_of(element)
        if not text or len(text) > 60 or not re.search(r"\d", text):
            continue
        parsed = extract_price(element)
        price, refused = check_price(text)
        # A price the page shows comes with its currency; a bare number in a price box is often a
        # quantity, a rating or a per-unit figure.
        if parsed is None or parsed.amount is None or not parsed.currency or (price is None and not refused):
            continue
        currency = normalize_currency(parsed.currency) if parsed.currency else None
        position = order.get(element, 0)
        distance = position - after if position >= after else 10 * (after - position) + 10**6
        candidates.append((distance, price, currency, refused))
    if not candidates:
        return None, None, None
    _, price, currency, refused = min(candidates, key=lambda c: c[0])
    return price, currency, refused


def _buy_buttons(tree: HtmlElement) -> int:
    count = 0
    for element in tree.xpath("//button | //input[@type='submit' or @type='button'] | //a[@role='button'] | //*[@id or @class or @name]"):
        if element.tag not in ("button", "input", "a") and not _BUY_ATTR.search(f"{element.get('id', '')} {element.get('name', '')}"):
            continue
        if element.get("disabled") is not None or not _in_page(element):
            continue
        label = element.get("value", "") if element.tag == "input" else _text_of(element)
        attrs = f"{element.get('id', '')} {element.get('name', '')} {element.get('class', '')}"
        if (label and len(label) < 40 and _BUY.search(label)) or (element.tag in ("button", "input") and _BUY_ATTR.search(attrs)):
            count += 1
    return count


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
        names = " ".join(v for k, v in element.attrib.items() if k in ("class", "id", "itemprop") or k.startswith("data-"))
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


def _sku(tree: HtmlElement, text: str, title_at: int) -> str | None:
    """The identifier the page shows for its product: the first labelled one from the title on (else the
    first labelled one), else one in an element named for it."""
    labelled = labelled_ids(text)
    after = [value for position, value in labelled if position >= title_at]
    if after or labelled:
        return (after or [labelled[0][1]])[0]
    named = _named_ids(tree)
    return named[0] if named else None


def _brand(tree: HtmlElement) -> str | None:
    for element in tree.xpath(_BRAND_XPATH)[:5]:
        if _in_page(element) and element.tag not in ("body", "html", "main"):
            name = extract_brand_name(element, search_depth=2)
            name = _clean(name) if name else None
            if name and len(name) <= 60:
                return name
    return None


def _image(tree: HtmlElement, order: dict[HtmlElement, int], after: int, response: TextResponse) -> list[str]:
    """The first product-looking image after the title (not an icon, logo or sprite)."""
    for img in tree.xpath("//img[@src or @data-src]"):
        if order.get(img, 0) < after or not _in_page(img):
            continue
        src = img.get("data-src") or img.get("src") or ""
        names = f"{src} {img.get('class', '')} {img.get('id', '')}"
        if re.search(r"logo|icon|sprite|pixel|spacer|badge|flag|rating|star|payment|\.svg|\.gif", names, re.I):
            continue
        width = img.get("width", "")
        if width.isdigit() and int(width) < 150:
            continue
        return absolute_images([src], response)
    return []


def visible_product(tree: HtmlElement, response: TextResponse) -> dict[str, Any] | None:
    """The product fields the visible page shows, with ``is_product`` (see the module docstring)."""
    body = tree.find("body") if tree.find("body") is not None else tree
    order = {element: index for index, element in enumerate(body.iter())}
    heading, title = _title(body)
    after = order.get(heading, 0) if heading is not None else 0
    price, currency, refused = _price(body, order, after)
    text = _text_of(body)
    title_at = text.find(title) if title else -1
    sku = _sku(body, text, max(title_at, 0))
    buttons = _buy_buttons(body)
    if _OUT_OF_STOCK.search(text) and not buttons:
        availability = "OutOfStock"
    elif buttons or _IN_STOCK.search(text):
        availability = "InStock"
    else:
        availability = None
    looks_like_product = bool(title) and (price is not None or refused) and (1 <= buttons <= 3 or (buttons == 0 and sku is not None))
    return {
        "sku": sku,
        "title": title,
        "description": None,
        "category": None,
        "brand": _brand(body),
        "image_urls": _image(body, order, after, response),
        "price": price,
        "currency": currency,
        "availability": availability,
        "color": None,
        "material": None,
        "_rejected": {"price": refused} if refused else {},
        "is_product": looks_like_product,
        # The visible text, for the merge's "is the stated sku shown on the page?" (not a field).
        "_text": text,
    }
