"""Recommendations for a whole customer base: users per pass, seconds and peak memory.

The batch scorer of ``pipeline.recommend.recommendations.recommend_for_users``
(``pipeline.recommend.batch.BatchScorer``: every user's profile photos against a chunk of items as one
matrix product, running top candidates per user) over a
synthetic repository with the real columns, streamed chunk by chunk from a generator (chunk ``i`` is
the same rows whoever asks), so a 5M-item run never holds the catalogue. In the same run:

- today's per-user path (``rank`` on the whole in-memory repository, as the batch did before) on a
  sample of users, for the ratio;
- FAISS's exact inner-product index (``IndexFlatIP``) on the same item vectors, all the batch's photo
  vectors as one search (top ``k`` per photo), beside the embedding score;
- peak RSS of each configuration, measured in its own child process (``resource.getrusage``).

Every measurement runs in a child with ``--threads`` BLAS/OpenMP threads.

    .venv/bin/python -m bench.recommend_batch --users 1000 --items 1000000 --dims 1280
    .venv/bin/python -m bench.recommend_batch --sweep 1 10 100 1000 --items 100000
    .venv/bin/python -m bench.recommend_batch --rss-only --users 100 --items 1000000 5000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(config: dict[str, Any], threads: int) -> dict[str, Any]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONPATH": ROOT,
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.recommend_batch", "--child", json.dumps(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"child {config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- synthetic data (child side) ------------------------------------------------------------------------
def _chunk(index: int, rows: int, dims: int, start: int):
    import datetime as dt

    import numpy as np
    import pyarrow as pa

    from pipeline.settings import get_settings

    taxonomy = get_settings().taxonomy
    rng = np.random.default_rng(1_000_003 * (index + 1))
    ids = [f"item{start + r:09d}" for r in range(rows)]
    columns: dict[str, Any] = {
        "item_id": pa.array(ids, pa.string()),
        "phash": pa.array(rng.integers(0, 2**63, rows, dtype=np.uint64), pa.uint64()),
        "phash_mirror": pa.array(rng.integers(0, 2**63, rows, dtype=np.uint64), pa.uint64()),
        "content_sha256": pa.array([f"{i}-sha" for i in ids], pa.string()),
        "retailer": pa.array(["demo-store"] * rows, pa.string()),
        "category": pa.array(np.array(["tops", "dresses", "trousers"])[rng.integers(0, 3, rows)], pa.string()),
        "title": pa.array([f"Item {i}" for i in ids], pa.string()),
        "price": pa.array(rng.uniform(5, 300, rows), pa.float64()),
        "currency": pa.array(["EUR"] * rows, pa.string()),
        "product_url": pa.array([f"http://shop.test/p/{i}" for i in ids], pa.string()),
        "image_key": pa.array([f"images/full/{i}.jpg" for i in ids], pa.string()),
        "crawl_date": pa.array([dt.date(2026, 11, 1)] * rows, pa.date32()),
        "crawled_at": pa.array([dt.datetime(2026, 11, 27)] * rows, pa.timestamp("us")),
        "inferred_at": pa.array([dt.datetime(2026, 11, 27, 1)] * rows, pa.timestamp("us")),
    }
    for attribute in taxonomy.names:
        classes = taxonomy.classes(attribute)
        logits = rng.standard_normal((rows, len(classes)), dtype=np.float32) * 2
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        best = probs.argmax(axis=1)
        columns[attribute] = pa.array(np.array(classes)[best], pa.string())
        columns[f"{attribute}_prob"] = pa.array(probs[np.arange(rows), best], pa.float32())
        columns[f"{attribute}_probs"] = pa.ListArray.from_arrays(
            pa.array(np.arange(0, rows * len(classes) + 1, len(classes), dtype=np.int32)), pa.array(probs.ravel())
        )
        columns[f"{attribute}_model_version"] = pa.array(["v1"] * rows, pa.string())
    embedding = rng.standard_normal((rows, dims), dtype=np.float32)
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    columns["embedding"] = pa.ListArray.from_arrays(
        pa.array(np.arange(0, rows * dims + 1, dims, dtype=np.int64).astype(np.int32)), pa.array(embedding.ravel())
    )
    columns["embedding_source"] = pa.array(["bench"] * rows, pa.string())
    return pa.table(columns)


def _chunks(items: int, dims: int, chunk_rows: int):
    for index, start in enumerate(range(0, items, chunk_rows)):
        yield _chunk(index, min(chunk_rows, items - start), dims, start)


def _profiles(users: int, photos: int, dims: int):
    import numpy as np
    import pyarrow as pa

    from pipeline.recommend import scoring
    from pipeline.recommend.batch import BatchUser
    from pipeline.recommend.profile import profile_schema
    from pipeline.settings import get_settings

    taxonomy = get_settings().taxonomy
    attributes = taxonomy.names
    out = []
    for u in range(users):
        rng = np.random.default_rng(7 + u)
        columns: dict[str, Any] = {
            "image_key": [f"users/u{u}/p{p}.jpg" for p in range(photos)],
            "phash": pa.array(rng.integers(0, 2**63, photos, dtype=np.uint64), pa.uint64()),
            "content_sha256": [f"u{u}-{p}" for p in range(photos)],
            "phash_mirror": pa.array(rng.integers(0, 2**63, photos, dtype=np.uint64), pa.uint64()),
        }
        for attribute in attributes:
            classes = taxonomy.classes(attribute)
            probs = rng.dirichlet(np.ones(len(classes)), photos).astype(np.float32)
            best = probs.argmax(axis=1)
            columns[attribute] = [classes[b] for b in best]
            columns[f"{attribute}_prob"] = probs[np.arange(photos), best].astype(np.float64)
            columns[f"{attribute}_probs"] = [row.tolist() for row in probs]
            columns[f"{attribute}_model_version"] = ["v1"] * photos
        embedding = rng.standard_normal((photos, dims)).astype(np.float32)
        columns["embedding"] = [row.tolist() for row in embedding]
        columns["embedding_source"] = ["bench"] * photos
        profile = pa.Table.from_pydict(columns, schema=profile_schema(attributes, True))
        mine = scoring.fashion_matrix(
            profile, {a: taxonomy.classes(a) for a in attributes}, trust_unit_embeddings=False
        )
        out.append(BatchUser(f"u{u}", list(columns["image_key"]), profile, mine, [], "bench"))
    return out


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(config: dict[str, Any]) -> dict[str, Any]:
    from pipeline.recommend.batch import BatchScorer
    from pipeline.recommend.items import repository_vectors
    from pipeline.recommend.options import validate_options
    from pipeline.recommend.ranking import RankRequest, rank
    from pipeline.settings import get_settings

    settings = get_settings()
    attributes = settings.taxonomy.names
    items, dims, chunk_rows = config["items"], config["dims"], config["chunk_rows"]
    options = validate_options(k=config["k"], score_kind=config["kind"], mmr_lambda=config["mmr_lambda"])
    if config["mode"] == "batch":
        users = _profiles(config["users"], config["photos"], dims)
        started = time.perf_counter()
        scorer = BatchScorer(
            None, users, options, settings, chunk_rows, chunks=lambda: _chunks(items, dims, chunk_rows)
        )
        scorer.run()
        tables = [scorer.ranked(c) for c in range(len(users))]
        seconds = time.perf_counter() - started
        generate = time.perf_counter()
        for _ in _chunks(items, dims, chunk_rows):
            pass
        generation = time.perf_counter() - generate
        assert all(t.num_rows == config["k"] for t in tables)
        generation *= 2 if config["kind"] == "hybrid" else 1  # the hybrid streams the repository twice
        return {
            "seconds": seconds - generation,
            "with_generation_s": seconds,
            "generation_s": generation,
            "peak_rss_mb": _peak_rss_mb(),
            "first": tables[0]["item_id"].to_pylist()[:3],
        }
    if config["mode"] == "per_user":
        import pyarrow as pa

        users = _profiles(config["users"], config["photos"], dims)
        table = pa.concat_tables(list(_chunks(items, dims, chunk_rows)))
        matrix, repository = repository_vectors(table, settings.taxonomy, attributes)
        del table
        times = []
        for user in users:
            started = time.perf_counter()
            request = RankRequest(user.profile, options, phash_max_distance=6)
            ranked = rank(request, repository, attributes, items=matrix)
            times.append(time.perf_counter() - started)
        return {
            "per_user_s": sorted(times)[len(times) // 2],
            "all_s": times,
            "peak_rss_mb": _peak_rss_mb(),
            "first": ranked["item_id"].to_pylist()[:3],
        }
    if config["mode"] == "faiss":
        import faiss
        import numpy as np

        from pipeline.recommend import scoring

        faiss.omp_set_num_threads(config["threads"])
        users = _profiles(config["users"], config["photos"], dims)
        queries = np.ascontiguousarray(np.concatenate([u.mine.embedding for u in users]))
        index = faiss.IndexFlatIP(dims)
        for chunk in _chunks(items, dims, chunk_rows):
            index.add(np.ascontiguousarray(scoring.list_matrix(chunk["embedding"], dims, "embedding")))
        started = time.perf_counter()
        index.search(queries, config["k"])
        return {"seconds": time.perf_counter() - started, "peak_rss_mb": _peak_rss_mb()}
    raise ValueError(config["mode"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--dims", type=int, default=1280)
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--kind", default="embedding")
    parser.add_argument("--mmr-lambda", type=float, default=1.0)
    parser.add_argument("--chunk-rows", type=int, default=32768)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sample", type=int, default=5, help="users of the per-user path (0: skip)")
    parser.add_argument("--faiss", action="store_true", help="FAISS IndexFlatIP beside the embedding part")
    parser.add_argument("--sweep", type=int, nargs="*", help="users per batch to compare (one run each)")
    parser.add_argument("--rss-only", action="store_true", help="only the batch runs (their time and peak RSS)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return
    base = {
        "dims": args.dims,
        "photos": args.photos,
        "k": args.k,
        "kind": args.kind,
        "mmr_lambda": args.mmr_lambda,
        "chunk_rows": args.chunk_rows,
        "threads": args.threads,
    }
    print(f"load before: {os.getloadavg()}", flush=True)
    rows = []
    for items in args.items:
        for users in args.sweep or [args.users]:
            result = _child({**base, "mode": "batch", "users": users, "items": items}, args.threads)
            row = {
                "users": users,
                "items": items,
                "dims": args.dims,
                "kind": args.kind,
                **result,
                "per_user_ms": 1000 * result["seconds"] / users,
            }
            if not args.rss_only and args.sample and users == (args.sweep or [args.users])[-1]:
                single = _child({**base, "mode": "per_user", "users": args.sample, "items": items}, args.threads)
                row["today_per_user_ms"] = 1000 * single["per_user_s"]
                row["speed_up"] = single["per_user_s"] * users / result["seconds"]
                row["today_peak_rss_mb"] = single["peak_rss_mb"]
            if args.faiss and users == (args.sweep or [args.users])[-1]:
                embedding = _child({**base, "mode": "faiss", "users": users, "items": items}, args.threads)
                row["faiss_s"] = embedding["seconds"]
                row["batch_over_faiss"] = result["seconds"] / embedding["seconds"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
