"""Content and perceptual hashes of images.

Perceptual hashes are 64-bit imagehash pHash and dHash values held as unsigned integers (numpy
``uint64``, Parquet ``uint64``), compared by popcount of the XOR, never as hex strings.
"""
from __future__ import annotations

import hashlib

import imagehash
import numpy as np
from PIL import Image

HASH_SIZE = 8  # 8x8 = 64 bits


def content_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _to_uint64(bits: np.ndarray) -> int:
    value = 0
    for bit in bits.flatten():
        value = (value << 1) | int(bool(bit))
    return value


def perceptual_hashes(image: Image.Image) -> tuple[int, int]:
    """(pHash, dHash) of ``image`` as unsigned 64-bit integers."""
    rgb = image.convert("RGB")
    phash = imagehash.phash(rgb, hash_size=HASH_SIZE)
    dhash = imagehash.dhash(rgb, hash_size=HASH_SIZE)
    return _to_uint64(phash.hash), _to_uint64(dhash.hash)


_POPCOUNT_TABLE = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bitwise Hamming distance between uint64 hashes (broadcasting like numpy)."""
    xor = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    as_bytes = xor[..., None].view(np.uint8) if xor.ndim else np.atleast_1d(xor).view(np.uint8)
    counts = _POPCOUNT_TABLE[as_bytes].sum(axis=-1, dtype=np.int64)
    return counts if xor.ndim else counts.reshape(())
