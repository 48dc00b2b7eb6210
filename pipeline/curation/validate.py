"""Image validation: decide whether a crawled image is usable, and say why not when it is not.

A rejection is data, not an exception: :func:`validate_image` never raises for a bad image, it returns
an :class:`ImageCheck` with a ``reason`` (one of :data:`REASONS`) and a human ``detail``.

Checks run cheapest first: the header (format, declared size) is read before any pixel is decoded, so a
decompression bomb or a 10x10 thumbnail is refused without decoding it. Decoding and the blank check are
the shared decoder's (:mod:`pipeline.images`), so curation sees the pixels training, inference and the
users' photos see: upright, 16-bit scaled, transparency on white.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

from PIL import Image

from pipeline.images import (
    BLANK,
    DECOMPRESSION_BOMB,
    NOT_AN_IMAGE,
    UNDECODABLE,
    UndecodableImage,
    check_not_blank,
    declared_size,
    open_image,
    rules_from_settings,
)
from pipeline.settings import CurationSettings

MISSING = "missing"
TOO_SMALL = "too_small"
EXTREME_ASPECT_RATIO = "extreme_aspect_ratio"
REASONS = (MISSING, NOT_AN_IMAGE, UNDECODABLE, DECOMPRESSION_BOMB, TOO_SMALL, EXTREME_ASPECT_RATIO, BLANK)


@dataclass(frozen=True)
class ImageCheck:
    """The verdict on one image: ``ok`` with its size and format, or a rejection ``reason``.

    ``width`` and ``height`` are the upright image's (EXIF orientation applied) once it decoded, the
    declared ones before."""

    ok: bool
    reason: str | None = None
    detail: str = ""
    width: int | None = None
    height: int | None = None
    format: str | None = None
    # The decoded RGB image (pipeline.images.open_image) when ``ok``, so that callers can hash it
    # without decoding twice.
    image: Image.Image | None = field(default=None, compare=False, repr=False)


class _Size(TypedDict):
    width: int
    height: int
    format: str | None


def _reject(reason: str, detail: str, **size: Any) -> ImageCheck:
    return ImageCheck(ok=False, reason=reason, detail=detail, **size)


def validate_image(
    data: bytes | None,
    min_side_px: int,
    max_aspect_ratio: float,
    *,
    max_pixels: int | None = None,
    blank_std: float | None = None,
) -> ImageCheck:
    """Check one image's bytes (None = the object is absent from the store).

    ``max_pixels`` and ``blank_std`` default to ``curation.max_image_pixels`` and
    ``curation.blank_std_threshold``. The aspect ratio is checked before the minimum side, so a 1000x20
    strip is reported as an ``extreme_aspect_ratio`` rather than as merely ``too_small``.
    """
    if max_pixels is None or blank_std is None:
        rules = rules_from_settings()
        max_pixels = rules.max_pixels if max_pixels is None else max_pixels
        blank_std = rules.blank_std if blank_std is None else blank_std
    if data is None:
        return _reject(MISSING, "no image object in the store")
    try:
        width, height, image_format = declared_size(data, max_pixels=max_pixels)
    except UndecodableImage as exc:
        return _reject(exc.reason, exc.detail)
    size: _Size = {"width": width, "height": height, "format": image_format}
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect_ratio:
        return _reject(
            EXTREME_ASPECT_RATIO, f"{width}x{height} has aspect ratio {aspect:.2f} > {max_aspect_ratio}", **size
        )
    if min(width, height) < min_side_px:
        return _reject(TOO_SMALL, f"{width}x{height} has a side under {min_side_px}px", **size)
    try:
        image = open_image(data, max_pixels=max_pixels)
        size.update({"width": image.width, "height": image.height})
        check_not_blank(image, blank_std)
    except UndecodableImage as exc:
        return _reject(exc.reason, exc.detail, **size)
    return ImageCheck(ok=True, image=image, **size)


def validate_with_settings(data: bytes | None, curation: CurationSettings) -> ImageCheck:
    """:func:`validate_image` with the thresholds of ``settings.curation``."""
    rules = rules_from_settings(curation)
    return validate_image(
        data,
        min_side_px=curation.min_side_px,
        max_aspect_ratio=float(curation.max_aspect_ratio),
        max_pixels=rules.max_pixels,
        blank_std=rules.blank_std,
    )
