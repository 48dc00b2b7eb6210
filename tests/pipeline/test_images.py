"""The one image decoder (pipeline.images): orientation, pixel limit, draft mode, 16-bit scaling, alpha,
CMYK, palette, blank images, the network fits; and the users' photo path that uses it."""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.hashing import hamming, image_hashes
from pipeline.images import (
    BLANK,
    DECOMPRESSION_BOMB,
    NOT_AN_IMAGE,
    UNDECODABLE,
    ImageRules,
    UndecodableImage,
    channel_std,
    check_not_blank,
    declared_size,
    decode_image,
    open_image,
    rules_from_settings,
    to_network_array,
)

LIMIT = 40_000_000
ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def upright_photo(width: int = 60, height: int = 120) -> Image.Image:
    """Portrait: red top half, blue bottom half, a black mark top-left (so every turn is visible)."""
    image = Image.new("RGB", (width, height), (0, 0, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, width, height // 2 - 1], fill=(255, 0, 0))
    draw.rectangle([0, 0, width // 4, height // 8], fill=(0, 0, 0))
    return image


def as_phone_jpeg(upright: Image.Image, orientation: int = 6) -> bytes:
    """The JPEG a phone writes: pixels as the sensor saw them, turned back by the EXIF orientation tag.

    Tag 6 says "rotate 90 degrees clockwise to view", so the stored pixels are the upright ones turned
    90 degrees counter-clockwise."""
    stored = {
        6: upright.transpose(Image.Transpose.ROTATE_90),
        8: upright.transpose(Image.Transpose.ROTATE_270),
        3: upright.transpose(Image.Transpose.ROTATE_180),
    }[orientation]
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares ``width`` x ``height`` RGB pixels (none of them allocated here)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def grey16_png(width: int = 64, height: int = 48) -> tuple[bytes, np.ndarray]:
    """A 16-bit greyscale PNG ('I;16') with a diagonal gradient over the whole 0-65535 range."""
    y, x = np.mgrid[0:height, 0:width]
    values = ((x + y) / (width + height - 2) * 65535).astype(np.uint16)
    values[: height // 3, : width // 3] = 1000  # a dark block, so the image has a shape to hash
    return encode(Image.fromarray(values), "PNG"), values


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())


# -- orientation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_the_exif_orientation_is_applied(orientation):
    upright = upright_photo()
    decoded = open_image(as_phone_jpeg(upright, orientation), max_pixels=LIMIT)
    assert decoded.mode == "RGB" and decoded.size == upright.size
    assert mean_difference(decoded, upright) < 3  # JPEG noise only
    # Pillow alone hands over the stored (sideways) pixels.
    with Image.open(io.BytesIO(as_phone_jpeg(upright, orientation))) as raw:
        assert raw.size != upright.size or mean_difference(raw.convert("RGB"), upright) > 50


def test_a_broken_exif_block_keeps_the_pixels():
    exif = Image.Exif()
    exif[ORIENTATION] = 99  # no such orientation
    decoded = open_image(encode(upright_photo(), "JPEG", exif=exif.tobytes()), max_pixels=LIMIT)
    assert decoded.size == (60, 120)


# -- the pixel limit and draft mode ---------------------------------------------------------------
def test_a_png_declaring_12000x12000_is_refused_from_its_header():
    data = png_declaring(12_000, 12_000)
    assert len(data) < 200
    with pytest.raises(UndecodableImage) as caught:
        open_image(data, max_pixels=LIMIT)
    # decompression_bomb, not undecodable: refused before decoding (its IDAT could not fill 144 Mpx).
    assert caught.value.reason == DECOMPRESSION_BOMB and "12000x12000" in caught.value.detail
    with pytest.raises(UndecodableImage, match=DECOMPRESSION_BOMB):
        declared_size(data, max_pixels=LIMIT)
    # Over Pillow's own limit too: still our reason, not Pillow's exception.
    with pytest.raises(UndecodableImage) as caught:
        open_image(png_declaring(60_000, 60_000), max_pixels=LIMIT)
    assert caught.value.reason == DECOMPRESSION_BOMB


def test_a_large_jpeg_is_decoded_at_reduced_scale_for_a_target_size():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (15, 20, 3), dtype=np.uint8)).resize((2000, 1500))
    data = encode(photo, "JPEG", quality=85)
    assert open_image(data, max_pixels=LIMIT).size == (2000, 1500)
    reduced = open_image(data, max_pixels=LIMIT, target_size=224)
    assert reduced.size == (500, 375)  # 1/4 scale: the smallest still >= 224 on both sides
    full = to_network_array(open_image(data, max_pixels=LIMIT), 224)
    assert np.abs(to_network_array(reduced, 224).astype(int) - full).mean() < 3


# -- modes ------------------------------------------------------------------------------------------
def test_a_16_bit_grey_png_is_scaled_not_clipped():
    data, values = grey16_png()
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.mode.startswith("I")
        clipped = np.asarray(raw.convert("RGB"))
    assert (clipped == 255).mean() > 0.9  # what Pillow's convert makes of it
    decoded = np.asarray(open_image(data, max_pixels=LIMIT))
    assert (decoded == 255).mean() < 0.05
    assert np.abs(decoded[..., 0].astype(int) - np.rint(values / 257)).max() <= 1
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 1] == decoded[..., 2]).all()


