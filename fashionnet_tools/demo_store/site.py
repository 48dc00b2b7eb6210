"""Build the demo store's static content: product images, the public catalog and the kept-aside truth.

Layout of a site folder::

    catalog.json        public product fields (what the server shows)
    images/<sku>.jpg    one picture per product (served)
    ground_truth.csv    sku + true labels (never served; for evaluating weak labels and models)
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from fashionnet_tools.demo_store.catalog import ATTRIBUTES, DemoProduct, generate_catalog
from fashionnet_tools.demo_store.draw import draw_garment
from pipeline.settings import Settings, get_settings

CATALOG_FILE = "catalog.json"
GROUND_TRUTH_FILE = "ground_truth.csv"
IMAGES_DIR = "images"
JPEG_QUALITY = 92


def _image_rng(seed: int, sku: str) -> random.Random:
    """A per-product generator, so one product's picture does not depend on the others."""
    return random.Random(f"{seed}:{sku}")


def build_site(out_dir: Path, n_products: int = 240, seed: int = 7, settings: Settings | None = None) -> Path:
    """Write the site for ``n_products`` seeded products into ``out_dir``; returns ``out_dir``.

    ``settings`` (read here when not given) names the taxonomy's classes and their search words."""
    settings = settings if settings is not None else get_settings()
    out_dir = Path(out_dir)
    images = out_dir / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    products = generate_catalog(n_products, seed, settings)
    for product in products:
        picture = draw_garment(
            product.pattern, product.fabric, product.style, product.shape, _image_rng(seed, product.sku)
        )
        picture.save(images / product.image, "JPEG", quality=JPEG_QUALITY)
    _write_catalog(out_dir / CATALOG_FILE, products)
    _write_ground_truth(out_dir / GROUND_TRUTH_FILE, products)
    return out_dir


def _write_catalog(path: Path, products: list[DemoProduct]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([p.public() for p in products], indent=1))
    tmp.replace(path)


def _write_ground_truth(path: Path, products: list[DemoProduct]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", *ATTRIBUTES, "text_noise"])
        for p in products:
            writer.writerow([p.sku, *(getattr(p, a) for a in ATTRIBUTES), p.noise])


def load_catalog(site_dir: Path) -> list[dict[str, Any]]:
    """The public catalog of a built site (DemoProduct.public's JSON: strings and a float price)."""
    return json.loads((Path(site_dir) / CATALOG_FILE).read_text())


def load_ground_truth(site_dir: Path) -> pa.Table:
    """``sku`` + true labels (+ ``text_noise``: the attribute whose shop text is wrong, or empty)."""
    path = Path(site_dir) / GROUND_TRUTH_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no ground truth; build the site with build_site() first")
    columns = ["sku", *ATTRIBUTES, "text_noise"]
    options = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in columns}, strings_can_be_null=False, quoted_strings_can_be_null=False
    )
    return pacsv.read_csv(path, convert_options=options)


def site_exists(site_dir: Path) -> bool:
    site_dir = Path(site_dir)
    return (site_dir / CATALOG_FILE).exists() and (site_dir / GROUND_TRUTH_FILE).exists()


def make_user_images(
    out_dir: Path,
    n: int = 4,
    seed: int = 11,
    *,
    pattern: str = "striped",
    fabric: str = "cotton",
    style: str = "casual",
    shape: str = "half-sleeve",
) -> list[Path]:
    """``n`` photos of a user's own clothes in one consistent style (the demo user's profile)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"user:{seed}")
    paths = []
    for index in range(n):
        path = out_dir / f"user-{index:02d}.jpg"
        draw_garment(pattern, fabric, style, shape, rng).save(path, "JPEG", quality=JPEG_QUALITY)
        paths.append(path)
    return paths
