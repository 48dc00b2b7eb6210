"""Duplicate detection: exact copies by content hash, near copies (also mirrored ones) by perceptual hash.

Two images are *near duplicates* when their 64-bit pHashes are within ``phash_max_distance`` bits and
their dHashes confirm it (within ``dhash_max_distance``): pHash finds candidates, dHash weeds out the
false ones pHash alone lets through. Matches are joined into clusters with union-find, so a chain
a~b~c forms one cluster even when a and c are not within the distance themselves.

Mirrored copies: with ``phash_mirror`` / ``dhash_mirror`` columns (the hashes of the horizontally
mirrored image, see :func:`pipeline.hashing.image_hashes`), a pair also matches when one image's mirror
hashes are within the same distances of the other's hashes and the mirrored thumbnail passes the
thumbnail check. Training augments with horizontal flips, so a flipped copy of a training image in the
test split would be leakage; this is what keeps the pair in one cluster. Rows whose mirror hashes are
missing (hash index files written before they existed) are still matched the other way round: their
hashes against the new rows' mirror hashes.

Representative rule (one image kept per cluster): the largest resolution (width * height), then the
earliest seen (``crawled_at``), then the smallest ``item_id``. Its content hash is the ``cluster_id``:
it depends only on the cluster's content, so it is the same on every rerun. A dropped row's ``kind`` is
``exact`` (same bytes as the kept image), ``near_mirror`` (its mirror pHash is closer to the kept
image's pHash than its own pHash is) or ``near``; ``distance`` is the closer of the two.

Catalog photos share a layout (one garment, same silhouette, plain background), and 64-bit pHash and
dHash see little beyond the silhouette: on the demo catalog about 2% of pairs of *different* products
pass both thresholds (a striped and a solid sleeveless top, say). So when the caller supplies colour
thumbnails, a pair must also pass a third check: :func:`thumbnail_distance` of their 16x16 RGB
thumbnails at most ``thumbnail_max_mad``. That distance is a mean absolute difference (0-255 scale)
after a global gain correction: the darker thumbnail is brightened by the least-squares gain (at least
1, at most :data:`MAX_GAIN`; values saturated in either thumbnail left out of the fit) and clipped at
255, the way an exposure or brightness edit clips. So a copy with +25% brightness is the same picture
(raw difference ~28, corrected ~1.5 on real photos) while a different colour of the same silhouette
is not: a hue change is no single gain, and a darker garment on an unchanged background is not either.
The numbers behind the threshold are in bench/README.md (``bench/dedup_quality.py``).

The search is :class:`pipeline.curation.hash_index.MultiIndexHashing` (exported here as
``NearDuplicateIndex``): an exact Hamming-radius search that is sub-quadratic (1M hashes in seconds,
see ``bench/near_duplicates.py``), with the same answers as brute force. Mirror matches are one more
exact query of the same index with the mirror hashes.

Across batches (``prior``): the new rows are also matched against the items kept by earlier batches
(the persistent hash index, see :mod:`pipeline.curation.curate`). A cluster that contains an earlier kept item
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

from pipeline.curation.hash_index import HashIndex, MultiIndexHashing, query_with_mirrors
from pipeline.hashing import hamming

EXACT = "exact"
NEAR = "near"
NEAR_MIRROR = "near_mirror"
THUMBNAIL_SIDE = 16
THUMBNAIL_COLUMN = "thumbnail"
REQUIRED_COLUMNS = ("item_id", "content_sha256", "phash", "dhash", "width", "height", "crawled_at")
# Optional columns: the hashes of the horizontally mirrored image (pipeline.hashing.image_hashes).
MIRROR_COLUMNS = ("phash_mirror", "dhash_mirror")
# Columns a ``prior`` frame (items kept by earlier batches) needs on top of REQUIRED_COLUMNS.
PRIOR_COLUMNS = ("cluster_id", "batch_id")
# Thumbnail gain correction: values at or above this (in either thumbnail) may be clipped, so they do
# not enter the gain fit; the gain is at most MAX_GAIN (one stop of exposure).
SATURATED = 250
MAX_GAIN = 2.0

NearDuplicateIndex = MultiIndexHashing
__all__ = [
    "HashIndex",
    "NearDuplicateIndex",
    "UnionFind",
    "DedupResult",
    "colour_thumbnail",
    "mirror_thumbnail",
    "thumbnail_mad",
    "thumbnail_distance",
    "find_near_pairs",
    "find_prior_matches",
    "HashedImages",
    "PriorMatchQuery",
    "deduplicate",
]


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


def mirror_thumbnail(thumbnail: np.ndarray) -> np.ndarray:
    """The thumbnail (or a stack of them) of the horizontally mirrored image."""
    return thumbnail[..., :, ::-1, :]


def thumbnail_mad(a: np.ndarray, b: np.ndarray) -> float:
    """Plain mean absolute difference of two thumbnails, on the 0-255 scale (no gain correction)."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def thumbnail_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Gain-corrected mean absolute difference of thumbnails ``a`` and ``b`` (0-255 scale).

    Works on one pair (``(16, 16, 3)`` each: a 0-d array) or on stacks of pairs (``(n, 16, 16, 3)``:
    ``n`` distances). Per pair, the darker thumbnail (lower mean) is multiplied by the least-squares
    gain towards the brighter one, fitted on the values below :data:`SATURATED` in both and kept in
    ``[1, MAX_GAIN]``, then clipped at 255; the result is the mean absolute difference to the brighter
    one. Identical thumbnails give 0; swapping ``a`` and ``b`` gives the same distance (unless their
    means tie exactly).
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    axes = (-3, -2, -1)
    darker_a = (a.mean(axis=axes) <= b.mean(axis=axes))[..., None, None, None]
    low, high = np.where(darker_a, a, b), np.where(darker_a, b, a)
    fit = (low < SATURATED) & (high < SATURATED)
    numerator = (low * high * fit).sum(axis=axes)
    denominator = (low * low * fit).sum(axis=axes)
    gain = np.clip(np.divide(numerator, denominator, out=np.ones_like(numerator), where=denominator > 0), 1.0, MAX_GAIN)
    predicted = np.minimum(low * gain[..., None, None, None], 255.0)
    return np.abs(predicted - high).mean(axis=axes).astype(np.float64)