def test_a_16_bit_image_hashes_like_its_8_bit_version():
    data, values = grey16_png(128, 96)
    eight_bit = Image.fromarray(np.rint(values / 257).astype(np.uint8), "L")
    with Image.open(io.BytesIO(data)) as raw:
        clipped = image_hashes(raw.convert("RGB"))
    assert clipped.phash in (0, 2**64 - 1) or int(hamming(clipped.phash, image_hashes(eight_bit).phash)) > 10
    assert int(hamming(image_hashes(open_image(data, max_pixels=LIMIT)).phash, image_hashes(eight_bit).phash)) <= 2


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle([0, 0, 19, 39], fill=(255, 0, 0, 128))
    decoded = np.asarray(open_image(encode(rgba, "PNG"), max_pixels=LIMIT)).astype(int)
    assert (decoded[:, 30] == 255).all()  # fully transparent -> white, not black
    assert np.abs(decoded[:, 5] - [255, 127, 127]).max() <= 1  # half-transparent red over white
    grey_alpha = Image.new("LA", (40, 40), (0, 0))
    assert (np.asarray(open_image(encode(grey_alpha, "PNG"), max_pixels=LIMIT)) == 255).all()


def test_cmyk_and_palette_images_are_converted():
    cmyk = encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG", quality=95)  # red in CMYK
    decoded = np.asarray(open_image(cmyk, max_pixels=LIMIT)).astype(int)
    assert np.abs(decoded - [255, 0, 0]).max() <= 8
    palette = upright_photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert mean_difference(open_image(encode(palette, "PNG"), max_pixels=LIMIT), upright_photo()) < 1
    transparent = Image.new("P", (20, 20), 0)
    transparent.putpalette([0, 0, 0, 0, 255, 0])
    ImageDraw.Draw(transparent).rectangle([0, 0, 9, 19], fill=1)
    decoded = np.asarray(open_image(encode(transparent, "PNG", transparency=0), max_pixels=LIMIT))
    assert (decoded[:, 15] == 255).all() and (decoded[:, 2] == [0, 255, 0]).all()


# -- blank images -----------------------------------------------------------------------------------
@pytest.mark.parametrize("colour", [(255, 0, 0), (0, 0, 128), (240, 240, 240)])
def test_single_colour_images_are_blank_whatever_the_colour(colour):
    flat = open_image(encode(Image.new("RGB", (100, 100), colour), "JPEG", quality=90), max_pixels=LIMIT)
    if colour != (240, 240, 240):  # over all channels pooled, flat red/navy deviate by far more than 2
        assert float(np.asarray(flat, np.float32).std()) > 40
    with pytest.raises(UndecodableImage) as caught:
        check_not_blank(flat, 2.0)
    assert caught.value.reason == BLANK


def test_an_image_with_content_is_not_blank():
    image = Image.new("RGB", (100, 100), (0, 0, 128))
    ImageDraw.Draw(image).rectangle([30, 30, 70, 70], fill=(0, 0, 200))  # one channel varies
    assert check_not_blank(image, 2.0) == pytest.approx(channel_std(image)) and channel_std(image) > 20


# -- errors ------------------------------------------------------------------------------------------
def test_errors_carry_a_machine_readable_reason():
    cases = {
        b"": NOT_AN_IMAGE,
        b"<html>404</html>": NOT_AN_IMAGE,
        encode(upright_photo(256, 256), "JPEG")[:1500]: UNDECODABLE,
    }
    for data, reason in cases.items():
        with pytest.raises(UndecodableImage) as caught:
            open_image(data, max_pixels=LIMIT)
        assert caught.value.reason == reason and caught.value.detail
    named = UndecodableImage(BLANK, "flat").for_key("users/ann/a.jpg")
    assert isinstance(named, ValueError) and named.reason == BLANK and named.key == "users/ann/a.jpg"
    assert "users/ann/a.jpg" in str(named) and "blank" in str(named)


