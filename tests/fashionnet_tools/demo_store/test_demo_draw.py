"""Procedural garments: deterministic, each attribute changes the picture, and all four are learnable."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from fashionnet_tools.demo_store.catalog import ATTRIBUTES, generate_catalog
from fashionnet_tools.demo_store.draw import draw_garment
from pipeline.settings import get_settings

BASE = {"pattern": "solid", "fabric": "cotton", "style": "casual", "shape": "half-sleeve"}


def _pixels(img: Image.Image, size: int = 64) -> np.ndarray:
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32)


def test_same_seed_same_picture_and_other_seed_differs():
    a = draw_garment(**BASE, rng=random.Random(4))
    b = draw_garment(**BASE, rng=random.Random(4))
    c = draw_garment(**BASE, rng=random.Random(5))
    assert a.size == (128, 128) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_every_class_draws_a_different_picture(attribute):
    """With the same random draws, changing one attribute's class changes the picture."""
    classes = get_settings().taxonomy.classes(attribute)
    pictures = [_pixels(draw_garment(**{**BASE, attribute: c}, rng=random.Random(1))) for c in classes]
    for i in range(len(pictures)):
        for j in range(i + 1, len(pictures)):
            changed = (np.abs(pictures[i] - pictures[j]).sum(axis=2) > 30).mean()
            assert changed > 0.02, (classes[i], classes[j], changed)


def _garment_mask(img: Image.Image) -> np.ndarray:
    """Pixels that differ clearly from the (plain, light) background in the top-left corner."""
    a = np.asarray(img, dtype=np.float32)
    return np.abs(a - a[:4, :4].reshape(-1, 3).mean(0)).sum(axis=2) > 40


def test_sleeves_change_the_silhouette_width_at_the_hem():
    widths = {}
    for shape in ("full-sleeve", "half-sleeve", "sleeveless"):
        spans = []
        for seed in range(6):
            mask = _garment_mask(draw_garment("solid", "cotton", "formal", shape, random.Random(seed)))
            spans.append(mask[60:90].sum(axis=1).max())  # widest row over the lower torso
        widths[shape] = float(np.mean(spans))
    # Long sleeves hang beside the lower torso; short sleeves and no sleeves leave it bare.
    assert widths["full-sleeve"] > widths["half-sleeve"] + 10
    upper = {}
    for shape in ("half-sleeve", "sleeveless"):
        mask = _garment_mask(draw_garment("solid", "cotton", "formal", shape, random.Random(0)))
        upper[shape] = mask[40:55].sum(axis=1).max()
    assert upper["half-sleeve"] > upper["sleeveless"] + 10


def _features(img: Image.Image) -> np.ndarray:
    """Cheap hand-made features at 64 px: an 8x8 thumbnail, edge energy at 3 scales, colour and FFT bands."""
    a = _pixels(img) / 255
    thumb = np.asarray(img.resize((8, 8), Image.BILINEAR), dtype=np.float32).ravel() / 255
    grey = a.mean(axis=2)
    f = []
    for s in (1, 2, 4):
        f += [np.abs(grey[:, s:] - grey[:, :-s]).mean(), np.abs(grey[s:] - grey[:-s]).mean()]
    centre = a[16:48, 20:44].reshape(-1, 3)
    f += list(centre.mean(0)) + list(centre.std(0))
    patch = grey[16:48, 16:48]
    spectrum = np.abs(np.fft.fft2(patch - patch.mean()))
    fy, fx = np.meshgrid(np.fft.fftfreq(32), np.fft.fftfreq(32), indexing="ij")
    radius = np.hypot(fy, fx)
    for lo, hi in ((0, 0.08), (0.08, 0.16), (0.16, 0.3), (0.3, 0.5), (0.5, 0.8)):
        f.append(np.log1p(spectrum[(radius >= lo) & (radius < hi)].mean()))
    f.append(np.log1p(spectrum[(np.abs(fx) < 0.02) & (radius > 0.05)].mean()))
    f.append(np.log1p(spectrum[(np.abs(fy) < 0.02) & (radius > 0.05)].mean()))
    return np.concatenate([thumb, np.array(f) * 10])


def test_each_attribute_is_learnable_at_64px():
    """A ridge classifier on cheap features beats chance by far for every attribute (a CNN does better)."""
    products = generate_catalog(500, seed=21)
    x = np.stack(
        [
            _features(draw_garment(p.pattern, p.fabric, p.style, p.shape, random.Random(i)))
            for i, p in enumerate(products)
        ]
    )
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    x = np.hstack([x, np.ones((len(x), 1))])
    n_train = 380
    for attribute in ATTRIBUTES:
        classes = get_settings().taxonomy.classes(attribute)
        y = np.array([classes.index(getattr(p, attribute)) for p in products])
        targets = np.eye(len(classes))[y] * 2 - 1
        xt = x[:n_train]
        weights = np.linalg.solve(xt.T @ xt + 10 * np.eye(x.shape[1]), xt.T @ targets[:n_train])
        accuracy = (np.argmax(x[n_train:] @ weights, axis=1) == y[n_train:]).mean()
        chance = 1 / len(classes)
        assert accuracy > max(0.5, 2 * chance), (attribute, accuracy)


def test_unknown_class_is_an_error():
    with pytest.raises(ValueError):
        draw_garment("paisley", "cotton", "casual", "sleeveless", random.Random(0))
