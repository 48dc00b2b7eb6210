"""The one image decoder: every path that turns image bytes into pixels goes through here.

Crawled images (``scrapers.pipelines``), curation (``pipeline.curation.validate``: hashes, thumbnails), training
and batch inference (``models.data.decode_image``), review thumbnails (``pipeline.recommend.report``) and users'
own photos (``pipeline.recommend.recommendations``) all call :func:`open_image`, so an image means the same pixels
everywhere. The rules, in order:

1. the *declared* pixel count (header only, nothing decoded yet) must not exceed ``max_pixels``
   (``curation.max_image_pixels``): a 12000x12000 PNG is refused before it costs a gigabyte;
2. with a ``target_size``, a JPEG is decoded in draft mode at the smallest 1/2, 1/4 or 1/8 scale that is
   still at least ``target_size`` on both sides (a 5184 px photo for a 224 px network decodes at 648 px);
3. the EXIF orientation is applied (a phone photo taken upright is upright here);
4. 16-bit and 32-bit grey images are *scaled* to 8 bits (Pillow's ``convert`` clips them: a 16-bit grey
   photo became 99% white); transparency is composited on white, the background of product photos;
   CMYK, palette, YCbCr and the rest are converted to RGB.

:func:`check_not_blank` rejects single-colour images, measured per channel (flat red has a large
deviation over all channels together, none within any one). Every refusal is an
:class:`UndecodableImage` with a short machine-readable ``reason`` (one of :data:`REASONS`) and a human
``detail``.

This module is the ground floor: it imports PIL, numpy and ``pipeline.settings`` (for the limits) only.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from pipeline.settings import CurationSettings

NOT_AN_IMAGE = "not_an_image"
UNDECODABLE = "undecodable"
DECOMPRESSION_BOMB = "decompression_bomb"
BLANK = "blank"
REASONS = (NOT_AN_IMAGE, UNDECODABLE, DECOMPRESSION_BOMB, BLANK)

Fit = Literal["squash", "crop"]
FITS: tuple[str, ...] = ("squash", "crop")

# Blankness is measured on a thumbnail: cheap, and enough to tell flat from not flat.
_BLANK_THUMBNAIL_SIDE = 256
_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_NETWORK_RESAMPLE = Image.Resampling.BILINEAR
_ORIENTATION = 0x0112  # the EXIF orientation tag


class UndecodableImage(ValueError):
    """Image bytes that cannot be used, with a machine-readable ``reason`` and a human ``detail``.

    ``key`` (the store key, or a position) is set by callers that know which image it was, through
    :meth:`for_key`, so that an error message always names the image.
    """

    def __init__(self, reason: str, detail: str = "", *, key: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.key = key
        message = f"{reason}: {detail}" if detail else reason
        if key is not None:
            verdict = "is rejected as blank" if reason == BLANK else "cannot be decoded"
            message = f"image {key!r} {verdict} ({message})"
        super().__init__(message)

    def for_key(self, key: str) -> UndecodableImage:
        """The same error naming ``key`` (raise it ``from`` this one)."""
        return UndecodableImage(self.reason, self.detail, key=key)


@dataclass(frozen=True)
class ImageRules:
    """The limits every path applies (``curation.max_image_pixels``, ``curation.blank_std_threshold``)."""

    max_pixels: int
    blank_std: float


def rules_from_settings(curation: CurationSettings | None = None) -> ImageRules:
    """The :class:`ImageRules` of ``settings.curation`` (the configured one when not given)."""
    if curation is None:
        from pipeline.settings import get_settings

        curation = get_settings().curation
    return ImageRules(max_pixels=int(curation.max_image_pixels), blank_std=float(curation.blank_std_threshold))


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    """The lazily opened image (header read, no pixel decoded); refuses bombs by their declared size."""
    if not data:
        raise UndecodableImage(NOT_AN_IMAGE, "empty object")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit; ours (max_pixels) is checked below instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise UndecodableImage(DECOMPRESSION_BOMB, str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise UndecodableImage(NOT_AN_IMAGE, f"{len(data)} bytes that no image decoder recognises") from exc
    except Exception as exc:  # noqa: BLE001 - a malformed header can raise almost anything
        raise UndecodableImage(UNDECODABLE, f"header unreadable: {type(exc).__name__}: {exc}") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        image.close()
        raise UndecodableImage(UNDECODABLE, f"declares an empty size {width}x{height}")
    if width * height > max_pixels:
        image.close()
        raise UndecodableImage(
            DECOMPRESSION_BOMB, f"declares {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    return image


def declared_size(data: bytes, *, max_pixels: int) -> tuple[int, int, str | None]:
    """(width, height, format) from the header alone, as stored (before EXIF orientation); raises
    :class:`UndecodableImage` for what :func:`open_image` would refuse before decoding."""
    with _open_header(data, max_pixels) as image:
        return image.width, image.height, image.format


def _scaled_to_8_bits(image: Image.Image) -> Image.Image:
    """A 16-bit ("I;16*"), 32-bit integer ("I") or float ("F") grey image as 8-bit "L", scaled.

    Integer images are taken as 16-bit samples (0-65535: PNG and TIFF), float ones as 0-1 when they fit
    in it, else as 16-bit samples too. Pillow's own ``convert("L")`` clips at 255 instead.
    """
    pixels = np.asarray(image)
    if image.mode == "F":
        finite = pixels[np.isfinite(pixels)]
        full_scale = 1.0 if finite.size == 0 or float(finite.max()) <= 1.0 else 65535.0
        pixels = np.nan_to_num(pixels, nan=0.0, posinf=full_scale, neginf=0.0)
    else:
        full_scale = 65535.0
    scaled = np.clip(pixels.astype(np.float64), 0.0, full_scale) * (255.0 / full_scale)
    return Image.fromarray(np.rint(scaled).astype(np.uint8), "L")


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels of a decoded image of any mode (see the module docstring, rule 4)."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return _scaled_to_8_bits(image).convert("RGB")
    has_alpha = image.mode in _ALPHA_MODES or (image.mode in ("P", "L", "RGB", "1") and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _oriented(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation tag says; unchanged when the EXIF block is unreadable
    (the pixels are still good, only the tag is not)."""
    try:
        if image.getexif().get(_ORIENTATION, 1) in (None, 1):
            return image  # upright already: no copy of the pixels
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed EXIF raises struct, value, key or type errors
        return image