def test_the_limits_come_from_the_settings():
    rules = rules_from_settings()
    assert isinstance(rules, ImageRules) and rules.max_pixels > 10_000_000 and rules.blank_std > 0
    from pipeline.settings import CurationSettings, build_section, get_settings

    curation = dataclasses.replace(get_settings().curation, max_image_pixels=5, blank_std_threshold=1.5)
    assert rules_from_settings(curation) == ImageRules(5, 1.5)
    with pytest.raises(KeyError, match="max_image_pixels"):  # the typed section refuses it at load
        rules_from_settings(build_section(CurationSettings, {"blank_std_threshold": 1.5}, "curation"))


# -- network arrays ----------------------------------------------------------------------------------
def test_squash_keeps_the_whole_image_and_crop_keeps_the_aspect():
    wide = Image.new("RGB", (300, 100), (0, 255, 0))
    draw = ImageDraw.Draw(wide)
    draw.rectangle([0, 0, 99, 99], fill=(255, 0, 0))
    draw.rectangle([200, 0, 299, 99], fill=(0, 0, 255))
    squash = to_network_array(wide, 30)
    crop = to_network_array(wide, 30, fit="crop")
    assert squash.shape == crop.shape == (30, 30, 3) and squash.dtype == np.uint8
    assert (squash[15, 2] == [255, 0, 0]).all() and (squash[15, 27] == [0, 0, 255]).all()
    assert (crop[:, 1:-1] == [0, 255, 0]).all()  # the centre square of the wide image (its edges blend)
    assert (to_network_array(wide, 30, "squash") == squash).all()
    with pytest.raises(ValueError, match="fit"):
        to_network_array(wide, 30, fit="pad")
    data = encode(wide, "PNG")
    assert (decode_image(data, 30, fit="crop", max_pixels=LIMIT) == crop).all()


# -- users' own photos (pipeline.recommend.profile and exclusions) ------------------------------------------------------------
def test_a_rotated_user_photo_is_recognised_as_the_users_own_item(file_store):
    """The shop's upright photo is in the repository; the user uploads the phone's sideways-stored copy."""
    import pyarrow as pa

    from pipeline.curation.validate import validate_image
    from pipeline.hashing import content_sha256
    from pipeline.images import rules_from_settings
    from pipeline.recommend.exclusions import own_image_mask
    from pipeline.recommend.profile import _image_phashes

    rng = np.random.default_rng(3)
    cells = rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)
    upright = Image.fromarray(cells).resize((240, 480), Image.Resampling.NEAREST)
    shop = encode(upright, "JPEG", quality=90)
    curated = validate_image(shop, 32, 4.0)
    item_hashes = image_hashes(curated.image)
    phone = as_phone_jpeg(upright, 6)
    own, mirror = _image_phashes("users/ann/phone.jpg", phone, rules_from_settings())
    with Image.open(io.BytesIO(phone)) as raw:  # what the user path hashed before: the stored pixels
        sideways = image_hashes(raw.convert("RGB")).phash
    assert int(hamming(sideways, item_hashes.phash)) > 10
    assert int(hamming(own, item_hashes.phash)) <= 4
    repository = pa.table(
        {
            "phash": pa.array([item_hashes.phash, item_hashes.phash ^ (2**40 - 1)], pa.uint64()),
            "content_sha256": [content_sha256(shop), "other"],
        }
    )
    profile = pa.table(
        {
            "phash": pa.array([own], pa.uint64()),
            "phash_mirror": pa.array([mirror], pa.uint64()),
            "content_sha256": [content_sha256(phone)],
        }
    )
    assert own_image_mask(profile, repository, phash_max_distance=6).tolist() == [True, False]


@pytest.mark.parametrize(
    "data, reason",
    [
        (png_declaring(12_000, 12_000), DECOMPRESSION_BOMB),
        (encode(Image.new("RGB", (80, 80), (200, 0, 0)), "PNG"), BLANK),
        (b"GIF89a not really", NOT_AN_IMAGE),
    ],
)
def test_a_refused_user_photo_names_its_key_and_reason(file_store, data, reason):
    from pipeline.recommend.profile import build_profile

    class NeverCalled:
        def vectorize(self, images):
            raise AssertionError("a refused photo must not reach the networks")

    file_store.put_bytes("users/ann/photo.png", data)
    with pytest.raises(UndecodableImage) as caught:
        build_profile(file_store, "ann", ["users/ann/photo.png"], NeverCalled(), ["pattern"])
    assert caught.value.reason == reason and "users/ann/photo.png" in str(caught.value)