def _confirm(
    i: np.ndarray,
    j: np.ndarray,
    dhash_i: np.ndarray,
    dhash_j: np.ndarray,
    dhash_max_distance: int,
    thumbnails_i: np.ndarray | None,
    thumbnails_j: np.ndarray | None,
    thumbnail_max_mad: float | None,
    mirror_i: bool = False,
) -> list[tuple[int, int]]:
    """The pHash candidate pairs (i, j) that dHash (and the thumbnails, when given) confirm.

    ``dhash_i`` and ``thumbnails_i`` are row i's own or (``mirror_i``) its mirror image's."""
    if len(i) == 0:
        return []
    keep = hamming(dhash_i[i], dhash_j[j]) <= dhash_max_distance
    i, j = i[keep], j[keep]
    if len(i) and thumbnails_i is not None and thumbnails_j is not None and thumbnail_max_mad is not None:
        left = thumbnails_i[i]
        keep = thumbnail_distance(mirror_thumbnail(left) if mirror_i else left, thumbnails_j[j]) <= thumbnail_max_mad
        i, j = i[keep], j[keep]
    return list(zip(i.tolist(), j.tolist()))


@dataclass(frozen=True)
class _Side:
    """One side of a search: hashes, mirror hashes (0 where unknown), which rows have mirror hashes,
    and the thumbnails stacked (or None)."""

    phash: np.ndarray
    dhash: np.ndarray
    phash_mirror: np.ndarray
    dhash_mirror: np.ndarray
    has_mirror: np.ndarray
    thumbnails: np.ndarray | None


