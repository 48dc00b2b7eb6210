"""The recommendations page: one standalone HTML file per user and run.

The page carries everything it shows (inline CSS, images as base64 JPEG thumbnails), so it opens the
same from an S3 console download, a browser on the store folder, or an Airflow log link. Every piece
of text comes from crawled shops or users and is escaped; an image that cannot be read becomes a
placeholder instead of failing the report.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from pipeline.images import open_image, rules_from_settings

THUMBNAIL_PX = 160
_JPEG_QUALITY = 80

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f6f4;color:#222}
header{background:#222;color:#fff;padding:16px 24px}
header h1{margin:0;font-size:20px;font-weight:600}
header p{margin:4px 0 0;font-size:13px;color:#ccc}
main{padding:16px 24px}
h2{font-size:16px;margin:20px 0 10px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px;font-size:13px}
.card img,.placeholder{display:block;width:160px;height:160px;object-fit:contain;margin:0 auto 8px;background:#eee}
.placeholder{display:flex;align-items:center;justify-content:center;color:#888;font-size:12px}
.rank{font-weight:700;color:#a33}
.title{font-weight:600;margin:4px 0}
.meta{color:#555;margin:2px 0}
ul.attrs{list-style:none;padding:0;margin:6px 0 0}
ul.attrs li{padding:1px 4px;border-radius:3px}
ul.attrs li.match{background:#fde9a8;font-weight:600}
.empty{color:#777}
"""


def thumbnail_data_uri(data: bytes, size: int = THUMBNAIL_PX, max_pixels: int | None = None) -> str:
    """A ``data:image/jpeg;base64,...`` URI of ``data`` shrunk to fit ``size`` px, decoded by the shared
    decoder (upright, at most ``max_pixels``, default settings ``curation.max_image_pixels``; JPEG
    draft at twice the size); raises ``UndecodableImage``."""
    if max_pixels is None:
        max_pixels = rules_from_settings().max_pixels
    rgb = open_image(data, max_pixels=max_pixels, target_size=size * 2)
    rgb.thumbnail((size, size))
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=_JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_html(key: str | None, image_loader: Callable[[str], bytes], alt: str, max_pixels: int) -> str:
    """An ``<img>`` with the embedded thumbnail, or a placeholder when the image cannot be loaded.

    Any failure is caught on purpose: a missing object, a truncated upload or a non-image must not
    lose the rest of the page.
    """
    if key:
        try:
            uri = thumbnail_data_uri(image_loader(key), max_pixels=max_pixels)
        except Exception:  # noqa: BLE001 - see docstring
            pass
        else:
            return f'<img src="{uri}" alt="{html.escape(alt)}" width="{THUMBNAIL_PX}">'
    return f'<div class="placeholder" title="{html.escape(key or "")}">image unavailable</div>'


def _safe_link(url: Any) -> str | None:
    """``url`` when it is an http(s) URL (never ``javascript:`` and the like), else None."""
    if not isinstance(url, str):
        return None
    return url if urlsplit(url).scheme in ("http", "https") else None


def _format_price(price: Any, currency: Any) -> str:
    if price is None:
        return ""
    try:
        amount = f"{float(price):.2f}"
    except (TypeError, ValueError):
        amount = str(price)
    return f"{amount} {currency}" if currency else amount


def _attribute_list(row: Mapping[str, Any], attributes: Sequence[str], matched: set[str]) -> str:
    items = []
    for attribute in attributes:
        value = row.get(attribute)
        prob = row.get(f"{attribute}_prob")
        text = f"{attribute}: {value if value is not None else '-'}"
        if isinstance(prob, (int, float)):
            text += f" ({float(prob):.2f})"
        css = ' class="match"' if attribute in matched else ""
        items.append(f"<li{css}>{html.escape(text)}</li>")
    return f'<ul class="attrs">{"".join(items)}</ul>'


def _profile_card(
    row: Mapping[str, Any], image_loader: Callable[[str], bytes], attributes: Sequence[str], max_pixels: int
) -> str:
    key = row.get("image_key")
    name = str(key).rsplit("/", 1)[-1] if key else ""
    return (
        '<div class="card">'
        + _image_html(key, image_loader, name, max_pixels)
        + f'<div class="meta">{html.escape(name)}</div>'
        + _attribute_list(row, attributes, set())
        + "</div>"
    )


def _number(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, bool):
        return "-"
    if isinstance(value, int):
        return str(value)
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def _score_lines(row: Mapping[str, Any], attributes: Sequence[str]) -> str:
    """The ranking score with its kind (and MMR value), every component the row has, and the profile
    photo the item is closest to."""
    kind = row.get("score_kind")
    head = [f"{kind or 'score'} {_number(row.get('score'))}"]
    if row.get("mmr_score") is not None:
        head.append(f"MMR {_number(row.get('mmr_score'))}")
    parts = []
    matches = row.get("score_matches", row.get("score") if kind in (None, "matches") else None)
    if matches is not None:
        parts.append(
            f"matches {_number(matches)} (best photo {_number(row.get('best_row_matches'))}/{len(attributes)})"
        )
    for name, label in (("score_weighted", "weighted"), ("score_embedding", "embedding")):
        if row.get(name) is not None:
            parts.append(f"{label} {_number(row.get(name))}")
    lines = [f'<div class="meta score">{" &middot; ".join(html.escape(h) for h in head)}</div>']
    if parts:
        lines.append(f'<div class="meta">{" &middot; ".join(html.escape(p) for p in parts)}</div>')
    nearest = row.get("nearest_profile_image")
    if nearest:
        lines.append(f'<div class="meta">closest to your photo {html.escape(str(nearest).rsplit("/", 1)[-1])}</div>')
    return "".join(lines)


