"""Image validation: decide whether a crawled image is usable, and say why not when it is not.

A rejection is data, not an exception: :func:`validate_image` never raises for a bad image, it returns
an :class:`ImageCheck` with a ``reason`` (one of :data:`REASONS`) and a human ``detail``.

Checks run cheapest first: the header (format, declared size) is read before any pixel is decoded, so a
decompression bomb or a 10x10 thumbnail is refused without decoding it.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

MISSING = "missing"
NOT_AN_IMAGE = "not_an_image"
UNDECODABLE = "undecodable"
DECOMPRESSION_BOMB = "decompression_bomb"
TOO_SMALL = "too_small"
EXTREME_ASPECT_RATIO = "extreme_aspect_ratio"
BLANK = "blank"
REASONS = (MISSING, NOT_AN_IMAGE, UNDECODABLE, DECOMPRESSION_BOMB, TOO_SMALL, EXTREME_ASPECT_RATIO, BLANK)

# Used when config/settings.yaml has no ``curation.max_image_pixels`` / ``curation.blank_std_threshold``.
# 40 Mpx is far above any product photo (a 6000x6000 image is 36 Mpx) and a few hundred MB decoded.
DEFAULT_MAX_PIXELS = 40_000_000
# Standard deviation of 8-bit pixel values under which an image is "blank" (one flat colour, with JPEG
# noise of a unit or so on top).
DEFAULT_BLANK_STD = 2.0
# Blankness is measured on a thumbnail: cheap, and enough to tell flat from not flat.
_BLANK_THUMBNAIL_SIDE = 256


@dataclass(frozen=True)
class ImageCheck:
    """The verdict on one image: ``ok`` with its size and format, or a rejection ``reason``."""

    ok: bool
    reason: str | None = None
    detail: str = ""
    width: int | None = None
    height: int | None = None
    format: str | None = None
    # The decoded image when ``ok``, so that callers can hash it without decoding twice.
    image: Image.Image | None = field(default=None, compare=False, repr=False)


def _reject(reason: str, detail: str, **size: Any) -> ImageCheck:
    return ImageCheck(ok=False, reason=reason, detail=detail, **size)


def _open_header(data: bytes, max_pixels: int) -> Image.Image | ImageCheck:
    """Open the image lazily (header only), or the rejection that opening it earned."""
    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit and raises above twice that; both mean "bomb" here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return _reject(DECOMPRESSION_BOMB, str(exc))
    except UnidentifiedImageError:
        return _reject(NOT_AN_IMAGE, f"{len(data)} bytes that no image decoder recognises")
    except Exception as exc:  # noqa: BLE001 - a malformed header can raise almost anything
        return _reject(UNDECODABLE, f"header unreadable: {type(exc).__name__}: {exc}")
    width, height = image.size
    if width * height > max_pixels:
        return _reject(
            DECOMPRESSION_BOMB,
            f"declares {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
            width=width, height=height, format=image.format,
        )
    return image


def _decode(image: Image.Image) -> ImageCheck | None:
    """Decode every pixel (a header can be fine while the data is truncated); None when it decodes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError...
        return _reject(
            UNDECODABLE, f"{type(exc).__name__}: {exc}",
            width=image.width, height=image.height, format=image.format,
        )
    return None


def pixel_std(image: Image.Image) -> float:
    """Standard deviation of the 8-bit RGB values of a thumbnail of ``image``."""
    thumb = image.convert("RGB")
    thumb.thumbnail((_BLANK_THUMBNAIL_SIDE, _BLANK_THUMBNAIL_SIDE))
    return float(np.asarray(thumb, dtype=np.float32).std())


def validate_image(
    data: bytes | None,
    min_side_px: int,
    max_aspect_ratio: float,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    blank_std: float = DEFAULT_BLANK_STD,
) -> ImageCheck:
    """Check one image's bytes (None = the object is absent from the store).

    The aspect ratio is checked before the minimum side, so a 1000x20 strip is reported as an
    ``extreme_aspect_ratio`` rather than as merely ``too_small``.
    """
    if data is None:
        return _reject(MISSING, "no image object in the store")
    if not data:
        return _reject(NOT_AN_IMAGE, "empty object")
    opened = _open_header(data, max_pixels)
    if isinstance(opened, ImageCheck):
        return opened
    image = opened
    width, height = image.size
    size = {"width": width, "height": height, "format": image.format}
    if min(width, height) <= 0:
        return _reject(UNDECODABLE, f"declares an empty size {width}x{height}", **size)
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect_ratio:
        return _reject(
            EXTREME_ASPECT_RATIO, f"{width}x{height} has aspect ratio {aspect:.2f} > {max_aspect_ratio}", **size
        )
    if min(width, height) < min_side_px:
        return _reject(TOO_SMALL, f"{width}x{height} has a side under {min_side_px}px", **size)
    failure = _decode(image)
    if failure is not None:
        return failure
    std = pixel_std(image)
    if std < blank_std:
        return _reject(BLANK, f"pixel standard deviation {std:.2f} < {blank_std}", **size)
    return ImageCheck(ok=True, image=image, **size)


def validate_with_settings(data: bytes | None, curation: dict[str, Any]) -> ImageCheck:
    """:func:`validate_image` with the thresholds of ``settings.curation``."""
    return validate_image(
        data,
        min_side_px=int(curation["min_side_px"]),
        max_aspect_ratio=float(curation["max_aspect_ratio"]),
        max_pixels=int(curation.get("max_image_pixels", DEFAULT_MAX_PIXELS)),
        blank_std=float(curation.get("blank_std_threshold", DEFAULT_BLANK_STD)),
    )
