"""Scoring speed: one user's profile of 10 images against 1M repository items, top-100, on 2 cores,
next to a plain Python loop over 10k items in the same run.

Synthetic fashion vectors (the taxonomy's 4 attributes: random classes with softmax vectors that agree
with them; random L2-normalised float32 embeddings of ``--dims`` dimensions) go straight into
``pipeline.recommend.scoring.FashionMatrix``; what is timed is what ``pipeline.recommend.ranking.rank`` does per user
after the repository is in memory:

- ``score+select``: the components the kind needs (``scoring.components``) and the top 100 of the
  eligible items (``scoring.select``: argpartition, deterministic tie-breaks, MMR over a pool of 200
  when lambda < 1);
- ``exclusions``: the own-image check (pHash of each of the 10 profile images and its mirror image
  against every item's pHash, popcount) and the already-shown check (500 shown item ids, ``is_in``).

The Python loop computes the same hybrid score (matches, weighted, max cosine, standardised,
combined) item by item over the first 10k items and sorts; its top 100 must equal numpy's on the same
10k items (checked). ``--arrow`` also times converting a 1M-row Arrow table into the matrix (done once
per batch of users, not per user).

    python -m bench.recommend_scoring [--items 1000000] [--dims 512 2048] [--threads 2] [--arrow]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _set_threads(argv: list[str] | None) -> None:
    """BLAS threads must be fixed before numpy loads."""
    args = list(sys.argv[1:] if argv is None else argv)
    threads = args[args.index("--threads") + 1] if "--threads" in args else "2"
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = threads


def make_repository(n: int, dims: int, seed: int = 0):
    """A FashionMatrix of n synthetic items plus ids and pHashes."""
    import numpy as np

    from pipeline.recommend.scoring import FashionMatrix
    from pipeline.settings import get_settings

    taxonomy = get_settings().taxonomy
    attributes = tuple(taxonomy.names)
    rng = np.random.default_rng(seed)
    codes = np.empty((n, len(attributes)), dtype=np.int16)
    top_prob = np.empty((n, len(attributes)), dtype=np.float32)
    probs = []
    for a, attribute in enumerate(attributes):
        logits = rng.standard_normal((n, len(taxonomy.classes(attribute))), dtype=np.float32) * 2
        softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
        softmax /= softmax.sum(axis=1, keepdims=True)
        codes[:, a] = softmax.argmax(axis=1)
        top_prob[:, a] = softmax.max(axis=1)
        probs.append(softmax)
    embedding = np.empty((n, dims), dtype=np.float32)
    for start in range(0, n, 65536):
        block = rng.standard_normal((min(65536, n - start), dims), dtype=np.float32)
        embedding[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    ids = np.array([f"{i:020x}" for i in range(n)], dtype=object)
    phash = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    return FashionMatrix(attributes, codes, top_prob, tuple(probs), embedding), ids, phash


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def python_hybrid_top(items, profile, k: int, weights: dict[str, float]) -> list[int]:
    """The hybrid score item by item in plain Python (lists, loops), then a sort: the baseline."""
    n, m, A = items["n"], profile["n"], len(items["codes"][0])
    attr_w = [1.0 / A] * A
    mean_probs = [
        [sum(profile["probs"][j][a][c] for j in range(m)) / m for c in range(len(profile["probs"][0][a]))]
        for a in range(A)
    ]
    matches, weighted, embedding = [], [], []
    for i in range(n):
        codes = items["codes"][i]
        count = 0
        for j in range(m):
            for a in range(A):
                if codes[a] >= 0 and codes[a] == profile["codes"][j][a]:
                    count += 1
        matches.append(count / (m * A))
        total = 0.0
        for a in range(A):
            p = items["probs"][i][a]
            total += attr_w[a] * sum(p[c] * mean_probs[a][c] for c in range(len(p)))
        weighted.append(total)
        e = items["embedding"][i]
        best = -2.0
        for j in range(m):
            q = profile["embedding"][j]
            dot = 0.0
            for d in range(len(e)):
                dot += e[d] * q[d]
            best = max(best, dot)
        embedding.append(round(best, 6))

    def z(values):
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return [(v - mean) / std if std > 1e-12 else 0.0 for v in values]

    zs = {"matches": z(matches), "weighted": z(weighted), "embedding": z(embedding)}
    score = [sum(weights[c] * zs[c][i] for c in weights) for i in range(n)]
    ids = items["ids"]
    order = sorted(range(n), key=lambda i: (-round(score[i], 9), ids[i]))
    return order[:k]


def as_lists(matrix, ids, rows) -> dict:
    return {
        "n": len(rows),
        "ids": [ids[i] for i in rows],
        "codes": matrix.codes[rows].tolist(),
        "probs": [[p[i].tolist() for p in matrix.probs] for i in rows],
        "embedding": matrix.embedding[rows].tolist(),
    }


def run(n: int, dims: int, profile_size: int, k: int, lam: float, repeats: int, python_items: int, arrow: bool) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.recommend import scoring

    started = time.perf_counter()
    items, ids, phash = make_repository(n, dims)
    id_array = pa.array(ids, type=pa.string())
    print(
        f"\n== {n:,} items x {dims}-d embeddings, profile of {profile_size}, top-{k} "
        f"(built in {time.perf_counter() - started:.0f}s) ==",
        flush=True,
    )
    rng = np.random.default_rng(1)
    profile_rows = rng.choice(n, profile_size, replace=False)
    profile = items.take(profile_rows)
    profile_hashes = np.concatenate([phash[profile_rows], phash[profile_rows] ^ np.uint64(0xFF)])
    shown = pa.array(ids[rng.choice(n, 500, replace=False)].tolist(), type=pa.string())
    weights = scoring.normalised_hybrid_weights(None)
    results: dict[str, float] = {}

    def exclusions() -> np.ndarray:
        eligible = np.ones(n, dtype=bool)
        for own in profile_hashes:
            eligible &= np.bitwise_count(phash ^ own) > 6
        eligible &= ~pc.is_in(id_array, value_set=shown).to_numpy(zero_copy_only=False)
        return eligible

    results["exclusions"], eligible = best_of(exclusions, repeats)
    for kind in scoring.SCORE_KINDS:
        for lam_now in sorted({1.0, lam}, reverse=True):

            def score_select(kind=kind, lam_now=lam_now):
                parts = scoring.components(items, profile, need=[kind])
                mask = eligible & (parts.matches > 0) if kind == "matches" else eligible
                return scoring.select(
                    scoring.SelectionRule(kind, k, lam_now, 200, weights), items, parts, id_array, mask
                )

            seconds, chosen = best_of(score_select, repeats)
            results[f"{kind} lambda={lam_now:g}"] = seconds
            print(
                f"  {kind:9s} lambda={lam_now:<4g} score+select {seconds:6.3f}s   + exclusions "
                f"{results['exclusions']:.3f}s = {seconds + results['exclusions']:.3f}s",
                flush=True,
            )
    # where the hybrid's time goes
    parts = scoring.components(items, profile)
    breakdown = {
        "matches (hits, best row)": lambda: (
            scoring.attribute_hits(items, profile),
            scoring.best_row_matches(items, profile),
        ),
        "weighted": lambda: scoring.weighted_scores(items, profile, scoring.normalised_weights(items.attributes, None)),
        "embedding (max cosine)": lambda: scoring.embedding_scores(items, profile),
        "hybrid standardise + top-k": lambda: scoring.top_candidates(
            [scoring.hybrid_scores(parts, weights, eligible)], id_array, eligible, k
        ),
    }
    for name, fn in breakdown.items():
        seconds, _ = best_of(fn, repeats)
        print(f"    hybrid part: {name:28s} {seconds:6.3f}s")

    # the plain Python loop over the first python_items items, and numpy on the same items
    subset = np.arange(min(python_items, n))
    lists, plist = as_lists(items, ids, subset), as_lists(profile, ids[profile_rows], np.arange(profile_size))
    started = time.perf_counter()
    python_top = python_hybrid_top(lists, plist, k, weights)
    python_s = time.perf_counter() - started
    small = items.take(subset)

    def numpy_small():
        small_parts = scoring.components(small, profile, need=["hybrid"])
        return scoring.select(
            scoring.SelectionRule("hybrid", k, 1.0, 200, weights),
            small,
            small_parts,
            id_array.slice(0, len(subset)),
            np.ones(len(subset), dtype=bool),
        )

    numpy_s, numpy_top = best_of(numpy_small, repeats)
    agree = python_top == numpy_top.rows.tolist()
    print(
        f"  plain Python loop, hybrid, {len(subset):,} items: {python_s:.2f}s "
        f"({python_s / len(subset) * 1e6:.0f} us/item, ~{python_s / len(subset) * n:.0f}s for {n:,}); "
        f"numpy on the same items {numpy_s * 1e3:.1f} ms; same top-{k}: {agree}"
    )
    results.update(
        {
            "python_loop_s": python_s,
            "python_items": len(subset),
            "numpy_same_items_s": numpy_s,
            "python_matches_numpy": agree,
        }
    )
    if arrow:
        table = pa.table(
            {
                "item_id": id_array,
                **{
                    a: pa.array(np.asarray(scoring_classes(a))[items.codes[:, i]])
                    for i, a in enumerate(items.attributes)
                },
                **{
                    f"{a}_probs": pa.FixedSizeListArray.from_arrays(
                        pa.array(items.probs[i].ravel()), items.probs[i].shape[1]
                    )
                    for i, a in enumerate(items.attributes)
                },
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(items.embedding.ravel()), dims).cast(
                    pa.list_(pa.float32())
                ),
            }
        )
        taxonomy = {a: scoring_classes(a) for a in items.attributes}
        seconds, _ = best_of(lambda: scoring.fashion_matrix(table, taxonomy), 1)
        print(f"  Arrow table -> FashionMatrix (once per batch of users): {seconds:.2f}s")
        results["arrow_to_matrix_s"] = seconds
    return results


def scoring_classes(attribute: str) -> tuple[str, ...]:
    from pipeline.settings import get_settings

    return get_settings().taxonomy.classes(attribute)


def main(argv: list[str] | None = None) -> int:
    _set_threads(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument(
        "--dims",
        type=int,
        nargs="+",
        default=[512, 2048],
        help="embedding dimensions (512: one shared VGG16 backbone's pooled features; 2048: "
        "four networks' Dense-512 layers concatenated, the schema's head_dense embedding)",
    )
    parser.add_argument("--profile", type=int, default=10)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--mmr-lambda", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--python-items", type=int, default=10_000)
    parser.add_argument("--threads", default="2")
    parser.add_argument("--arrow", action="store_true", help="also time Arrow table -> FashionMatrix")
    args = parser.parse_args(argv)
    import numpy as np

    print(f"numpy {np.__version__}, BLAS threads {os.environ['OPENBLAS_NUM_THREADS']}, CPUs {os.cpu_count()}")
    for dims in args.dims:
        run(args.items, dims, args.profile, args.k, args.mmr_lambda, args.repeats, args.python_items, args.arrow)
    return 0


if __name__ == "__main__":
    sys.exit(main())