def _recommendation_card(
    row: Mapping[str, Any], image_loader: Callable[[str], bytes], attributes: Sequence[str], max_pixels: int
) -> str:
    title = str(row.get("title") or row.get("item_id") or "")
    matched = {a for a in str(row.get("matched_attributes") or "").split(",") if a}
    link = _safe_link(row.get("product_url"))
    retailer = html.escape(str(row.get("retailer") or "shop"))
    retailer_html = (
        f'<a href="{html.escape(link, quote=True)}" rel="noopener noreferrer">{retailer}</a>' if link else retailer
    )
    category = row.get("category")
    return (
        '<div class="card">'
        + _image_html(row.get("image_key"), image_loader, title, max_pixels)
        + f'<div class="rank">#{html.escape(str(row.get("rank", "")))}</div>'
        + f'<div class="title">{html.escape(title)}</div>'
        + f'<div class="meta">{html.escape(_format_price(row.get("price"), row.get("currency")))}</div>'
        + f'<div class="meta">{retailer_html}'
        + (f" &middot; {html.escape(str(category))}" if category else "")
        + "</div>"
        + _score_lines(row, attributes)
        + _attribute_list(row, attributes, matched)
        + "</div>"
    )


def _context_line(context: Mapping[str, Any] | None) -> str:
    """The run's settings for the page header: date, score, MMR lambda, filters, exclusions."""
    if not context:
        return ""
    parts = []
    if context.get("run_date"):
        parts.append(f"date {context['run_date']}")
    if context.get("score_kind"):
        parts.append(f"score {context['score_kind']}")
    if context.get("mmr_lambda") is not None:
        parts.append(f"MMR lambda {_number(context['mmr_lambda'], 2)}")
    filters = context.get("filters") or {}
    shown = [f"{name}={value}" for name, value in filters.items() if value not in (None, [], ())]
    parts.append("filters: " + (", ".join(shown) if shown else "none"))
    if context.get("n_items_scored") is not None:
        parts.append(f"{context['n_items_scored']} items scored")
    if context.get("n_excluded_shown"):
        parts.append(f"{context['n_excluded_shown']} shown before and left out")
    return f"<p>{html.escape('; '.join(str(p) for p in parts))}</p>"


def render_recommendations_html(
    user_id: str,
    profile_rows: Sequence[Mapping[str, Any]],
    recommendations: Sequence[Mapping[str, Any]],
    image_loader: Callable[[str], bytes],
    attributes: Sequence[str],
    context: Mapping[str, Any] | None = None,
    max_pixels: int | None = None,
) -> str:
    """The standalone recommendations page for ``user_id``.

    ``profile_rows`` are rows of the style profile (``image_key`` and per attribute ``<attr>``,
    ``<attr>_prob``); ``recommendations`` are ranked rows (``rank``, ``title``, ``price``,
    ``currency``, ``retailer``, ``category``, ``product_url``, ``image_key``, ``score``, ``score_kind``,
    the score components (``score_matches``, ``best_row_matches``, ``score_weighted``,
    ``score_embedding``, ``mmr_score``), ``matched_attributes``,
    ``nearest_profile_image`` and the attribute columns; absent ones are left out). ``image_loader``
    maps an image key to its bytes. ``context``: the run (``run_date``, ``score_kind``, ``mmr_lambda``,
    ``filters``, ``n_items_scored``, ``n_excluded_shown``) for the header. ``max_pixels``: the images'
    pixel limit (default: settings ``curation.max_image_pixels``).
    """
    if max_pixels is None:
        max_pixels = rules_from_settings().max_pixels
    user = html.escape(user_id)
    profile_html = "".join(_profile_card(r, image_loader, attributes, max_pixels) for r in profile_rows)
    recs_html = "".join(_recommendation_card(r, image_loader, attributes, max_pixels) for r in recommendations)
    if not recs_html:
        recs_html = '<p class="empty">No recommendations: no repository item passed the filters and exclusions.</p>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>FashionNet recommendations for {user}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<header><h1>Recommendations for {user}</h1>"
        f"<p>{len(profile_rows)} profile image(s), {len(recommendations)} recommendation(s); "
        "highlighted attributes match your photos.</p>"
        f"{_context_line(context)}</header><main>"
        f'<section><h2>Your style profile</h2><div class="grid">{profile_html}</div></section>'
        f'<section><h2>Recommended for you</h2><div class="grid">{recs_html}</div></section>'
        "</main></body></html>\n"
    )
