"""The train / validation / test split of the dataset: stable and free of near-duplicate leakage.

An item's split is a pure function of its *group key* (:func:`split_of`: sha256 of salt and key,
read as a number in [0, 1) and cut at the cumulative ratios), so it never depends on what else is in
the dataset. The group key is the item's near-duplicate cluster (``cluster_id``: the content hash of
the cluster's representative, the same on every rerun), so every member of a cluster lands in the
same split.

Items already in ``dataset/split.parquet`` keep their split: adding items never moves old ones, even
when an item comes back in a later batch under another cluster id. A new item whose cluster id is
already assigned takes that cluster's existing split.

Why not also match near duplicates here by pHash/dHash alone: on catalog images those hashes pass
many different products (see :mod:`pipeline.dedup`), and joining such matches transitively merges
the dataset into a few giant groups, which would wreck the ratios. Near duplicates *across* batches
therefore straddle splits unless curation gives them one cluster id (it clusters one batch at a time).
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping

import pandas as pd
import pyarrow as pa

from pipeline.settings import get_settings
from pipeline.storage import ObjectStore

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
ITEMS_KEY = "dataset/items.parquet"
SPLIT_KEY = "dataset/split.parquet"
SPLIT_SCHEMA = pa.schema([("item_id", pa.string()), ("split", pa.string())])


def validate_ratios(ratios: Mapping[str, float]) -> dict[str, float]:
    """The ratios as a dict in their given order; ValueError unless non-negative and summing to 1."""
    parsed = {str(name): float(value) for name, value in ratios.items()}
    if not parsed:
        raise ValueError("split ratios are empty")
    negative = {k: v for k, v in parsed.items() if v < 0 or math.isnan(v)}
    if negative:
        raise ValueError(f"split ratios must be non-negative, got {negative}")
    total = sum(parsed.values())
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        raise ValueError(f"split ratios must sum to 1, got {parsed} (sum {total})")
    return parsed


def unit_interval(group_key: str, salt: str) -> float:
    """sha256(salt, key) as a number in [0, 1), uniform for practical purposes."""
    digest = hashlib.sha256(f"{salt}\x00{group_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(group_key: str, ratios: Mapping[str, float], salt: str) -> str:
    """The split of ``group_key``: where its hash falls among the cumulative ``ratios``."""
    parsed = validate_ratios(ratios)
    point = unit_interval(group_key, salt)
    cumulative = 0.0
    for name, ratio in parsed.items():
        cumulative += ratio
        if point < cumulative:
            return name
    return next(name for name, ratio in reversed(parsed.items()) if ratio > 0)  # float rounding at the top


def configured_ratios() -> tuple[dict[str, float], str]:
    """(ratios in train, validation, test order, salt) from ``settings.split``."""
    config = get_settings().split
    return validate_ratios({name: config[name] for name in SPLITS}), str(config["salt"])


def _previous_split(store: ObjectStore) -> dict[str, str]:
    if not store.exists(SPLIT_KEY):
        return {}
    table = store.read_parquet(SPLIT_KEY)
    return dict(zip(table.column("item_id").to_pylist(), table.column("split").to_pylist()))


def assign_splits(items: pd.DataFrame, previous: dict[str, str], ratios: Mapping[str, float],
                  salt: str) -> dict[str, str]:
    """item_id -> split for ``items`` (item_id, cluster_id), keeping the ``previous`` assignments.

    An item without a cluster id is its own cluster (keyed by its item_id).
    """
    clusters = items["cluster_id"].where(items["cluster_id"].notna(), items["item_id"]).astype(str)
    assigned: dict[str, str] = {}
    cluster_split: dict[str, str] = {}
    # Old items first, in item_id order, so a cluster that already has a split keeps it.
    ordered = sorted(zip(items["item_id"], clusters), key=lambda pair: (pair[0] not in previous, pair[0]))
    for item_id, cluster in ordered:
        if item_id in previous:
            assigned[item_id] = previous[item_id]
            cluster_split.setdefault(cluster, previous[item_id])
        else:
            if cluster not in cluster_split:
                cluster_split[cluster] = split_of(cluster, ratios, salt)
            assigned[item_id] = cluster_split[cluster]
    return assigned


def write_split(store: ObjectStore) -> dict[str, int]:
    """(Re)write ``dataset/split.parquet`` for the current dataset; returns the count per split."""
    ratios, salt = configured_ratios()
    items = store.read_parquet(ITEMS_KEY, columns=["item_id", "cluster_id"]).to_pandas()
    previous = _previous_split(store)
    assigned = assign_splits(items, previous, ratios, salt)
    ordered = sorted(assigned.items())
    store.write_parquet(SPLIT_KEY, pa.Table.from_pylist(
        [{"item_id": i, "split": s} for i, s in ordered], schema=SPLIT_SCHEMA))
    counts = {name: 0 for name in ratios}
    for _, split in ordered:
        counts[split] += 1
    log.info("split: %s (%d kept from the previous split)", counts, sum(i in previous for i in assigned))
    return counts
