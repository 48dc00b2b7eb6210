"""Synthetic, learnable fashion data for the model tests: PIL-drawn stripes, checks and solids."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

PATTERNS = ("checkered", "striped", "solid")
SHAPES = ("full-sleeve", "half-sleeve", "sleeveless")


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def _contrasting(rng: np.random.Generator, colour: tuple[int, int, int]) -> tuple[int, int, int]:
    while True:
        other = _colour(rng)
        if sum(abs(a - b) for a, b in zip(colour, other)) > 200:
            return other


def pattern_image(kind: str, rng: np.random.Generator, size: int = 48, fmt: str = "JPEG") -> bytes:
    """A product-like image of a ``kind`` pattern with random colours, period and phase."""
    background = _colour(rng)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    period = int(rng.integers(size // 8, size // 4))
    phase = int(rng.integers(0, period))
    ink = _contrasting(rng, background)
    if kind == "striped":
        for y in range(-phase, size, period):
            draw.rectangle([0, y, size, y + period // 2 - 1], fill=ink)
    elif kind == "checkered":
        for y in range(-phase, size, period):
            for x in range(-phase, size, period):
                if ((x + phase) // period + (y + phase) // period) % 2 == 0:
                    draw.rectangle([x, y, x + period - 1, y + period - 1], fill=ink)
    elif kind != "solid":
        raise ValueError(kind)
    noise = rng.normal(0, 6, size=(size, size, 3))
    pixels = np.clip(np.asarray(image, dtype=float) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def item_id(n: int) -> str:
    return hashlib.sha1(f"https://shop.example/p/{n}".encode()).hexdigest()[:20]


def write_dataset(
    store,
    per_class: int = 20,
    *,
    attribute: str = "pattern",
    kinds: tuple[str, ...] = PATTERNS,
    fractions: tuple[float, float] = (0.6, 0.2),
    seed: int = 0,
    size: int = 48,
) -> list[str]:
    """``dataset/items.parquet`` + ``dataset/split.parquet`` with ``per_class`` images per pattern.

    Every class is split train/validation/test by ``fractions`` so each split holds every class.
    Another attribute column ("fabric") is left unlabelled, as in a real dataset.
    """
    rng = np.random.default_rng(seed)
    rows, splits = [], []
    n = 0
    for kind in kinds:
        n_train = int(per_class * fractions[0])
        n_val = int(per_class * fractions[1])
        for i in range(per_class):
            iid = item_id(n)
            key = f"images/full/{iid}.jpg"
            store.put_bytes(key, pattern_image(kind, rng, size))
            rows.append({"item_id": iid, "image_key": key, attribute: kind, "fabric": None})
            splits.append(
                {"item_id": iid, "split": "train" if i < n_train else "validation" if i < n_train + n_val else "test"}
            )
            n += 1
    store.write_parquet("dataset/items.parquet", pa.Table.from_pylist(rows))
    store.write_parquet("dataset/split.parquet", pa.Table.from_pylist(splits))
    return [r["item_id"] for r in rows]


def write_accepted(
    store, batch_id: str, kinds: list[str], *, start: int = 1000, seed: int = 7, broken: int = 0
) -> list[str]:
    """``curation/<batch_id>/accepted.parquet`` with one item per entry of ``kinds``, plus ``broken``
    items whose image bytes are not an image."""
    rng = np.random.default_rng(seed)
    rows = []
    for offset, kind in enumerate(list(kinds) + ["broken"] * broken):
        n = start + offset
        iid = item_id(n)
        key = f"images/full/{iid}.jpg"
        data = b"not an image" if kind == "broken" else pattern_image(kind, rng)
        store.put_bytes(key, data)
        rows.append(
            {
                "item_id": iid,
                "retailer": "demo-store",
                "product_url": f"https://shop.example/p/{n}",
                "sku": f"SKU{n}",
                "title": f"{kind} shirt {n}",
                "price": 10.0 + offset,
                "currency": "EUR",
                "category": "shirts",
                "image_url": f"https://shop.example/img/{n}.jpg",
                "image_key": key,
                "crawled_at": datetime(2026, 11, 1, tzinfo=UTC),
                "phash": np.uint64(2**63 + n),
                "dhash": np.uint64(n),
                "content_sha256": hashlib.sha256(data).hexdigest(),
                "width": 48,
                "height": 48,
                "cluster_id": n,
            }
        )
    table = pa.Table.from_pylist(rows)
    table = table.set_column(
        table.schema.get_field_index("phash"), "phash", pa.array([r["phash"] for r in rows], pa.uint64())
    )
    table = table.set_column(
        table.schema.get_field_index("dhash"), "dhash", pa.array([r["dhash"] for r in rows], pa.uint64())
    )
    store.write_parquet(f"curation/{batch_id}/accepted.parquet", table)
    return [r["item_id"] for r in rows]


def write_version(store, attribute: str, version: str, seed: int = 0):
    """A saved (untrained) network and its metrics.json, as training writes them."""
    import keras

    from models.network import build_attribute_network
    from models.train import save_model
    from pipeline.store_layout import model_file_key, model_metrics_key

    keras.utils.set_random_seed(seed)
    model = build_attribute_network(len(SHAPES), image_size=32, dense_units=8)
    save_model(store, model_file_key(attribute, version), model)
    store.write_json(
        model_metrics_key(attribute, version),
        {
            "classes": list(SHAPES),
            "image_size": 32,
            "val_accuracy": 0.5,
            "test": {"accuracy": 0.25},
        },
    )
    return model


def publish_untrained(store, attributes=("shape", "pattern")):
    """``write_version`` v1 of each attribute (seeds 0, 1, ...), published."""
    from models.registry import publish

    for seed, attribute in enumerate(attributes):
        write_version(store, attribute, "v1", seed=seed)
        publish(store, attribute, "v1")
    return store


#: The model tests' training values over the settings' (tests/models/conftest.py): a tiny network, and the
#: seed's recipe (a Dense head from random, phase 2 on the whole backbone) rather than the settings' LP-FT.
TINY_TRAINING = {
    "backbone": "vgg16",
    "weights": None,
    "image_size": 32,
    "batch_size": 16,
    "dense_units": 64,
    "dropout": 0.5,
    "frozen_epochs": 20,
    "unfrozen_epochs": 1,
    "head_learning_rate": 0.003,
    "finetune_learning_rate": 0.0001,
    "patience": 1,
    "seed": 1234,
    "lr_schedule": "constant",
    "warmup_epochs": 0,
    "unfreeze_from": "all",
    "mirror_augment": False,
    "selection_margin": 0.0,
    "head_init": "random",
    "image_fit": "squash",
}
