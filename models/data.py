"""Images and labels for one attribute, read from the dataset tables in the store."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.images import UndecodableImage
from pipeline.images import decode_image as shared_decode_image
from pipeline.storage import ObjectStore
from pipeline.store_layout import DATASET_ITEMS_KEY, DATASET_SPLIT_KEY

SPLITS = ("train", "validation", "test")


def decode_image(data: bytes, image_size: int, *, fit: str = "squash") -> np.ndarray:
    """Image bytes (JPEG, PNG, ...) -> RGB uint8 array of shape (image_size, image_size, 3).

    Decoded by the shared decoder (:func:`pipeline.images.decode_image`: pixel limit, EXIF orientation,
    16-bit scaling, transparency on white, JPEG draft mode); ``fit`` is ``"squash"`` (the whole image
    resized to the square) or ``"crop"`` (aspect kept, centre square). Raises :class:`UndecodableImage`
    with a ``reason``.
    """
    return shared_decode_image(data, image_size, fit=fit)


@dataclass
class SplitArrays:
    """One split of one attribute: images, class indices and the item ids they came from."""

    images: np.ndarray  # (n, size, size, 3) uint8
    labels: np.ndarray  # (n,) int32, index into the attribute's classes
    item_ids: list[str]
    # every image left out: {"item_id", "image_key", "reason", "detail"} (undecodable, or missing)
    rejected: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def skipped(self) -> int:
        """How many images were left out (the count the model card shows)."""
        return len(self.rejected)


def split_fingerprint(arrays: SplitArrays) -> str:
    """sha256 of the split's (item_id, label) pairs: two evaluations are comparable when these agree."""
    pairs = sorted(f"{item}\t{int(label)}" for item, label in zip(arrays.item_ids, arrays.labels))
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()


def labelled_items(store: ObjectStore, attribute: str, classes: tuple[str, ...]) -> pd.DataFrame:
    """Items labelled for ``attribute`` with their split: item_id, image_key, label, label_index, split."""
    items = store.read_parquet(DATASET_ITEMS_KEY).to_pandas()
    if attribute not in items.columns:
        raise ValueError(f"{DATASET_ITEMS_KEY} has no column for attribute {attribute!r}")
    split = store.read_parquet(DATASET_SPLIT_KEY, columns=["item_id", "split"]).to_pandas()
    frame = items.loc[items[attribute].notna(), ["item_id", "image_key", attribute]]
    frame = frame.rename(columns={attribute: "label"}).merge(split, on="item_id", how="inner")
    unknown = sorted(set(frame["label"]) - set(classes))
    if unknown:
        raise ValueError(f"attribute {attribute!r}: labels {unknown} are not in the taxonomy classes {list(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    frame["label_index"] = frame["label"].map(index).astype("int32")
    return frame.sort_values("item_id").reset_index(drop=True)


MISSING = "missing"  # the rejection reason of an image key the store does not hold


def _decode_row(store: ObjectStore, image_key: str, image_size: int, fit: str) -> np.ndarray | dict[str, str]:
    """The decoded image, or why it cannot be used: the decoder's ``reason`` (pipeline.images.REASONS,
    or "missing") and its human ``detail``."""
    try:
        data = store.get_bytes(image_key)
    except FileNotFoundError:
        return {"reason": MISSING, "detail": f"no {image_key} in the store"}
    try:
        return decode_image(data, image_size, fit=fit)
    except UndecodableImage as exc:
        return {"reason": str(getattr(exc, "reason", "undecodable")), "detail": str(exc)}


def load_arrays(store: ObjectStore, frame: pd.DataFrame, image_size: int, fit: str = "squash") -> SplitArrays:
    """Decode the images of ``frame`` rows (image_key, label_index) on a thread pool (PIL's decoder
    releases the GIL); undecodable or missing ones are left out and listed with their reason.
    ``fit``: "squash" or "crop" (pipeline.images)."""
    rows = list(frame.itertuples(index=False))
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda row: _decode_row(store, row.image_key, image_size, fit), rows))
    images, labels, item_ids, rejected = [], [], [], []
    for row, result in zip(rows, results):
        if isinstance(result, dict):
            rejected.append({"item_id": str(row.item_id), "image_key": str(row.image_key), **result})
            continue
        images.append(result)
        labels.append(row.label_index)
        item_ids.append(row.item_id)
    array = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
    return SplitArrays(array, np.asarray(labels, dtype=np.int32), item_ids, rejected)


def load_split(
    store: ObjectStore, attribute: str, split: str, classes: tuple[str, ...], image_size: int
) -> SplitArrays:
    """The images and labels of one split for one attribute (only items labelled for it)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    frame = labelled_items(store, attribute, classes)
    return load_arrays(store, frame[frame["split"] == split], image_size)
