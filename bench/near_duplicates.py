"""Near-duplicate search at scale: multi-index hashing against brute force on random 64-bit hashes.

For each size, random hashes get planted near duplicates (copies with 0..radius random bits flipped).
At 100k the brute force runs in full and the result sets must be identical; at 1M the brute force is
timed on a sample of rows and extrapolated (stated in the output), and MIH must find every planted pair.
Then the mirror search curation runs on top (``query_with_mirrors``: every row's own hash and its
"mirror" hash, here random hashes with planted near copies of other rows, against the index): timed
in full, checked against brute force on a sample of query rows. Exits non-zero when a check fails.

    python -m bench.near_duplicates [--sizes 100000 1000000] [--radius 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.curation.hash_index import HashIndex, MultiIndexHashing, choose_substrings, query_with_mirrors  # noqa: E402

FULL_BRUTE_FORCE_UP_TO = 200_000
SAMPLE_ROWS = 2_000


def planted_hashes(n: int, radius: int, share: float, seed: int) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """``n`` random hashes where a ``share`` of them are copies of others with <= radius flipped bits."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    copies = int(n * share)
    # Targets and sources are disjoint, so no planted copy is overwritten by a later one.
    permutation = rng.permutation(n)
    targets = permutation[:copies]
    sources = rng.choice(permutation[copies:], size=copies)
    planted: set[tuple[int, int]] = set()
    for target, source, flips in zip(targets, sources, rng.integers(0, radius + 1, size=copies)):
        if target == source:
            continue
        mask = np.uint64(0)
        for bit in rng.choice(64, size=flips, replace=False):
            mask |= np.uint64(1) << np.uint64(bit)
        hashes[target] = hashes[source] ^ mask
        planted.add((min(target, source), max(target, source)))
    return hashes, planted


def brute_force_seconds_from_sample(hashes: np.ndarray, radius: int, rng: np.random.Generator) -> float:
    """All-pairs brute-force time extrapolated from a sample of rows (each row against all others)."""
    rows = hashes[rng.choice(len(hashes), size=SAMPLE_ROWS, replace=False)]
    start = time.perf_counter()
    HashIndex(hashes).query(rows, radius)
    per_row = (time.perf_counter() - start) / SAMPLE_ROWS
    return per_row * len(hashes) / 2  # all pairs = half the row-against-all work


def run(n: int, radius: int, seed: int) -> bool:
    hashes, planted = planted_hashes(n, radius, share=0.05, seed=seed)
    m = choose_substrings(n, n, radius)
    start = time.perf_counter()
    i, j, _ = MultiIndexHashing(hashes).pairs_within(radius)
    mih_s = time.perf_counter() - start
    found = set(zip(i.tolist(), j.tolist()))
    ok = planted <= found
    if n <= FULL_BRUTE_FORCE_UP_TO:
        start = time.perf_counter()
        bi, bj, bd = HashIndex(hashes).pairs_within(radius)
        brute_s = time.perf_counter() - start
        identical = found == set(zip(bi.tolist(), bj.tolist())) and len(found) == len(bi)
        how = "full"
        ok = ok and identical
    else:
        brute_s = brute_force_seconds_from_sample(hashes, radius, np.random.default_rng(seed + 1))
        identical = None
        how = f"extrapolated from {SAMPLE_ROWS} rows"
    print(
        f"n={n:>9,} r={radius} substrings={m}: MIH {mih_s:8.2f} s, brute force {brute_s:9.1f} s ({how}), "
        f"speedup {brute_s / mih_s:6.1f}x, pairs {len(found):,} (planted {len(planted):,} all found: "
        f"{planted <= found}), identical to brute force: {identical}"
    )
    return ok and mirror_run(hashes, radius, seed)


def mirror_run(hashes: np.ndarray, radius: int, seed: int) -> bool:
    """One query with every row's own hash and a mirror hash (a tenth planted near another row)."""
    rng = np.random.default_rng(seed + 2)
    n = len(hashes)
    mirrors = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    planted = rng.choice(n, size=n // 10, replace=False)
    mirrors[planted] = hashes[rng.integers(0, n, size=len(planted))] ^ (np.uint64(1) << np.uint64(radius))
    start = time.perf_counter()
    (oi, oj, _), (mi, mj, _) = query_with_mirrors(MultiIndexHashing(hashes), hashes, mirrors, radius)
    mih_s = time.perf_counter() - start
    sample = np.sort(rng.choice(n, size=SAMPLE_ROWS, replace=False))
    start = time.perf_counter()
    bi, bj, _ = HashIndex(hashes).query(mirrors[sample], radius)
    brute_s = (time.perf_counter() - start) / SAMPLE_ROWS * 2 * n
    in_sample = np.isin(mi, sample)
    expected = set(zip(sample[bi].tolist(), bj.tolist()))
    identical = set(zip(mi[in_sample].tolist(), mj[in_sample].tolist())) == expected
    found_planted = np.isin(planted, mi).all()
    print(
        f"          own + mirror queries ({2 * n:,}): MIH {mih_s:8.2f} s, brute force {brute_s:9.1f} s "
        f"(extrapolated from {SAMPLE_ROWS} rows), speedup {brute_s / mih_s:6.1f}x, {len(oi):,} own and "
        f"{len(mi):,} mirror matches; sample identical to brute force: {identical}, planted found: {found_planted}"
    )
    return identical and bool(found_planted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--radius", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    results = [run(n, args.radius, args.seed) for n in args.sizes]
    if not all(results):
        print("FAILED: result sets differ or planted pairs were missed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
