"""Exact Hamming-radius search over 64-bit hashes: brute force and multi-index hashing.

Both indexes answer the same two questions exactly (the same result sets, in the same order):
``query`` (every indexed hash within ``r`` bits of each query) and ``pairs_within`` (every pair of
indexed hashes within ``r`` bits of each other). :class:`HashIndex` is the brute-force base class;
:class:`MultiIndexHashing` overrides only the candidate generation.

Multi-index hashing (Norouzi, Punjani, Fleet 2012): split the 64 bits into ``m`` disjoint substrings.
Write ``r = s*m + a`` with ``0 <= a < m``. If two hashes are within ``r`` bits, then one of the first
``a + 1`` substrings is within ``s`` bits, or one of the others is within ``s - 1`` bits (otherwise the
total would be at least ``(a+1)(s+1) + (m-a-1)s = r + 1``). So each substring gets a table from its
value to the rows holding it, a query probes every value within that substring's radius (all XOR
masks of up to ``s`` or ``s - 1`` bits), and every row found is a *candidate* that is then verified by
the popcount of the full 64-bit XOR. Nothing within ``r`` is missed; nothing beyond ``r`` is returned.

Cost: probes per row (sum over substrings of C(b,0)+...+C(b,radius)) times a table lookup, plus the
candidates (about ``n / 2**b`` per probe) verified by popcount. :func:`choose_substrings` picks ``m``
by that cost model: at 100k and 1M hashes and r=8, three substrings of 22/21/21 bits (718 probes,
0.02 to 0.4 candidates per probe); at 20k, four of 16 bits (188 probes with the refined radii
2,1,1,1). The all-pairs search probes per distinct substring value and only towards larger values,
which halves the probes; see ``bench/near_duplicates.py`` for measured times against brute force.

Mirrored copies (:func:`query_with_mirrors`): the hashes of the horizontally mirrored images go through
the same exact search as the images' own hashes, in one query, so the index of a batch finds an image's
mirrored copy with no extra table and no approximation.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from math import comb

import numpy as np

# Cells (query rows x candidates or indexed rows) handled per numpy block: bounds scratch memory.
_BLOCK_CELLS = 4_000_000
# Largest substring width for which a dense bucket table (2**bits + 1 offsets) is built.
MAX_SUBSTRING_BITS = 24
# Cost of one table probe relative to verifying one candidate (measured on 100k random hashes: a
# vectorised probe ~15 ns, half of them skipped by the u < v rule; a candidate ~50 ns).
_PROBE_COST = 0.15
# Below this many hashes brute force wins (and avoids building tables).
MIN_INDEXED_FOR_MIH = 2_048

Triplet = tuple[np.ndarray, np.ndarray, np.ndarray]


def popcount64(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy's native popcount)."""
    return np.bitwise_count(values.astype(np.uint64, copy=False))


def _empty() -> Triplet:
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty.copy(), empty.copy()


def _concat(parts: list[Triplet]) -> Triplet:
    if not parts:
        return _empty()
    rows, cols, dist = (np.concatenate([p[k] for p in parts]).astype(np.int64) for k in range(3))
    return rows, cols, dist


def _sorted_triplet(rows: np.ndarray, cols: np.ndarray, dist: np.ndarray) -> Triplet:
    """Unique (row, col) pairs sorted by row then col, so every index returns the same order."""
    if len(rows) == 0:
        return _empty()
    order = np.lexsort((cols, rows))
    rows, cols, dist = rows[order], cols[order], dist[order]
    keep = np.ones(len(rows), dtype=bool)
    keep[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64), dist[keep].astype(np.int64)


