"""The train / validation / test split of the dataset: stable, stratified, free of near-duplicate leakage.

An item's split is a pure function of its *group key* (:func:`split_of`: sha256 of salt and key,
read as a number in [0, 1) and cut at the cumulative ratios, 70/15/15 from ``settings.split``), so it
never depends on what else is in the dataset. The group key is the item's near-duplicate cluster
(``cluster_id``: the content hash of the cluster's representative, the same on every rerun), so every
member of a cluster lands in the same split.

Stratification, and the trade-off chosen. Two properties pull against each other: *exact* per-stratum
ratios need to see the whole stratum (sort it, cut it at 70/85 %), and then adding items shifts the
cuts and moves old items between splits, which leaks test items into training and makes evaluations
incomparable across retrains. We choose determinism: the hash is independent of the labels, so within
every stratum (every class of every attribute, and every combination of them at once: an item has one
split but one label per attribute) the split is an independent draw with the configured ratios. Each
stratum's shares are right in expectation, with binomial error sqrt(p(1-p)/n): for the 15 % test
share, about +-2.5 points in a stratum of 200 clusters and +-8 points in one of 20. Small strata can
miss a split entirely; :func:`stratum_report` measures the realised shares per attribute and class,
:func:`write_split` writes them to ``dataset/split_report.json`` and logs every stratum whose share is
further off than ``split.report_tolerance`` (that is where to look before trusting a per-class metric).

Items already in ``dataset/split.parquet`` keep their split: adding items never moves old ones, even
when an item comes back in a later batch under another cluster id. A new item whose cluster id is
already assigned takes that cluster's existing split.

Near duplicates across batches: curation deduplicates each ingest batch against everything earlier
batches kept (:mod:`pipeline.curation.curate`), so a later near copy of a dataset item is dropped as a duplicate
before review and never reaches the dataset. Why not also match near duplicates here by pHash/dHash
alone: on catalog images those hashes pass many different products (see :mod:`pipeline.curation.dedup`), and
joining such matches transitively merges the dataset into a few giant groups, which would wreck the
ratios.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
import pyarrow as pa

from pipeline import store_layout
from pipeline.settings import get_settings
from pipeline.storage import ObjectStore

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
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
    return validate_ratios({name: getattr(config, name) for name in SPLITS}), config.salt


def _previous_split(store: ObjectStore) -> dict[str, str]:
    if not store.exists(store_layout.DATASET_SPLIT_KEY):
        return {}
    table = store.read_parquet(store_layout.DATASET_SPLIT_KEY)
    return dict(zip(table.column("item_id").to_pylist(), table.column("split").to_pylist()))


def assign_splits(
    items: pd.DataFrame, previous: dict[str, str], ratios: Mapping[str, float], salt: str
) -> dict[str, str]:
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


def stratum_report(
    items: pd.DataFrame, assigned: Mapping[str, str], attributes: list[str], ratios: Mapping[str, float]
) -> dict[str, dict[str, dict[str, Any]]]:
    """attribute -> class -> {count per split, share per split, worst absolute share error}.

    Unlabelled items (null) form no stratum.
    """
    split = items["item_id"].map(assigned)
    report: dict[str, dict[str, dict[str, Any]]] = {}
    for attribute in attributes:
        if attribute not in items.columns:
            continue
        classes: dict[str, dict[str, Any]] = {}
        for label, members in split.groupby(items[attribute], sort=True):
            counts = {name: int((members == name).sum()) for name in ratios}
            total = sum(counts.values())
            shares = {name: counts[name] / total for name in ratios}
            classes[str(label)] = {
                "items": total,
                "counts": counts,
                "shares": {k: round(v, 4) for k, v in shares.items()},
                "max_share_error": round(max(abs(shares[k] - ratios[k]) for k in ratios), 4),
            }
        report[attribute] = classes
    return report


def write_split(store: ObjectStore) -> dict[str, int]:
    """(Re)write ``dataset/split.parquet`` (and its stratum report) for the current dataset; returns
    the count per split."""
    ratios, salt = configured_ratios()
    settings = get_settings()
    attributes = settings.taxonomy.names
    available = set(store.read_parquet(store_layout.DATASET_ITEMS_KEY).schema.names)
    columns = ["item_id", "cluster_id", *[a for a in attributes if a in available]]
    items = store.read_parquet(store_layout.DATASET_ITEMS_KEY, columns=columns).to_pandas()
    previous = _previous_split(store)
    assigned = assign_splits(items, previous, ratios, salt)
    ordered = sorted(assigned.items())
    store.write_parquet(
        store_layout.DATASET_SPLIT_KEY,
        pa.Table.from_pylist([{"item_id": i, "split": s} for i, s in ordered], schema=SPLIT_SCHEMA),
    )
    counts = {name: 0 for name in ratios}
    for _, split in ordered:
        counts[split] += 1
    log.info("split: %s (%d kept from the previous split)", counts, sum(i in previous for i in assigned))
    report = stratum_report(items, assigned, attributes, ratios)
    store.write_json(store_layout.DATASET_SPLIT_REPORT_KEY, {"ratios": ratios, "strata": report})
    tolerance = float(settings.split.report_tolerance)
    for attribute, classes in report.items():
        for label, stats in classes.items():
            if stats["max_share_error"] > tolerance:
                log.warning(
                    "split: stratum %s=%s (%d items) is off the ratios by %.3f: %s",
                    attribute,
                    label,
                    stats["items"],
                    stats["max_share_error"],
                    stats["counts"],
                )
    return counts
