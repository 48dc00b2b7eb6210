"""Content and perceptual hashes of images.

Perceptual hashes are 64-bit pHash and dHash values held as unsigned integers (numpy ``uint64``,
Parquet ``uint64``), compared by popcount of the XOR, never as hex strings.

The values are imagehash's ``phash`` and ``dhash`` (``hash_size=8``) bit for bit, computed here from
one greyscale conversion so that the *mirror* hashes come almost for free: the pHash and dHash of the
horizontally mirrored image are the same computation on the mirrored 32x32 and 9x8 greyscale
thumbnails. Pillow's Lanczos resampling is symmetric, so those are exactly the hashes of
``ImageOps.mirror(image)`` (a test checks both equalities). A mirrored copy of an image has (nearly) the
original's hashes as its mirror hashes, which is how :mod:`pipeline.curation.dedup` finds flipped copies.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np
import scipy.fftpack
from PIL import Image

HASH_SIZE = 8  # 8x8 = 64 bits
_PHASH_SIDE = HASH_SIZE * 4  # imagehash's highfreq_factor = 4: a 32x32 DCT
_RESAMPLE = Image.Resampling.LANCZOS  # imagehash's ANTIALIAS


class ImageHashes(NamedTuple):
    """The perceptual hashes of an image and of its horizontal mirror image, as unsigned 64-bit ints."""

    phash: int
    dhash: int
    phash_mirror: int
    dhash_mirror: int


def content_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _to_uint64(bits: np.ndarray) -> int:
    """64 booleans, first = most significant bit (imagehash's bit order)."""
    return int.from_bytes(np.packbits(np.asarray(bits, dtype=bool).ravel()).tobytes(), "big")


def _greyscale(image: Image.Image) -> Image.Image:
    # Through RGB as before (palette, alpha, CMYK): the same grey values the hashes always saw.
    return image.convert("L") if image.mode in ("RGB", "L") else image.convert("RGB").convert("L")


def _phash_bits(pixels: np.ndarray) -> np.ndarray:
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    low = dct[:HASH_SIZE, :HASH_SIZE]
    return low > np.median(low)


def _dhash_bits(pixels: np.ndarray) -> np.ndarray:
    return pixels[:, 1:] > pixels[:, :-1]


def image_hashes(image: Image.Image) -> ImageHashes:
    """pHash and dHash of ``image`` and of its horizontal mirror image."""
    grey = _greyscale(image)
    square = np.asarray(grey.resize((_PHASH_SIDE, _PHASH_SIDE), _RESAMPLE))
    strip = np.asarray(grey.resize((HASH_SIZE + 1, HASH_SIZE), _RESAMPLE))
    return ImageHashes(
        _to_uint64(_phash_bits(square)),
        _to_uint64(_dhash_bits(strip)),
        _to_uint64(_phash_bits(square[:, ::-1])),
        _to_uint64(_dhash_bits(strip[:, ::-1])),
    )


def perceptual_hashes(image: Image.Image) -> tuple[int, int]:
    """(pHash, dHash) of ``image`` as unsigned 64-bit integers."""
    hashes = image_hashes(image)
    return hashes.phash, hashes.dhash


_POPCOUNT_TABLE = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bitwise Hamming distance between uint64 hashes (broadcasting like numpy)."""
    xor = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    as_bytes = xor[..., None].view(np.uint8) if xor.ndim else np.atleast_1d(xor).view(np.uint8)
    counts = _POPCOUNT_TABLE[as_bytes].sum(axis=-1, dtype=np.int64)
    return counts if xor.ndim else counts.reshape(())
