"""Fashion-vector repository I/O: Parquet write and read throughput next to a raw copy of the same bytes.

Synthetic rows with the repository's real columns (item and catalog fields, image hashes, per taxonomy
attribute class, probability, softmax vector and model version, a float32 embedding of ``--dim``
values, timestamps) are written through the real refresh path into a local folder store: for each of
``--nights`` nights a curated batch is planned (``pipeline.repository.plan.plan_refresh``), its vectors are
staged as the inference shards would stage them, and ``commit_refresh`` writes the partitions. Then:

- write: rows/s and MB/s (bytes of the Parquet files written) of the commits, and of the Parquet
  encoding and publishing alone (``_parquet_bytes`` + staging and moving of the same tables, as ``commit_refresh`` does);
- read: ``read_repository`` of everything (sorted by item_id, and in file order), and of a projection with a predicate (four columns, one
  class of one attribute, the last two nights), in MB/s of the files' bytes;
- raw: ``shutil.copyfile`` of the same files (read + write) and a plain read of their bytes, same run.

Reads are the best of two runs. The files were just written, so every number is page-cache-warm (no fsync, no cache drop on a shared
machine); compare them with each other, not with the disk.

    python -m bench.repository_io [--rows 200000] [--dim 512] [--nights 7] [--retailers 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from pipeline import store_layout  # noqa: E402
from pipeline.repository import commit as RC  # noqa: E402
from pipeline.repository import dataset as R
from pipeline.repository import infer as RI
from pipeline.repository import plan as RP
from pipeline.settings import get_settings  # noqa: E402
from pipeline.storage import ObjectStore  # noqa: E402

MB = 1e6


def batch_table(rng: np.random.Generator, start: int, n: int, retailers: list[str], crawled_at: datetime) -> pa.Table:
    """A curated batch (``accepted.parquet``) of ``n`` synthetic products."""
    ids = [hashlib.sha1(f"https://shop.example/p/{start + i}".encode()).hexdigest()[:20] for i in range(n)]
    categories = np.array(["shirts", "dresses", "tops", "knitwear", "jackets"])
    return pa.table(
        {
            "item_id": ids,
            "retailer": [retailers[i % len(retailers)] for i in range(n)],
            "product_url": [f"https://shop.example/p/{start + i}" for i in range(n)],
            "title": [f"product {start + i} in a realistic length title" for i in range(n)],
            "price": pa.array(np.round(rng.uniform(5, 200, n), 2)),
            "currency": ["EUR"] * n,
            "category": categories[rng.integers(0, len(categories), n)].tolist(),
            "image_key": [f"images/full/{hashlib.sha1(i.encode()).hexdigest()}.jpg" for i in ids],
            "crawled_at": pa.array([crawled_at] * n, pa.timestamp("us", tz="UTC")),
            "content_sha256": [hashlib.sha256(i.encode()).hexdigest() for i in ids],
            "phash": pa.array(rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * 2, pa.uint64()),
            "phash_mirror": pa.array(rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64), pa.uint64()),
            "dhash": pa.array(rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64), pa.uint64()),
        }
    )


def list_array(matrix: np.ndarray) -> pa.Array:
    offsets = pa.array(np.arange(matrix.shape[0] + 1, dtype=np.int32) * matrix.shape[1])
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.astype("float32").ravel()))


def stage_vectors(
    store: ObjectStore, commit_id: str, rng: np.random.Generator, dim: int, inferred_at: datetime
) -> None:
    """What infer_shard would stage: softmax outputs and embeddings, random but shaped like real ones."""
    info, _ = RP.read_plan(store, commit_id)
    for shard in range(info["shards"]):
        _, items = RP.shard_items(store, commit_id, shard)
        n = items.num_rows
        columns: dict[str, pa.Array] = {"item_id": items["item_id"]}
        for attribute in info["attributes"]:
            classes = info["classes"][attribute]
            logits = rng.normal(0, 2, (n, len(classes)))
            probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            best = probs.argmax(axis=1)
            columns[attribute] = pa.array(np.array(classes)[best].tolist())
            columns[f"{attribute}_prob"] = pa.array(probs[np.arange(n), best].astype("float32"))
            columns[f"{attribute}_probs"] = list_array(probs)
            columns[f"{attribute}_model_version"] = pa.array([info["versions"][attribute]] * n)
        embedding = np.maximum(rng.normal(0, 1, (n, dim)), 0).astype("float32")  # ReLU-like, as pooled features
        columns["embedding"] = list_array(embedding / np.linalg.norm(embedding, axis=1, keepdims=True))
        columns["embedding_source"] = pa.array([f"pool(vgg16:{','.join(info['attributes'])})"] * n)
        columns["inferred_at"] = pa.array([inferred_at] * n, pa.timestamp("us", tz="UTC"))
        RI.write_shard(
            store, commit_id, shard, pa.table(columns), {"versions": info["versions"], "skipped_item_ids": []}
        )


def best_of(times: int, read):
    """(the fastest of ``times`` runs in seconds, the last result): the first run also pays for
    touching fresh memory for the table, which varies a lot on a shared machine."""
    best, result = float("inf"), None
    for _ in range(times):
        result = None
        started = time.perf_counter()
        result = read()
        best = min(best, time.perf_counter() - started)
    return best, result


def files_bytes(paths: list[str]) -> int:
    return sum(os.path.getsize(p) for p in paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument(
        "--dim", type=int, default=512, help="embedding size (512: VGG16 pooled; 1280: EfficientNet-Lite0)"
    )
    parser.add_argument("--nights", type=int, default=7)
    parser.add_argument("--retailers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    taxonomy = get_settings().taxonomy
    repository = dataclasses.replace(get_settings().repository, shard_size=100_000)
    rng = np.random.default_rng(args.seed)
    retailers = [f"shop-{i}" for i in range(args.retailers)]
    with tempfile.TemporaryDirectory(prefix="repository-io-") as folder:
        store = ObjectStore(f"file://{folder}/store")
        for attribute in taxonomy.names:
            store.write_json(
                f"models/{attribute}/current.json", {"version": "v1", "classes": list(taxonomy.classes(attribute))}
            )
        per_night = args.rows // args.nights
        plan_s = commit_s = 0.0
        first = date(2026, 11, 1)
        for night in range(args.nights):
            day = first + timedelta(days=night)
            batch_id = f"catalog-{day:%Y%m%d}"
            n = per_night if night < args.nights - 1 else args.rows - per_night * (args.nights - 1)
            crawled_at = datetime(day.year, day.month, day.day, 2, tzinfo=UTC)
            store.write_parquet(
                f"curation/{batch_id}/accepted.parquet", batch_table(rng, night * per_night, n, retailers, crawled_at)
            )
            started = time.perf_counter()
            RP.plan_refresh(store, RP.RefreshPlanRequest(batch_id, taxonomy.names, batch_id=batch_id), repository)
            plan_s += time.perf_counter() - started
            stage_vectors(store, batch_id, rng, args.dim, crawled_at + timedelta(minutes=30))
            started = time.perf_counter()
            RC.commit_refresh(store, batch_id, repository=repository)
            commit_s += time.perf_counter() - started

        keys = R.data_keys(store)
        paths = [store.local_path(k) for k in keys]
        size = files_bytes(paths)

        # The writer's Parquet encoding + atomic publish alone, on the very tables now in the files.
        tables = [(k, R.conform(store.read_parquet(k), R.file_schema(taxonomy.names))) for k in keys]
        arrow_bytes = sum(t.nbytes for _, t in tables)
        started = time.perf_counter()
        for key, table in tables:
            copy_key = key.replace("fashion_vectors/", "fashion_vectors_copy/")  # staged, then moved, as a commit does
            staged = store.put_bytes(
                store_layout.repository_staged_file_key("bench", copy_key),
                RC._parquet_bytes(table, repository.row_group_rows),
            )
            store.move(staged, copy_key)
        encode_s = time.perf_counter() - started
        del tables

        # Raw: copy the same files, and read their bytes.
        raw_dir = Path(folder) / "raw-copy"
        raw_dir.mkdir()
        started = time.perf_counter()
        for i, path in enumerate(paths):
            shutil.copyfile(path, raw_dir / f"{i}.parquet")
        copy_s = time.perf_counter() - started
        started = time.perf_counter()
        for path in paths:
            with open(path, "rb") as handle:
                handle.read()
        raw_read_s = time.perf_counter() - started

        read_s, full = best_of(2, lambda: R.read_repository(store))
        assert full.num_rows == args.rows, full.num_rows
        full_arrow = full.nbytes
        del full
        unsorted_s, _ = best_of(2, lambda: R.read_repository(store, sort=False))
        last = first + timedelta(days=args.nights - 2)
        filtered_s, some = best_of(
            2,
            lambda: R.read_repository(
                store,
                columns=["item_id", "title", "price", "pattern_prob"],
                filter=(pc.field("pattern") == "striped") & (pc.field("crawl_date") >= last),
            ),
        )

    rows = args.rows
    print(
        f"repository: {rows:,} rows, embedding {args.dim} float32, {len(taxonomy.names)} attributes, "
        f"{args.nights} nights x {args.retailers} retailers = {len(keys)} files, {size / MB:.1f} MB on disk "
        f"({arrow_bytes / MB:.1f} MB in Arrow; {size / rows:.0f} B/row)"
    )
    print(f"{'operation':58s} {'seconds':>8s} {'rows/s':>10s} {'MB/s':>8s}")
    line = "{:58s} {:8.2f} {:10,.0f} {:8.1f}"
    print(line.format("plan (all nights)", plan_s, rows / plan_s, 0.0))
    print(
        line.format(
            "write: commit_refresh (stage read + merge + encode + publish)",
            commit_s,
            rows / commit_s,
            size / MB / commit_s,
        )
    )
    print(line.format("write: Parquet encode + atomic publish alone", encode_s, rows / encode_s, size / MB / encode_s))
    print(line.format("raw: shutil.copyfile of the same files", copy_s, rows / copy_s, size / MB / copy_s))
    print(line.format("read: read_repository, every column", read_s, rows / read_s, size / MB / read_s))
    print(
        line.format(
            "read: read_repository(sort=False), every column", unsorted_s, rows / unsorted_s, size / MB / unsorted_s
        )
    )
    print(
        line.format(
            f"read: 4 columns, pattern=striped, last 2 nights ({some.num_rows:,} rows)",
            filtered_s,
            rows / filtered_s,
            size / MB / filtered_s,
        )
    )
    print(line.format("raw: read the same files' bytes", raw_read_s, rows / raw_read_s, size / MB / raw_read_s))
    print(f"Arrow bytes decoded by the full read: {full_arrow / MB:.1f} MB ({full_arrow / MB / read_s:.1f} MB/s)")
    print(f"write encode+publish / raw copy: {copy_s / encode_s:.2f};  full read / raw read: {raw_read_s / read_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
