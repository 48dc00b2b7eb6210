import base64
import html
import io
import re

import pytest
from PIL import Image

from pipeline.recommend.report import render_recommendations_html, thumbnail_data_uri

ATTRS = ["pattern", "fabric", "style", "shape"]


def jpeg(size=(400, 300), color="navy") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


def png(size=(50, 80)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", size, (255, 0, 0, 128)).save(buffer, "PNG")
    return buffer.getvalue()


IMAGES = {
    "users/u/a.jpg": jpeg(),
    "users/u/b.png": png(),
    "images/full/1.jpg": jpeg(color="red"),
    "images/full/2.jpg": jpeg((120, 900)),
    "images/full/3.jpg": jpeg(color="green"),
    "images/full/garbage.jpg": b"\xff\xd8 definitely not a jpeg",
}


def loader(key: str) -> bytes:
    try:
        return IMAGES[key]
    except KeyError:
        raise FileNotFoundError(key) from None


def attrs(pattern, fabric, style, shape, prob=0.8):
    row = {}
    for name, value in zip(ATTRS, (pattern, fabric, style, shape)):
        row[name], row[f"{name}_prob"] = value, prob
    return row


PROFILE = [
    {"image_key": "users/u/a.jpg", **attrs("striped", "cotton", "casual", "full-sleeve")},
    {"image_key": "users/u/b.png", **attrs("floral", "silk", "party", "sleeveless")},
]


def rec(rank, title, image_key, matched="pattern", url="https://shop.test/p/1"):
    return {
        "rank": rank,
        "item_id": f"id{rank}",
        "title": title,
        "price": 19.5,
        "currency": "EUR",
        "retailer": "demo-store",
        "product_url": url,
        "image_key": image_key,
        "score": 5,
        "best_row_matches": 3,
        "matched_attributes": matched,
        **attrs("striped", "wool", "casual", "half-sleeve", 0.7),
    }


RECS = [
    rec(1, 'Striped <script>alert("x")</script> tee & more', "images/full/1.jpg", "pattern,style"),
    rec(2, "Tall coat", "images/full/2.jpg"),
    rec(3, "O'Neil jumper", "images/full/3.jpg"),
]


def test_every_title_is_escaped_and_every_image_embedded():
    page = render_recommendations_html("ann", PROFILE, RECS, loader, ATTRS)
    assert page.startswith("<!DOCTYPE html>")
    for row in RECS:
        assert html.escape(row["title"]) in page
    assert "<script>" not in page
    assert page.count("<img ") == len(PROFILE) + len(RECS)
    assert 'class="placeholder"' not in page
    assert "EUR" in page and "19.50" in page and 'href="https://shop.test/p/1"' in page


def test_page_is_standalone():
    page = render_recommendations_html("ann", PROFILE, RECS, loader, ATTRS)
    assert "<link" not in page and "<script" not in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 5 and all(s.startswith("data:image/jpeg;base64,") for s in sources)


def test_thumbnails_are_small_jpegs():
    for data in (jpeg((400, 300)), jpeg((120, 900)), png()):
        uri = thumbnail_data_uri(data)
        image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert image.format == "JPEG" and max(image.size) <= 160
    assert Image.open(io.BytesIO(base64.b64decode(thumbnail_data_uri(jpeg((400, 300))).split(",")[1]))).size == (
        160,
        120,
    )


def test_broken_or_missing_images_become_placeholders():
    recs = [
        rec(1, "Missing", "images/full/nope.jpg"),
        rec(2, "Garbage", "images/full/garbage.jpg"),
        rec(3, "No key", None),
        rec(4, "Fine", "images/full/3.jpg"),
    ]
    page = render_recommendations_html("ann", PROFILE, recs, loader, ATTRS)
    assert page.count('class="placeholder"') == 3
    assert page.count("<img ") == len(PROFILE) + 1
    for title in ("Missing", "Garbage", "No key", "Fine"):
        assert title in page


def test_matched_attributes_are_highlighted():
    page = render_recommendations_html("ann", [], [RECS[0]], loader, ATTRS)
    assert '<li class="match">pattern: striped (0.70)</li>' in page
    assert '<li class="match">style: casual (0.70)</li>' in page
    assert "<li>fabric: wool (0.70)</li>" in page and "<li>shape: half-sleeve (0.70)</li>" in page


def test_profile_cards_show_predicted_attributes():
    page = render_recommendations_html("ann", PROFILE, [], loader, ATTRS)
    assert "<li>pattern: floral (0.80)</li>" in page and "b.png" in page
    assert "No recommendations" in page


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,x", None, 'http://x.test/"onclick="y'])
def test_only_http_links_and_quoted(url):
    page = render_recommendations_html("ann", [], [rec(1, "T", "images/full/1.jpg", url=url)], loader, ATTRS)
    assert "javascript:" not in page and "data:text/html" not in page
    assert '"onclick="' not in page
    if url and url.startswith("http"):
        assert 'href="http://x.test/&quot;onclick=&quot;y"' in page


def test_user_id_is_escaped():
    page = render_recommendations_html("<ann>", [], [], loader, ATTRS)
    assert "&lt;ann&gt;" in page and "<ann>" not in page


def test_scores_components_and_the_closest_profile_photo_are_shown():
    row = {
        **rec(1, "Tee", "images/full/1.jpg"),
        "score": 1.23456,
        "score_kind": "hybrid",
        "mmr_score": 0.9,
        "score_matches": 6,
        "best_row_matches": 3,
        "score_weighted": 0.4321,
        "score_embedding": 0.87654,
        "nearest_profile_image": "users/u/<b>.jpg",
        "category": "t-shirt",
    }
    page = render_recommendations_html("ann", PROFILE, [row], loader, ATTRS)
    assert "hybrid 1.235 &middot; MMR 0.900" in page
    assert "matches 6 (best photo 3/4) &middot; weighted 0.432 &middot; embedding 0.877</div>" in page
    assert "closest to your photo &lt;b&gt;.jpg" in page
    assert "demo-store</a> &middot; t-shirt" in page


def test_missing_components_are_left_out():
    row = {**rec(1, "Tee", "images/full/1.jpg"), "score_kind": "matches", "score_weighted": None}
    page = render_recommendations_html("ann", [], [row], loader, ATTRS)
    assert "matches 5 (best photo 3/4)" in page and "weighted" not in page and "closest to" not in page


def test_the_run_context_is_in_the_header_and_escaped():
    context = {
        "run_date": "2026-11-28",
        "score_kind": "weighted",
        "mmr_lambda": 0.7,
        "n_items_scored": 1200,
        "n_excluded_shown": 4,
        "filters": {"retailers": ["<shop>"], "categories": [], "price_min": 10, "price_max": None},
    }
    page = render_recommendations_html("ann", PROFILE, RECS, loader, ATTRS, context=context)
    header = page[page.index("<header>") : page.index("</header>")]
    assert "date 2026-11-28; score weighted; MMR lambda 0.70" in header
    assert "filters: retailers=[&#x27;&lt;shop&gt;&#x27;], price_min=10; 1200 items scored; 4 shown before" in header
    assert "<shop>" not in page
    no_filters = render_recommendations_html("ann", PROFILE, RECS, loader, ATTRS, context={"filters": {}})
    assert "filters: none" in no_filters


def test_thumbnails_are_upright_and_bombs_are_refused_unread():
    """Review thumbnails decode through pipeline.images: EXIF orientation applied, pixel limit first."""
    import struct
    import zlib

    from pipeline.images import DECOMPRESSION_BOMB, UndecodableImage

    portrait = Image.new("RGB", (100, 200), "navy")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, turned upright by the viewer
    buffer = io.BytesIO()
    portrait.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", exif=exif.tobytes())
    thumbnail = Image.open(io.BytesIO(base64.b64decode(thumbnail_data_uri(buffer.getvalue()).split(",")[1])))
    assert thumbnail.size == (80, 160)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 12_000, 12_000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(UndecodableImage) as caught:
        thumbnail_data_uri(bomb)
    assert caught.value.reason == DECOMPRESSION_BOMB
