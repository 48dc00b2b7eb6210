"""Duplicate detection: exact copies by content hash, near copies by perceptual hash.

Two images are *near duplicates* when their 64-bit pHashes are within ``phash_max_distance`` bits and
their dHashes confirm it (within ``dhash_max_distance``): pHash finds candidates, dHash weeds out the
false ones pHash alone lets through. Matches are joined into clusters with union-find, so a chain
a~b~c forms one cluster even when a and c are not within the distance themselves.

Representative rule (one image kept per cluster): the largest resolution (width * height), then the
earliest seen (``crawled_at``), then the smallest ``item_id``. Its content hash is the ``cluster_id``:
it depends only on the cluster's content, so it is the same on every rerun.

Catalog photos share a layout (one garment, same silhouette, plain background), and 64-bit pHash and
dHash see little beyond the silhouette: on the demo catalog about 2% of pairs of *different* products
pass both thresholds (a striped and a solid sleeveless top, say). So when the caller supplies colour
thumbnails, a pair must also pass a third check: the mean absolute difference of their 16x16 RGB
thumbnails at most ``thumbnail_max_mad`` (a resized, recompressed copy stays under ~2.5 on the 0-255
scale; distinct demo products that fool both hashes are 7 and above).

The search is :class:`pipeline.hash_index.MultiIndexHashing` (exported here as
``NearDuplicateIndex``): an exact Hamming-radius search that is sub-quadratic (1M hashes in seconds,
see ``bench/near_duplicates.py``), with the same answers as brute force.

Across batches (``prior``): the new rows are also matched against the items kept by earlier batches
(the persistent hash index, see :mod:`pipeline.curate`). A cluster that contains an earlier kept item
keeps that earlier item, even when a new row would win the representative rule (larger, say): the
earlier item may already be reviewed, labelled, split and trained on, and swapping it would move the
dataset under everyone's feet. The new rows then become duplicates of it and take its ``cluster_id``.
A new row that bridges two earlier clusters joins the one whose item wins the rule; both earlier
items stay kept (what an earlier batch kept is never revoked).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.hash_index import HashIndex, MultiIndexHashing
from pipeline.hashing import hamming

EXACT = "exact"
NEAR = "near"
THUMBNAIL_SIDE = 16
THUMBNAIL_COLUMN = "thumbnail"
REQUIRED_COLUMNS = ("item_id", "content_sha256", "phash", "dhash", "width", "height", "crawled_at")
# Columns a ``prior`` frame (items kept by earlier batches) needs on top of REQUIRED_COLUMNS.
PRIOR_COLUMNS = ("cluster_id", "batch_id")

NearDuplicateIndex = MultiIndexHashing
__all__ = ["HashIndex", "NearDuplicateIndex", "UnionFind", "DedupResult", "colour_thumbnail", "thumbnail_mad",
           "find_near_pairs", "find_prior_matches", "deduplicate"]


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


@dataclass(frozen=True)
class DedupResult:
    """``kept``: one row per cluster (input columns + ``cluster_id``), sorted by item_id.
    ``duplicates``: ``item_id, kept_item_id, kind, distance`` for every dropped row, sorted by item_id.
    ``clusters``: every input row's ``item_id`` and ``cluster_id``."""

    kept: pd.DataFrame
    duplicates: pd.DataFrame
    clusters: pd.DataFrame


def colour_thumbnail(image: Image.Image) -> np.ndarray:
    """A 16x16 RGB uint8 thumbnail (768 bytes): the colour evidence the 64-bit hashes lack."""
    small = image.convert("RGB").resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.uint8)


