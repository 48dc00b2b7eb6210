import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.curation.validate import REASONS, validate_image, validate_with_settings
from pipeline.settings import get_settings

MIN_SIDE, MAX_ASPECT = 32, 4.0


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def striped(width: int = 128, height: int = 128) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for x in range(0, width, 16):
        draw.rectangle([x, 0, x + 8, height], fill="navy")
    return image


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (a decompression bomb's calling card)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def check(data):
    return validate_image(data, MIN_SIDE, MAX_ASPECT)


def test_a_good_image_passes_with_size_and_format():
    result = check(jpeg(striped(120, 80)))
    assert result.ok and result.reason is None
    assert (result.width, result.height, result.format) == (120, 80, "JPEG")
    assert result.image is not None and result.image.size == (120, 80)


def test_a_png_with_real_content_passes():
    buffer = io.BytesIO()
    striped(64, 64).save(buffer, "PNG")
    assert check(buffer.getvalue()).ok


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("absent object", None, "missing"),
        ("random bytes", np.random.default_rng(0).bytes(4096), "not_an_image"),
        ("text file", b"<html><body>404 Not Found</body></html>", "not_an_image"),
        ("empty object", b"", "not_an_image"),
        ("truncated jpeg", jpeg(striped(256, 256))[:1500], "undecodable"),
        ("10x10 image", jpeg(striped(10, 10)), "too_small"),
        ("1000x20 strip", jpeg(striped(1000, 20)), "extreme_aspect_ratio"),
        ("blank image", jpeg(Image.new("RGB", (200, 200), (240, 240, 240))), "blank"),
        ("bomb over our limit", png_declaring(10_000, 10_000), "decompression_bomb"),
        ("bomb over PIL's own limit", png_declaring(60_000, 60_000), "decompression_bomb"),
    ],
)
def test_every_rejection_reason(name, data, reason):
    result = check(data)
    assert not result.ok, name
    assert result.reason == reason, (name, result)
    assert result.reason in REASONS and result.detail


def test_truncation_is_found_by_decoding_not_by_the_header():
    data = jpeg(striped(256, 256))[:1500]
    header = Image.open(io.BytesIO(data))
    assert header.size == (256, 256)  # the header alone looks fine
    result = check(data)
    assert result.reason == "undecodable" and (result.width, result.height) == (256, 256)


def test_a_nearly_flat_but_textured_image_is_not_blank():
    image = Image.new("RGB", (100, 100), "white")
    ImageDraw.Draw(image).rectangle([30, 30, 70, 70], fill="black")
    assert check(jpeg(image)).ok


def test_thresholds_come_from_settings():
    curation = get_settings().curation
    assert validate_with_settings(jpeg(striped(curation.min_side_px - 1, 40)), curation).reason == "too_small"
    assert validate_with_settings(jpeg(striped(curation.min_side_px, 40)), curation).ok
