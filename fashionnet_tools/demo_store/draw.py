"""Procedural garment pictures whose four attributes are visible at 64 px.

* shape: the silhouette (long sleeves reaching the hem, short sleeves, or none),
* pattern: what fills the garment (checks, stripes, small flowers, one big chest print, plain),
* fabric: the surface (cotton fine noise, chiffon translucent with soft edges, lace mesh of holes,
  wool coarse knit, silk smooth sheen),
* style: the palette (casual denim/earthy, formal dark, party saturated, winter deep warm, summer pastel).

Each attribute is rendered by its own step from its own random draws, so they vary independently;
position, scale, colours and pattern phase are jittered within a class against memorisation.
"""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RGB = tuple[int, int, int]

PALETTES: dict[str, tuple[RGB, ...]] = {
    "casual": ((62, 92, 140), (88, 120, 168), (168, 146, 104), (116, 122, 72), (150, 104, 72)),
    "formal": ((38, 40, 46), (28, 38, 76), (70, 72, 80), (20, 22, 28), (48, 52, 66)),
    "party": ((224, 18, 140), (236, 186, 30), (140, 24, 226), (0, 190, 210), (230, 30, 40)),
    "winter": ((140, 22, 30), (110, 24, 44), (104, 60, 30), (160, 56, 28), (84, 36, 26)),
    "summer": ((170, 232, 204), (255, 204, 170), (172, 212, 250), (250, 240, 150), (246, 184, 216)),
}
BACKGROUNDS: tuple[RGB, ...] = ((244, 244, 242), (236, 236, 236), (246, 240, 230), (232, 238, 240))


def _jitter(color: RGB, rng: random.Random, amount: int = 12) -> np.ndarray:
    return np.clip(np.array(color, dtype=np.float32) + [rng.uniform(-amount, amount) for _ in range(3)], 0, 255)


# -- shape ------------------------------------------------------------------------------------
def _silhouette(shape: str, size: int, rng: random.Random) -> np.ndarray:
    """The garment mask (float 0..1, anti-aliased) for a sleeve shape, jittered in place and scale."""
    ss = 2  # supersampling
    s = size * ss
    scale = rng.uniform(0.86, 1.02)
    cx = s / 2 + rng.uniform(-0.05, 0.05) * s
    cy = s / 2 + rng.uniform(-0.03, 0.03) * s

    def pt(x: float, y: float) -> tuple[float, float]:
        return cx + x * s * scale, cy + y * s * scale

    img = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(img)
    top, hem, half_w = -0.30, 0.38, 0.19
    if shape == "sleeveless":
        torso = [
            pt(-0.11, top),
            pt(0.11, top),
            pt(half_w, -0.10),
            pt(half_w + 0.01, hem),
            pt(-half_w - 0.01, hem),
            pt(-half_w, -0.10),
        ]
    else:
        torso = [pt(-half_w, top), pt(half_w, top), pt(half_w + 0.01, hem), pt(-half_w - 0.01, hem)]
    draw.polygon(torso, fill=255)
    if shape in ("full-sleeve", "half-sleeve"):
        length = 0.62 if shape == "full-sleeve" else 0.22
        for side in (-1, 1):
            # A sleeve leaves the shoulder at an outward slant; width 0.12 at the armhole, 0.09 at the cuff.
            x0, y0 = side * half_w, top
            dx, dy = side * 0.30 * length, length
            cuff = [(x0 + dx, y0 + dy), (x0 + dx + side * 0.10, y0 + dy - 0.02)]
            poly = [pt(x0, y0), pt(x0 + side * 0.04, y0 - 0.005), pt(*cuff[1]), pt(*cuff[0]), pt(x0, y0 + 0.16)]
            draw.polygon(poly, fill=255)
    # Neckline.
    nx, ny = pt(0, top)
    r = 0.065 * s * scale
    draw.ellipse([nx - r, ny - r, nx + r, ny + r * 0.9], fill=0)
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