def thumbnail_mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, on the 0-255 scale."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _confirmed(i: np.ndarray, j: np.ndarray, dhash_i: np.ndarray, dhash_j: np.ndarray,
               dhash_max_distance: int, thumbnails_i: list[np.ndarray] | None,
               thumbnails_j: list[np.ndarray] | None, thumbnail_max_mad: float | None) -> list[tuple[int, int]]:
    """The pHash candidate pairs (i, j) that dHash (and the thumbnails, when given) confirm."""
    if len(i) == 0:
        return []
    confirmed = hamming(dhash_i[i], dhash_j[j]) <= dhash_max_distance
    pairs = list(zip(i[confirmed].tolist(), j[confirmed].tolist()))
    if thumbnails_i is None or thumbnails_j is None or thumbnail_max_mad is None:
        return pairs
    return [(a, b) for a, b in pairs if thumbnail_mad(thumbnails_i[a], thumbnails_j[b]) <= thumbnail_max_mad]


def find_near_pairs(
    phash: np.ndarray,
    dhash: np.ndarray,
    phash_max_distance: int,
    dhash_max_distance: int,
    thumbnails: list[np.ndarray] | None = None,
    thumbnail_max_mad: float | None = None,
) -> Iterator[tuple[int, int]]:
    """Pairs (i, j), i < j, that are pHash candidates confirmed by dHash (and by thumbnails when given)."""
    i, j, _ = NearDuplicateIndex(phash).pairs_within(phash_max_distance)
    return iter(_confirmed(i, j, dhash, dhash, dhash_max_distance, thumbnails, thumbnails, thumbnail_max_mad))


def find_prior_matches(
    phash: np.ndarray,
    dhash: np.ndarray,
    prior_phash: np.ndarray,
    prior_dhash: np.ndarray,
    phash_max_distance: int,
    dhash_max_distance: int,
    thumbnails: list[np.ndarray] | None = None,
    prior_thumbnails: list[np.ndarray] | None = None,
    thumbnail_max_mad: float | None = None,
) -> list[tuple[int, int]]:
    """Pairs (new row, prior row) that are near duplicates by the same three checks."""
    i, j, _ = NearDuplicateIndex(prior_phash).query(phash, phash_max_distance)
    return _confirmed(i, j, dhash, prior_dhash, dhash_max_distance, thumbnails, prior_thumbnails,
                      thumbnail_max_mad)


def _representative_order(frame: pd.DataFrame, earlier: np.ndarray | None = None) -> np.ndarray:
    """Row positions in preference order: rows kept by earlier batches first (``earlier``), then the
    largest area, the earliest crawled_at, the smallest item_id."""
    order = pd.DataFrame({
        "later": np.zeros(len(frame), dtype=np.int8) if earlier is None else (~earlier).astype(np.int8),
        "area": -(frame["width"].astype("int64").to_numpy() * frame["height"].astype("int64").to_numpy()),
        "crawled_at": pd.to_datetime(frame["crawled_at"], utc=True).to_numpy(),
        "item_id": frame["item_id"].astype(str).to_numpy(),
        "pos": np.arange(len(frame)),
    }).sort_values(["later", "area", "crawled_at", "item_id"], kind="mergesort", na_position="last")
    return order["pos"].to_numpy()


def _check_columns(frame: pd.DataFrame, needed: tuple[str, ...], what: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"deduplicate needs columns {missing} ({what})")


def _thumbnails(frame: pd.DataFrame) -> list[np.ndarray] | None:
    return frame[THUMBNAIL_COLUMN].tolist() if THUMBNAIL_COLUMN in frame.columns else None


