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

The search is :class:`NearDuplicateIndex`, an exact brute-force all-pairs scan in blocks; it is
small on purpose so that a multi-index-hashing index can replace it with the same two methods.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.hashing import hamming

EXACT = "exact"
NEAR = "near"
# Cells (query rows x indexed hashes) compared per block; hamming() materialises 8 bytes per cell,
# so this bounds one block's scratch memory to a few tens of MB.
_BLOCK_CELLS = 2_000_000
THUMBNAIL_SIDE = 16
THUMBNAIL_COLUMN = "thumbnail"
REQUIRED_COLUMNS = ("item_id", "content_sha256", "phash", "dhash", "width", "height", "crawled_at")


class NearDuplicateIndex:
    """Exact Hamming-radius search over 64-bit hashes (brute force, in blocks)."""

    def __init__(self, hashes: np.ndarray) -> None:
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.hashes)

    def _block_rows(self) -> int:
        return max(1, _BLOCK_CELLS // max(1, len(self.hashes)))

    def query(self, queries: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (query row, indexed row, distance) with distance <= ``max_distance``."""
        queries = np.ascontiguousarray(queries, dtype=np.uint64)
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        step = self._block_rows()
        for start in range(0, len(queries), step):
            block = hamming(queries[start:start + step, None], self.hashes[None, :])
            rows, cols = np.nonzero(block <= max_distance)
            found.append((rows + start, cols, block[rows, cols]))
        return _concat(found)

    def pairs_within(self, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair (i, j, distance) of indexed rows with i < j and distance <= ``max_distance``."""
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        step = self._block_rows()
        for start in range(0, len(self.hashes), step):
            stop = min(start + step, len(self.hashes))
            # Compare the block with itself and everything after it; keep the upper triangle.
            block = hamming(self.hashes[start:stop, None], self.hashes[None, start:])
            rows, cols = np.nonzero(block <= max_distance)
            upper = cols > rows
            rows, cols = rows[upper], cols[upper]
            found.append((rows + start, cols + start, block[rows, cols]))
        return _concat(found)


def _concat(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    return tuple(np.concatenate([p[k] for p in parts]).astype(np.int64) for k in range(3))  # type: ignore[return-value]


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


def find_near_pairs(
    phash: np.ndarray,
    dhash: np.ndarray,
    phash_max_distance: int,
    dhash_max_distance: int,
    thumbnails: list[np.ndarray] | None = None,
    thumbnail_max_mad: float | None = None,
) -> Iterator[tuple[int, int]]:
    """Pairs (i, j) that are pHash candidates confirmed by dHash (and by thumbnails when given)."""
    i, j, _ = NearDuplicateIndex(phash).pairs_within(phash_max_distance)
    if len(i) == 0:
        return iter(())
    confirmed = hamming(dhash[i], dhash[j]) <= dhash_max_distance
    pairs = zip(i[confirmed].tolist(), j[confirmed].tolist())
    if thumbnails is None or thumbnail_max_mad is None:
        return pairs
    return ((a, b) for a, b in pairs if thumbnail_mad(thumbnails[a], thumbnails[b]) <= thumbnail_max_mad)


def _representative_order(frame: pd.DataFrame) -> np.ndarray:
    """Row positions in preference order: largest area, earliest crawled_at, smallest item_id."""
    order = pd.DataFrame({
        "area": -(frame["width"].astype("int64").to_numpy() * frame["height"].astype("int64").to_numpy()),
        "crawled_at": frame["crawled_at"].to_numpy(),
        "item_id": frame["item_id"].astype(str).to_numpy(),
        "pos": np.arange(len(frame)),
    }).sort_values(["area", "crawled_at", "item_id"], kind="mergesort", na_position="last")
    return order["pos"].to_numpy()


def deduplicate(
    frame: pd.DataFrame,
    phash_max_distance: int,
    dhash_max_distance: int,
    thumbnail_max_mad: float | None = None,
) -> DedupResult:
    """Collapse exact and near duplicates in ``frame`` (columns :data:`REQUIRED_COLUMNS`).

    With a ``thumbnail`` column (see :func:`colour_thumbnail`) and ``thumbnail_max_mad``, near pairs
    must also pass the thumbnail check. The ``thumbnail`` column is not carried into the results.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"deduplicate needs columns {missing}")
    frame = frame.reset_index(drop=True)
    n = len(frame)
    sets = UnionFind(n)
    for _, positions in frame.groupby("content_sha256", sort=True).indices.items():
        for other in positions[1:]:
            sets.union(int(positions[0]), int(other))
    phash = frame["phash"].to_numpy(dtype=np.uint64)
    dhash = frame["dhash"].to_numpy(dtype=np.uint64)
    thumbnails = frame[THUMBNAIL_COLUMN].tolist() if THUMBNAIL_COLUMN in frame.columns else None
    for i, j in find_near_pairs(phash, dhash, phash_max_distance, dhash_max_distance, thumbnails,
                                thumbnail_max_mad):
        sets.union(i, j)
    frame = frame.drop(columns=[THUMBNAIL_COLUMN], errors="ignore")

    roots = sets.roots()
    representative: dict[int, int] = {}
    for pos in _representative_order(frame):
        representative.setdefault(int(roots[pos]), int(pos))
    rep_of = np.array([representative[int(r)] for r in roots], dtype=np.int64) if n else np.zeros(0, np.int64)

    sha = frame["content_sha256"].to_numpy()
    cluster_id = sha[rep_of] if n else np.array([], dtype=object)
    is_rep = rep_of == np.arange(n)
    kept = frame[is_rep].assign(cluster_id=cluster_id[is_rep])
    dropped = np.nonzero(~is_rep)[0]
    duplicates = pd.DataFrame({
        "item_id": frame["item_id"].to_numpy()[dropped],
        "kept_item_id": frame["item_id"].to_numpy()[rep_of[dropped]],
        "kind": np.where(sha[dropped] == sha[rep_of[dropped]], EXACT, NEAR).astype(object),
        # Distance to the kept image, which through a chain can exceed the threshold.
        "distance": hamming(phash[dropped], phash[rep_of[dropped]]).astype(np.int64),
    })
    clusters = pd.DataFrame({"item_id": frame["item_id"].to_numpy(), "cluster_id": cluster_id})
    return DedupResult(
        kept=kept.sort_values("item_id", kind="mergesort").reset_index(drop=True),
        duplicates=duplicates.sort_values("item_id", kind="mergesort").reset_index(drop=True),
        clusters=clusters.sort_values("item_id", kind="mergesort").reset_index(drop=True),
    )