def open_image(data: bytes, *, max_pixels: int, target_size: int | None = None) -> Image.Image:
    """Image bytes -> a decoded RGB image, upright, 8 bits per channel, on white where it was transparent.

    ``target_size`` (the side the caller will shrink to, e.g. the network's input) lets a JPEG decode
    at a reduced scale; the result is then at least ``target_size`` on both sides (or the original
    size if smaller). Raises :class:`UndecodableImage` (reason ``not_an_image``, ``decompression_bomb``
    or ``undecodable``).
    """
    image = _open_header(data, max_pixels)
    try:
        if target_size is not None and image.format == "JPEG":
            image.draft("RGB", (target_size, target_size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
        rgb = _to_rgb(_oriented(image))
        rgb.load()
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError...
        image.close()
        raise UndecodableImage(
            UNDECODABLE, f"{image.format or 'image'} {image.width}x{image.height}: {type(exc).__name__}: {exc}"
        ) from exc
    if rgb is not image:
        image.close()  # (closing the returned image itself would free its pixels)
    return rgb


def channel_std(image: Image.Image) -> float:
    """The largest per-channel standard deviation (8-bit scale) of a thumbnail of ``image``.

    Per channel: a flat red image (255, 0, 0) deviates by 120 over all channels pooled, by 0 within each.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    scale = min(1.0, _BLANK_THUMBNAIL_SIDE / max(rgb.size))
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    # Image.thumbnail's resampling, without its copy of the full-size image.
    thumb = rgb if size == rgb.size else rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    pixels = np.asarray(thumb, dtype=np.float32).reshape(-1, 3)
    return float(pixels.std(axis=0).max())


def check_not_blank(image: Image.Image, blank_std: float) -> float:
    """The image's :func:`channel_std`; raises ``UndecodableImage(reason="blank")`` under ``blank_std``."""
    std = channel_std(image)
    if std < blank_std:
        raise UndecodableImage(BLANK, f"largest per-channel standard deviation {std:.2f} < {blank_std}")
    return std


def to_network_array(image: Image.Image, size: int, fit: str = "squash") -> np.ndarray:
    """An RGB image -> uint8 array (size, size, 3) for a network.

    ``fit``: ``"squash"`` resizes the whole image to the square (aspect ratio not kept); ``"crop"``
    resizes the short side to ``size`` (aspect kept) and takes the centre square.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    rgb = image if image.mode == "RGB" else _to_rgb(image)
    if fit == "crop":
        scale = size / min(rgb.size)
        width, height = max(size, round(rgb.width * scale)), max(size, round(rgb.height * scale))
        resized = rgb.resize((width, height), _NETWORK_RESAMPLE)
        left, top = (width - size) // 2, (height - size) // 2
        resized = resized.crop((left, top, left + size, top + size))
    else:
        resized = rgb.resize((size, size), _NETWORK_RESAMPLE)
    return np.asarray(resized, dtype=np.uint8)


def decode_image(data: bytes, size: int, *, fit: str = "squash", max_pixels: int | None = None) -> np.ndarray:
    """Image bytes -> uint8 array (size, size, 3): :func:`open_image` (draft-decoded near ``size``) then
    :func:`to_network_array`. ``max_pixels`` defaults to ``curation.max_image_pixels``."""
    limit = rules_from_settings().max_pixels if max_pixels is None else max_pixels
    return to_network_array(open_image(data, max_pixels=limit, target_size=size), size, fit)