def _optional_uint64(values, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(values as uint64 with 0 where missing, present mask) of a column that may be absent or hold nulls
    (a numpy/pandas uint64 column, a pandas ``UInt64`` one, or a list of ints and Nones)."""
    if values is None:
        return np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=bool)
    dtype = getattr(values, "dtype", None)
    if dtype == np.dtype(np.uint64):
        return np.asarray(values, dtype=np.uint64), np.ones(n, dtype=bool)
    if isinstance(dtype, pd.UInt64Dtype):
        series = pd.Series(values)
        return series.to_numpy(dtype=np.uint64, na_value=0), series.notna().to_numpy()
    # Element by element: a float conversion would lose the low bits of a 64-bit hash.
    items = list(values)
    present = np.array([v is not None and not pd.isna(v) for v in items], dtype=bool)
    return np.array([int(v) if ok else 0 for v, ok in zip(items, present)], dtype=np.uint64), present


def _side(phash, dhash, phash_mirror=None, dhash_mirror=None, thumbnails=None) -> _Side:
    phash = np.asarray(phash, dtype=np.uint64)
    n = len(phash)
    pm, p_ok = _optional_uint64(phash_mirror, n)
    dm, d_ok = _optional_uint64(dhash_mirror, n)
    stacked = None
    if thumbnails is not None:
        stacked = (
            np.stack([np.asarray(t, dtype=np.uint8) for t in thumbnails])
            if n
            else np.zeros((0, THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3), dtype=np.uint8)
        )
    return _Side(phash, np.asarray(dhash, dtype=np.uint64), pm, dm, p_ok & d_ok, stacked)


def _frame_side(frame: pd.DataFrame) -> _Side:
    def column(name: str):
        return frame[name] if name in frame.columns else None

    thumbnails = frame[THUMBNAIL_COLUMN].tolist() if THUMBNAIL_COLUMN in frame.columns else None
    return _side(
        frame["phash"].to_numpy(dtype=np.uint64),
        frame["dhash"].to_numpy(dtype=np.uint64),
        column("phash_mirror"),
        column("dhash_mirror"),
        thumbnails,
    )


def _mirror_candidates(
    queries: _Side, index: HashIndex, max_distance: int, with_originals: bool
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """pHash candidates of the query rows' own images (when ``with_originals``) and of their mirror
    images (rows with mirror hashes), from one search of ``index``: ((rows, indexed), (rows, indexed))."""
    rows = np.flatnonzero(queries.has_mirror)
    own = queries.phash if with_originals else queries.phash[:0]
    (i, j, _), (q, k, _) = query_with_mirrors(index, own, queries.phash_mirror[rows], max_distance)
    return (i, j), (rows[q], k)


def _near_pairs(
    side: _Side, phash_max_distance: int, dhash_max_distance: int, thumbnail_max_mad: float | None
) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, within one side: direct, or one image mirrored (both orientations searched)."""
    index = NearDuplicateIndex(side.phash)
    i, j, _ = index.pairs_within(phash_max_distance)
    found = _confirm(
        i, j, side.dhash, side.dhash, dhash_max_distance, side.thumbnails, side.thumbnails, thumbnail_max_mad
    )
    _, (i, j) = _mirror_candidates(side, index, phash_max_distance, with_originals=False)
    other = i != j  # a symmetric image's mirror image is itself
    found += _confirm(
        i[other],
        j[other],
        side.dhash_mirror,
        side.dhash,
        dhash_max_distance,
        side.thumbnails,
        side.thumbnails,
        thumbnail_max_mad,
        mirror_i=True,
    )
    return sorted({(min(a, b), max(a, b)) for a, b in found})


def _prior_pairs(
    new: _Side, prior: _Side, phash_max_distance: int, dhash_max_distance: int, thumbnail_max_mad: float | None
) -> list[tuple[int, int]]:
    """Pairs (new row, prior row): the new images and their mirror images against the prior images, and
    the prior rows' mirror images (where the index has them) against the new images."""
    if len(new.phash) == 0 or len(prior.phash) == 0:
        return []
    (i, j), (mi, mj) = _mirror_candidates(new, NearDuplicateIndex(prior.phash), phash_max_distance, with_originals=True)
    found = _confirm(
        i, j, new.dhash, prior.dhash, dhash_max_distance, new.thumbnails, prior.thumbnails, thumbnail_max_mad
    )
    found += _confirm(
        mi,
        mj,
        new.dhash_mirror,
        prior.dhash,
        dhash_max_distance,
        new.thumbnails,
        prior.thumbnails,
        thumbnail_max_mad,
        mirror_i=True,
    )
    _, (pj, pi) = _mirror_candidates(prior, NearDuplicateIndex(new.phash), phash_max_distance, with_originals=False)
    found += [
        (a, b)
        for b, a in _confirm(
            pj,
            pi,
            prior.dhash_mirror,
            new.dhash,
            dhash_max_distance,
            prior.thumbnails,
            new.thumbnails,
            thumbnail_max_mad,
            mirror_i=True,
        )
    ]
    return sorted(set(found))


def find_near_pairs(
    phash: np.ndarray,
    dhash: np.ndarray,
    phash_max_distance: int,
    dhash_max_distance: int,
    thumbnails: list[np.ndarray] | np.ndarray | None = None,
    thumbnail_max_mad: float | None = None,
    phash_mirror: np.ndarray | None = None,
    dhash_mirror: np.ndarray | None = None,
) -> Iterator[tuple[int, int]]:
    """Pairs (i, j), i < j, that are pHash candidates confirmed by dHash (and by thumbnails when given),
    directly or (with mirror hashes) one of them mirrored; each pair once, sorted."""
    side = _side(phash, dhash, phash_mirror, dhash_mirror, thumbnails)
    return iter(_near_pairs(side, phash_max_distance, dhash_max_distance, thumbnail_max_mad))


@dataclass(frozen=True, eq=False)
class HashedImages:
    """One side of a search as the caller has it: per row the pHash and dHash, optionally those of the
    mirrored image (absent, or null for some rows: hash index files written before they existed) and
    the colour thumbnails (:func:`colour_thumbnail`)."""

    phash: np.ndarray
    dhash: np.ndarray
    phash_mirror: np.ndarray | None = None
    dhash_mirror: np.ndarray | None = None
    thumbnails: list[np.ndarray] | np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class PriorMatchQuery:
    """Which ``new`` images are near duplicates of which ``prior`` ones: pHash candidates within
    ``phash_max_distance`` bits, confirmed by dHash within ``dhash_max_distance`` and, when both sides
    have thumbnails and ``thumbnail_max_mad`` is given, by :func:`thumbnail_distance`."""

    new: HashedImages
    prior: HashedImages
    phash_max_distance: int
    dhash_max_distance: int
    thumbnail_max_mad: float | None = None


def find_prior_matches(query: PriorMatchQuery) -> list[tuple[int, int]]:
    """Pairs (new row, prior row) that are near duplicates by the same checks, each pair once, sorted.
    A row without mirror hashes is still matched through the other side's mirror hashes."""
    new = _images_side(query.new)
    prior = _images_side(query.prior)
    thumbnail_max_mad = query.thumbnail_max_mad
    if new.thumbnails is None or prior.thumbnails is None:
        thumbnail_max_mad = None
    return _prior_pairs(new, prior, query.phash_max_distance, query.dhash_max_distance, thumbnail_max_mad)


def _images_side(images: HashedImages) -> _Side:
    return _side(images.phash, images.dhash, images.phash_mirror, images.dhash_mirror, images.thumbnails)


def _representative_order(frame: pd.DataFrame, earlier: np.ndarray | None = None) -> np.ndarray:
    """Row positions in preference order: rows kept by earlier batches first (``earlier``), then the
    largest area, the earliest crawled_at, the smallest item_id."""
    order = pd.DataFrame(
        {
            "later": np.zeros(len(frame), dtype=np.int8) if earlier is None else (~earlier).astype(np.int8),
            "area": -(frame["width"].astype("int64").to_numpy() * frame["height"].astype("int64").to_numpy()),
            "crawled_at": pd.to_datetime(frame["crawled_at"], utc=True).to_numpy(),
            "item_id": frame["item_id"].astype(str).to_numpy(),
            "pos": np.arange(len(frame)),
        }
    ).sort_values(["later", "area", "crawled_at", "item_id"], kind="mergesort", na_position="last")
    return order["pos"].to_numpy()


def _check_columns(frame: pd.DataFrame, needed: tuple[str, ...], what: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"deduplicate needs columns {missing} ({what})")


def deduplicate(
    frame: pd.DataFrame,
    phash_max_distance: int,
    dhash_max_distance: int,
    thumbnail_max_mad: float | None = None,
    prior: pd.DataFrame | None = None,
) -> DedupResult:
    """Collapse exact and near duplicates in ``frame`` (columns :data:`REQUIRED_COLUMNS`).

    With :data:`MIRROR_COLUMNS` (``phash_mirror``, ``dhash_mirror``; nulls allowed), mirrored copies
    are near duplicates too. With a ``thumbnail`` column (see :func:`colour_thumbnail`) and
    ``thumbnail_max_mad``, near pairs must also pass the thumbnail check (:func:`thumbnail_distance`).
    The ``thumbnail`` column is not carried into the results.

    ``prior``: items kept by earlier batches (:data:`REQUIRED_COLUMNS` plus :data:`PRIOR_COLUMNS`,
    optionally the mirror columns, and ``thumbnail`` when ``frame`` has one). They are never dropped or
    re-clustered; a cluster that contains one keeps it (see the module docstring). ``duplicates`` then
    has a ``kept_batch_id`` column: the prior item's batch, or null when the kept item is in ``frame``.
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
    new = _frame_side(frame)
    for i, j in _near_pairs(new, phash_max_distance, dhash_max_distance, thumbnail_max_mad):
        sets.union(i, j)
    if p:
        earlier = _frame_side(prior)
        # The thumbnail check needs thumbnails on both sides.
        check = thumbnail_max_mad if new.thumbnails is not None and earlier.thumbnails is not None else None
        for i, j in _prior_pairs(new, earlier, phash_max_distance, dhash_max_distance, check):
            sets.union(i, n + j)
    frame = frame.drop(columns=[THUMBNAIL_COLUMN], errors="ignore")

    roots = sets.roots()
    representative: dict[int, int] = {}
    is_earlier = np.arange(n + p) >= n
    for pos in _representative_order(combined, is_earlier):
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
    rep_phash = np.concatenate([new.phash, prior["phash"].to_numpy(dtype=np.uint64)])[rep_of[dropped]]
    # Distance to the kept image (through a chain it can exceed the threshold), own or mirror image's.
    direct = hamming(new.phash[dropped], rep_phash).astype(np.int64)
    mirrored = np.where(new.has_mirror[dropped], hamming(new.phash_mirror[dropped], rep_phash), 65).astype(np.int64)
    exact = sha[dropped] == sha[rep_of[dropped]]
    duplicates = pd.DataFrame(
        {
            "item_id": frame["item_id"].to_numpy()[dropped],
            "kept_item_id": all_ids[rep_of[dropped]],
            "kind": np.where(exact, EXACT, np.where(mirrored < direct, NEAR_MIRROR, NEAR)).astype(object),
            "distance": np.where(exact, direct, np.minimum(direct, mirrored)).astype(np.int64),
            "kept_batch_id": kept_batch[rep_of[dropped]],
        }
    )
    clusters = pd.DataFrame({"item_id": frame["item_id"].to_numpy(), "cluster_id": cluster_id})
    return DedupResult(
        kept=kept.sort_values("item_id", kind="mergesort").reset_index(drop=True),
        duplicates=duplicates.sort_values("item_id", kind="mergesort").reset_index(drop=True),
        clusters=clusters.sort_values("item_id", kind="mergesort").reset_index(drop=True),
    )