def deduplicate(
    frame: pd.DataFrame,
    phash_max_distance: int,
    dhash_max_distance: int,
    thumbnail_max_mad: float | None = None,
    prior: pd.DataFrame | None = None,
) -> DedupResult:
    """Collapse exact and near duplicates in ``frame`` (columns :data:`REQUIRED_COLUMNS`).

    With a ``thumbnail`` column (see :func:`colour_thumbnail`) and ``thumbnail_max_mad``, near pairs
    must also pass the thumbnail check. The ``thumbnail`` column is not carried into the results.

    ``prior``: items kept by earlier batches (:data:`REQUIRED_COLUMNS` plus :data:`PRIOR_COLUMNS`,
    and ``thumbnail`` when ``frame`` has one). They are never dropped or re-clustered; a cluster that
    contains one keeps it (see the module docstring). ``duplicates`` then has a ``kept_batch_id``
    column: the prior item's batch, or null when the kept item is in ``frame``.
    """
    _check_columns(frame, REQUIRED_COLUMNS, "input")
    if prior is None:
        prior = pd.DataFrame(columns=[*REQUIRED_COLUMNS, *PRIOR_COLUMNS])
    _check_columns(prior, (*REQUIRED_COLUMNS, *PRIOR_COLUMNS), "prior")
    frame = frame.reset_index(drop=True)
    prior = prior.reset_index(drop=True)
    n, p = len(frame), len(prior)
    combined = pd.concat([frame[list(REQUIRED_COLUMNS)], prior[list(REQUIRED_COLUMNS)]], ignore_index=True)
    sets = UnionFind(n + p)
    for _, positions in combined.groupby("content_sha256", sort=True).indices.items():
        for other in positions[1:]:
            sets.union(int(positions[0]), int(other))
    phash = frame["phash"].to_numpy(dtype=np.uint64)
    dhash = frame["dhash"].to_numpy(dtype=np.uint64)
    thumbnails = _thumbnails(frame)
    for i, j in find_near_pairs(phash, dhash, phash_max_distance, dhash_max_distance, thumbnails,
                                thumbnail_max_mad):
        sets.union(i, j)
    if p:
        for i, j in find_prior_matches(phash, dhash, prior["phash"].to_numpy(dtype=np.uint64),
                                       prior["dhash"].to_numpy(dtype=np.uint64), phash_max_distance,
                                       dhash_max_distance, thumbnails, _thumbnails(prior), thumbnail_max_mad):
            sets.union(i, n + j)
    frame = frame.drop(columns=[THUMBNAIL_COLUMN], errors="ignore")

    roots = sets.roots()
    representative: dict[int, int] = {}
    earlier = np.arange(n + p) >= n
    for pos in _representative_order(combined, earlier):
        representative.setdefault(int(roots[pos]), int(pos))
    rep_of = np.array([representative[int(r)] for r in roots[:n]], dtype=np.int64)

    sha = combined["content_sha256"].to_numpy()
    all_ids = combined["item_id"].to_numpy()
    # A new cluster is named by its representative's content hash; one with an earlier item keeps its id.
    cluster_names = np.concatenate([sha[:n], prior["cluster_id"].to_numpy()]).astype(object)
    cluster_id = cluster_names[rep_of] if n else np.array([], dtype=object)
    kept_batch = np.concatenate([np.full(n, None, dtype=object), prior["batch_id"].to_numpy().astype(object)])
    is_rep = rep_of == np.arange(n)
    kept = frame[is_rep].assign(cluster_id=cluster_id[is_rep])
    dropped = np.nonzero(~is_rep)[0]
    rep_phash = np.concatenate([phash, prior["phash"].to_numpy(dtype=np.uint64)])
    duplicates = pd.DataFrame({
        "item_id": frame["item_id"].to_numpy()[dropped],
        "kept_item_id": all_ids[rep_of[dropped]],
        "kind": np.where(sha[dropped] == sha[rep_of[dropped]], EXACT, NEAR).astype(object),
        # Distance to the kept image, which through a chain can exceed the threshold.
        "distance": hamming(phash[dropped], rep_phash[rep_of[dropped]]).astype(np.int64),
        "kept_batch_id": kept_batch[rep_of[dropped]],
    })
    clusters = pd.DataFrame({"item_id": frame["item_id"].to_numpy(), "cluster_id": cluster_id})
    return DedupResult(
        kept=kept.sort_values("item_id", kind="mergesort").reset_index(drop=True),
        duplicates=duplicates.sort_values("item_id", kind="mergesort").reset_index(drop=True),
        clusters=clusters.sort_values("item_id", kind="mergesort").reset_index(drop=True),
    )
