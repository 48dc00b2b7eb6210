import io

import numpy as np
from PIL import Image, ImageDraw

from pipeline.hashing import content_sha256, hamming, perceptual_hashes


def _striped(size: int = 128, period: int = 16) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for x in range(0, size, period):
        draw.rectangle([x, 0, x + period // 2, size], fill="navy")
    return image


def _blobs(size: int = 128) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse([10, 10, 70, 70], fill="red")
    draw.rectangle([80, 60, 120, 120], fill="green")
    return image


def test_hashes_are_unsigned_64_bit_ints():
    phash, dhash = perceptual_hashes(_striped())
    for value in (phash, dhash):
        assert isinstance(value, int) and 0 <= value < 2**64
    np.asarray([phash, dhash], dtype=np.uint64)  # fits without overflow


def test_recompressed_copy_is_near_and_different_image_is_far():
    original = _striped()
    buffer = io.BytesIO()
    original.resize((96, 96)).save(buffer, "JPEG", quality=60)
    copy = Image.open(io.BytesIO(buffer.getvalue()))
    p0, d0 = perceptual_hashes(original)
    p1, d1 = perceptual_hashes(copy)
    p2, _ = perceptual_hashes(_blobs())
    assert int(hamming(p0, p1)) <= 6
    assert int(hamming(p0, p2)) > 10


def test_hamming_is_popcount_and_broadcasts():
    assert int(hamming(0, 2**64 - 1)) == 64
    assert int(hamming(0b1011, 0b0001)) == 2
    many = np.array([0, 1, 3, 2**63], dtype=np.uint64)
    assert hamming(many, 0).tolist() == [0, 1, 2, 1]
    assert hamming(many[:, None], many[None, :]).shape == (4, 4)


def test_content_hash_is_sha256_hex():
    assert content_sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _asymmetric(size: int = 128) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    draw.polygon([(10, 10), (100, 30), (30, 110)], fill="darkred")
    draw.rectangle([90, 80, 120, 120], fill="gold")
    return image


def test_hashes_are_imagehash_bit_for_bit():
    """Stored hashes (and hash index files written before) must keep their values."""
    import imagehash

    def reference(image):
        rgb = image.convert("RGB")
        return tuple(int(str(h(rgb, hash_size=8)), 16) for h in (imagehash.phash, imagehash.dhash))

    for image in (_striped(), _blobs(), _asymmetric(), _asymmetric().convert("L"), _asymmetric().convert("P")):
        assert perceptual_hashes(image) == reference(image)


def test_mirror_hashes_are_the_hashes_of_the_mirrored_image():
    from PIL import ImageOps

    from pipeline.hashing import image_hashes

    image = _asymmetric()
    own, mirrored = image_hashes(image), image_hashes(ImageOps.mirror(image))
    assert (own.phash_mirror, own.dhash_mirror) == (mirrored.phash, mirrored.dhash)
    assert (mirrored.phash_mirror, mirrored.dhash_mirror) == (own.phash, own.dhash)
    assert int(hamming(own.phash, mirrored.phash)) > 10  # a flip is far for the plain hashes