class HashIndex:
    """Exact Hamming-radius search by brute force: every query against every indexed hash."""

    def __init__(self, hashes: np.ndarray) -> None:
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.hashes)

    def query(self, queries: np.ndarray, max_distance: int) -> Triplet:
        """Every (query row, indexed row, distance) with distance <= ``max_distance``, sorted."""
        queries = np.ascontiguousarray(queries, dtype=np.uint64)
        found: list[Triplet] = []
        step = max(1, _BLOCK_CELLS // max(1, len(self.hashes)))
        for start in range(0, len(queries), step):
            block = popcount64(queries[start : start + step, None] ^ self.hashes[None, :])
            rows, cols = np.nonzero(block <= max_distance)
            found.append((rows + start, cols, block[rows, cols]))
        return _concat(found)

    def pairs_within(self, max_distance: int) -> Triplet:
        """Every (i, j, distance) of indexed rows with i < j and distance <= ``max_distance``, sorted."""
        found: list[Triplet] = []
        n = len(self.hashes)
        step = max(1, _BLOCK_CELLS // max(1, n))
        for start in range(0, n, step):
            stop = min(start + step, n)
            block = popcount64(self.hashes[start:stop, None] ^ self.hashes[None, start:])
            rows, cols = np.nonzero(block <= max_distance)
            upper = cols > rows
            rows, cols = rows[upper], cols[upper]
            found.append((rows + start, cols + start, block[rows, cols]))
        return _concat(found)


def substring_widths(m: int) -> list[int]:
    """Widths of ``m`` disjoint substrings covering 64 bits, wider ones first (22/21/21 for m=3)."""
    base, extra = divmod(64, m)
    return [base + 1 if k < extra else base for k in range(m)]


def substring_radii(max_distance: int, m: int) -> list[int]:
    """Per-substring search radius by the refined pigeonhole rule (-1: that substring is not probed)."""
    s, a = divmod(max_distance, m)
    return [s if k <= a else s - 1 for k in range(m)]


def flip_masks(bits: int, radius: int) -> np.ndarray:
    """Every ``bits``-wide XOR mask with at most ``radius`` set bits (the probe offsets)."""
    masks = [0]
    for weight in range(1, radius + 1):
        masks.extend(sum(1 << b for b in combo) for combo in itertools.combinations(range(bits), weight))
    return np.array(masks, dtype=np.int64)


def estimated_cost(n_indexed: int, n_queries: int, max_distance: int, m: int) -> float:
    """Relative work of a search with ``m`` substrings: probes plus expected candidates."""
    widths, radii = substring_widths(m), substring_radii(max_distance, m)
    if max(widths) > MAX_SUBSTRING_BITS:
        return float("inf")
    total = 0.0
    for bits, radius in zip(widths, radii):
        if radius < 0:
            continue
        probes = sum(comb(bits, w) for w in range(radius + 1))
        total += probes * (_PROBE_COST + n_indexed / 2.0**bits)
    return n_queries * total


def choose_substrings(n_indexed: int, n_queries: int, max_distance: int) -> int:
    """The number of substrings (3..16) with the lowest :func:`estimated_cost`."""
    return min(range(3, 17), key=lambda m: (estimated_cost(n_indexed, n_queries, max_distance, m), m))


def substring_values(hashes: np.ndarray, shift: int, bits: int) -> np.ndarray:
    """Bits ``shift .. shift + bits - 1`` of every hash, as int32 (``bits`` <= 24)."""
    return ((hashes >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int32)


class MultiIndexHashing(HashIndex):
    """Exact Hamming-radius search by multi-index hashing (see the module docstring).

    Tables are built per search for the radius asked, because the best substring count depends on it.
    """

    def __init__(self, hashes: np.ndarray, substrings: int | None = None, workers: int = 1) -> None:
        super().__init__(hashes)
        self.substrings = substrings
        self.workers = max(1, int(workers))

    def _substrings(self, m: int) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
        """Per substring: (shift, bits, substring value of every row, rows sorted by that value)."""
        tables = []
        shift = 64
        for bits in substring_widths(m):
            shift -= bits
            keys = substring_values(self.hashes, shift, bits)
            tables.append((shift, bits, keys, np.argsort(keys, kind="stable")))
        return tables

    def _candidates(
        self, query_keys: np.ndarray, masks: np.ndarray, offsets: np.ndarray, order: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(query row, indexed row) for every indexed row whose key is some query key XOR a mask."""
        probed = (query_keys[:, None] ^ masks[None, :]).ravel()
        starts = offsets[probed]
        counts = offsets[probed + 1] - starts
        hit = counts > 0
        starts, counts = starts[hit], counts[hit]
        query_rows = np.repeat(np.arange(len(query_keys)), len(masks))[hit]
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        # Expand each bucket [start, start + count) into its positions in ``order``.
        first = np.cumsum(counts) - counts
        positions = np.arange(total, dtype=np.int64) - np.repeat(first - starts, counts)
        return np.repeat(query_rows, counts), order[positions]

    def _query_search(self, queries: np.ndarray, max_distance: int) -> Triplet:
        """Probe every query's substring neighbours in the tables of the indexed hashes."""
        queries = np.ascontiguousarray(queries, dtype=np.uint64)
        if len(self.hashes) == 0 or len(queries) == 0:
            return _empty()
        m = self.substrings or choose_substrings(len(self.hashes), len(queries), max_distance)
        found: list[Triplet] = []
        for (shift, bits, keys, order), radius in zip(self._substrings(m), substring_radii(max_distance, m)):
            if radius < 0:
                continue
            # CSR table: the rows holding value v are order[offsets[v]:offsets[v + 1]].
            offsets = np.zeros((1 << bits) + 1, dtype=np.int64)
            np.cumsum(np.bincount(keys, minlength=1 << bits), out=offsets[1:])
            masks = flip_masks(bits, radius)
            query_keys = substring_values(queries, shift, bits)
            step = max(1, _BLOCK_CELLS // len(masks))
            for start in range(0, len(queries), step):
                rows, cols = self._candidates(query_keys[start : start + step], masks, offsets, order)
                rows += start
                dist = popcount64(queries[rows] ^ self.hashes[cols])
                close = dist <= max_distance
                found.append((rows[close], cols[close], dist[close]))
        # A pair close in several substrings is found once per such substring.
        return _sorted_triplet(*_concat(found))

    def _self_join(self, max_distance: int) -> Triplet:
        """All pairs: each substring's search is independent, so they run on ``workers`` threads
        (numpy releases the GIL in the heavy array operations)."""
        n = len(self.hashes)
        m = self.substrings or choose_substrings(n, n, max_distance)
        jobs = [
            (bits, keys, order, radius)
            for (_, bits, keys, order), radius in zip(self._substrings(m), substring_radii(max_distance, m))
            if radius >= 0
        ]

        def join(job: tuple[int, np.ndarray, np.ndarray, int]) -> Triplet:
            return self._join_substring(*job, max_distance)

        if self.workers > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                parts = list(pool.map(join, jobs))
        else:
            parts = [join(job) for job in jobs]
        return _sorted_triplet(*_concat(parts))

    def _join_substring(
        self, bits: int, keys: np.ndarray, order: np.ndarray, radius: int, max_distance: int
    ) -> Triplet:
        """Pairs within ``max_distance`` among rows whose substring values are within ``radius``.

        Probes per distinct value (bucket) rather than per row, and only from the smaller value of a
        bucket pair (u < u ^ mask exactly when the mask's highest set bit is clear in u), so each
        unordered pair of buckets is visited once; pairs inside one bucket are enumerated directly.
        """
        values, first, counts = np.unique(keys[order], return_index=True, return_counts=True)
        slot = np.full(1 << bits, -1, dtype=np.int32)
        slot[values] = np.arange(len(values), dtype=np.int32)
        # Most probes miss: test them against a byte map (a quarter of the slot table's cache footprint)
        # and read the slot only for the hits.
        occupied = np.zeros(1 << bits, dtype=np.bool_)
        occupied[values] = True
        same = np.nonzero(counts > 1)[0]
        found = [self._verify(*_bucket_pairs(same, same, first, counts, order), max_distance)]
        masks = flip_masks(bits, radius)[1:].astype(np.int32)
        top_bit = np.floor(np.log2(masks)).astype(np.int32) if len(masks) else masks
        for bit in range(bits):
            group = masks[top_bit == bit]
            lower = np.nonzero((values >> bit) & 1 == 0)[0]
            if len(group) == 0 or len(lower) == 0:
                continue
            lower_values = values[lower][None, :]
            step = max(1, _BLOCK_CELLS // len(lower))
            for start in range(0, len(group), step):
                probed = (group[start : start + step, None] ^ lower_values).ravel()
                # flatnonzero on a flat bool array is several times faster than 2-D nonzero.
                hits = np.flatnonzero(occupied[probed])
                position = hits % len(lower)
                bucket_b = slot[probed[hits]].astype(np.int64)
                found.append(
                    self._verify(*_bucket_pairs(lower[position], bucket_b, first, counts, order), max_distance)
                )
        return _concat(found)

    def _verify(self, a: np.ndarray, b: np.ndarray, max_distance: int) -> Triplet:
        """The candidate pairs within ``max_distance``, as (smaller row, larger row, distance)."""
        dist = popcount64(self.hashes[a] ^ self.hashes[b])
        close = dist <= max_distance
        a, b = a[close], b[close]
        return np.minimum(a, b), np.maximum(a, b), dist[close]

    def query(self, queries: np.ndarray, max_distance: int) -> Triplet:
        if len(self.hashes) < MIN_INDEXED_FOR_MIH:
            return _sorted_triplet(*super().query(queries, max_distance))
        return self._query_search(queries, max_distance)

    def pairs_within(self, max_distance: int) -> Triplet:
        if len(self.hashes) < MIN_INDEXED_FOR_MIH:
            return _sorted_triplet(*super().pairs_within(max_distance))
        return self._self_join(max_distance)


def _bucket_pairs(
    bucket_a: np.ndarray, bucket_b: np.ndarray, first: np.ndarray, counts: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs of bucket pairs: every row of bucket a with every row of bucket b (a row of a bucket
    paired with itself: each unordered pair once)."""
    count_a, count_b = counts[bucket_a], counts[bucket_b]
    sizes = count_a * count_b
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if total == len(sizes):  # the common case with sparse buckets: one row each
        return order[first[bucket_a]], order[first[bucket_b]]
    pair = np.repeat(np.arange(len(sizes)), sizes)
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    offset_a, offset_b = np.divmod(within, count_b[pair])
    keep = (bucket_a[pair] != bucket_b[pair]) | (offset_a < offset_b)
    rows_a = order[first[bucket_a[pair]] + offset_a][keep]
    rows_b = order[first[bucket_b[pair]] + offset_b][keep]
    return rows_a, rows_b


def query_with_mirrors(
    index: HashIndex, hashes: np.ndarray, mirrors: np.ndarray, max_distance: int
) -> tuple[Triplet, Triplet]:
    """One search of ``index`` for two query sets: images' own hashes and the hashes of their mirror
    images (see :func:`pipeline.hashing.image_hashes`), so a mirrored copy of an indexed image is found
    as well. Returns the two triplets (query row, indexed row, distance), rows numbered within each set.

    Both sets go through the same exact search (the tables are built once), so nothing within
    ``max_distance`` is missed either way; the cost is that of one query with both sets.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    mirrors = np.ascontiguousarray(mirrors, dtype=np.uint64)
    rows, cols, dist = index.query(np.concatenate([hashes, mirrors]), max_distance)
    own = rows < len(hashes)
    return (rows[own], cols[own], dist[own]), (rows[~own] - len(hashes), cols[~own], dist[~own])