# -- pattern ----------------------------------------------------------------------------------
def _pattern_layer(pattern: str, size: int, rng: random.Random) -> np.ndarray:
    """Weight (0..1) of the accent colour per pixel; 0 everywhere for a solid garment."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = size / 128
    if pattern == "checkered":
        p = rng.uniform(12, 17) * period
        ox, oy = rng.uniform(0, p), rng.uniform(0, p)
        return (((xx + ox) // p + (yy + oy) // p) % 2).astype(np.float32)
    if pattern == "striped":
        p = rng.uniform(9, 14) * period
        coord = yy if rng.random() < 0.6 else xx
        return (((coord + rng.uniform(0, p)) % p) < p * 0.45).astype(np.float32)
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    if pattern == "floral":
        for _ in range(rng.randint(22, 32)):
            fx, fy = rng.uniform(0.2, 0.8) * size, rng.uniform(0.15, 0.9) * size
            pr = rng.uniform(2.6, 3.6) * period
            turn = rng.uniform(0, math.pi)
            for k in range(5):
                a = turn + k * 2 * math.pi / 5
                px, py = fx + math.cos(a) * pr * 1.2, fy + math.sin(a) * pr * 1.2
                draw.ellipse([px - pr, py - pr, px + pr, py + pr], fill=255)
            draw.ellipse([fx - pr * 0.7, fy - pr * 0.7, fx + pr * 0.7, fy + pr * 0.7], fill=140)
    elif pattern == "graphic":
        gx, gy = size * rng.uniform(0.45, 0.55), size * rng.uniform(0.44, 0.52)
        r = size * rng.uniform(0.12, 0.16)
        kind = rng.choice(("circle", "star", "triangle", "diamond"))
        if kind == "circle":
            draw.ellipse([gx - r, gy - r, gx + r, gy + r], fill=255)
            draw.ellipse([gx - r * 0.5, gy - r * 0.5, gx + r * 0.5, gy + r * 0.5], fill=0)
        else:
            n, inner = {"star": (5, 0.45), "triangle": (3, 1.0), "diamond": (4, 1.0)}[kind]
            steps = n * 2 if kind == "star" else n
            pts = []
            for k in range(steps):
                rad = r if (kind != "star" or k % 2 == 0) else r * inner
                a = -math.pi / 2 + k * 2 * math.pi / steps
                pts.append((gx + math.cos(a) * rad, gy + math.sin(a) * rad))
            draw.polygon(pts, fill=255)
    elif pattern != "solid":
        raise ValueError(f"unknown pattern {pattern!r}")
    return np.asarray(img, dtype=np.float32) / 255.0


# -- fabric -----------------------------------------------------------------------------------
def _apply_fabric(
    fabric: str, colors: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The fabric's surface on the coloured garment: returns (colours, opacity mask)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if fabric == "cotton":
        noise = rng.normal(0, 9, (size, size)).astype(np.float32)
        return colors + noise[..., None], mask
    if fabric == "chiffon":
        soft = (
            np.asarray(
                Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(size / 64)),
                dtype=np.float32,
            )
            / 255
        )
        flutter = 0.06 * np.sin(xx / size * rng.uniform(10, 16) + rng.uniform(0, 6.3))
        return colors * 0.75 + 255 * 0.25, soft * np.clip(rng.uniform(0.55, 0.65) + flutter, 0, 1)
    if fabric == "lace":
        p = 6 * size / 128
        ox, oy = rng.uniform(0, p), rng.uniform(0, p)
        # Holes on a staggered grid: every other row shifted by half a period.
        row = (yy + oy) // p
        fx = ((xx + ox + (row % 2) * p / 2) % p) / p - 0.5
        fy = ((yy + oy) % p) / p - 0.5
        holes = (fx**2 + fy**2) < 0.28**2
        return colors, mask * np.where(holes, 0.0, 1.0)
    if fabric == "wool":
        cell = max(2, size // 40)
        coarse = rng.normal(0, 18, (size // cell + 1, size // cell + 1)).astype(np.float32)
        coarse = np.kron(coarse, np.ones((cell, cell), dtype=np.float32))[:size, :size]
        p = 5 * size / 128
        knit = 14 * np.abs(((xx + yy * 0.5) % p) / p - 0.5) - 14 * np.abs(((xx - yy * 0.5) % p) / p - 0.5)
        return colors + (coarse + knit)[..., None], mask
    if fabric == "silk":
        angle = rng.uniform(0.5, 1.1)
        band = (xx * math.cos(angle) + yy * math.sin(angle)) / size
        centre = rng.uniform(0.6, 0.9)
        sheen = 70 * np.exp(-((band - centre) ** 2) / 0.02) - 20 * (band - centre) ** 2
        return colors + sheen[..., None], mask
    raise ValueError(f"unknown fabric {fabric!r}")


# -- style ------------------------------------------------------------------------------------
def _style_colors(style: str, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """Base and accent colours from the style's palette (two different palette entries)."""
    try:
        palette = PALETTES[style]
    except KeyError:
        raise ValueError(f"unknown style {style!r}") from None
    base, accent = (_jitter(c, rng) for c in rng.sample(palette, 2))
    return base, _contrasting(base, accent, rng)


def _luma(color: np.ndarray) -> float:
    return float(color @ np.array([0.299, 0.587, 0.114], dtype=np.float32))


def _contrasting(base: np.ndarray, accent: np.ndarray, rng: random.Random, min_gap: float = 70.0) -> np.ndarray:
    """The accent pushed towards white (dark base) or black (light base) until the pattern shows."""
    if abs(_luma(accent) - _luma(base)) >= min_gap:
        return accent
    target = np.full(3, 255.0 if _luma(base) < 128 else 0.0, dtype=np.float32)
    for mix in np.linspace(0.1, 1.0, 10):
        mixed = accent * (1 - mix) + target * mix
        if abs(_luma(mixed) - _luma(base)) >= min_gap + rng.uniform(0, 15):
            return mixed
    return target


def draw_garment(pattern: str, fabric: str, style: str, shape: str, rng: random.Random, size: int = 128) -> Image.Image:
    """An RGB picture of one garment; the same ``rng`` state gives the same picture."""
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    np_rng = np.random.default_rng(rng.getrandbits(64))
    background = _jitter(rng.choice(BACKGROUNDS), rng, 4)
    mask = _silhouette(shape, size, rng)
    base, accent = _style_colors(style, rng)
    weight = _pattern_layer(pattern, size, rng)[..., None]
    colors = base * (1 - weight) + accent * weight
    colors, opacity = _apply_fabric(fabric, colors, mask, size, np_rng)
    colors = np.clip(colors, 0, 255)
    # A soft shadow under the garment separates light garments from the light background.
    shadow = (
        np.asarray(
            Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(size / 40)), dtype=np.float32
        )
        / 255
    )
    canvas = np.broadcast_to(background, (size, size, 3)) * (1 - 0.18 * np.roll(shadow, (2, 2), (0, 1))[..., None])
    alpha = opacity[..., None]
    out = canvas * (1 - alpha) + colors * alpha
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")
