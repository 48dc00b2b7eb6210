"""Step 3 of a repository refresh: the staged rows merged into the files that hold their items, and
those files published (moved into place, each atomically), then the staging deleted."""

from __future__ import annotations

import io
import logging
import shutil
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import store_layout
from pipeline.repository.dataset import (
    ITEM_COLUMNS,
    SCHEMA_VERSION,
    RepositoryError,
    conform,
    file_schema,
    repository_config,
    repository_dataset,
    vector_columns,
)
from pipeline.repository.plan import read_plan
from pipeline.storage import ObjectStore

logger = logging.getLogger(__name__)


def _parquet_bytes(table: pa.Table, row_group_rows: int) -> bytes:
    low_cardinality = [
        f.name
        for f in table.schema
        if pa.types.is_string(f.type)
        and f.name not in ("item_id", "product_url", "title", "image_key", "content_sha256")
    ]
    buffer = io.BytesIO()
    pq.write_table(
        table,
        buffer,
        compression="zstd",
        row_group_size=row_group_rows,
        use_dictionary=low_cardinality,
        sorting_columns=[pq.SortingColumn(0)],
        write_page_index=True,
    )
    return buffer.getvalue()


def _staged_vectors(store: ObjectStore, info: dict[str, Any]) -> tuple[pa.Table, list[str]]:
    commit_id = info["commit_id"]
    tables, skipped = [], []
    for shard in range(info["shards"]):
        summary_key = store_layout.repository_shard_summary_key(commit_id, shard)
        table_key = store_layout.repository_shard_vectors_key(commit_id, shard)
        if not store.exists(summary_key):
            raise RepositoryError(f"refresh {commit_id!r}: shard {shard} has no output yet; run infer_shard for it")
        summary = store.read_json(summary_key)
        if summary.get("versions") != info["versions"]:
            raise RepositoryError(
                f"refresh {commit_id!r}: shard {shard} was inferred with {summary.get('versions')}, "
                f"the plan says {info['versions']}"
            )
        skipped += summary.get("skipped_item_ids", [])
        tables.append(store.read_parquet(table_key))
    schema = pa.schema(
        [f for f in file_schema(info["attributes"]) if f.name in ["item_id", *vector_columns(info["attributes"])]]
    )
    vectors = pa.concat_tables([conform(t, schema) for t in tables]) if tables else schema.empty_table()
    return vectors, skipped


def _index(table: pa.Table) -> dict[str, int]:
    return {item: position for position, item in enumerate(table["item_id"].to_pylist())}


def commit_refresh(
    store: ObjectStore, commit_id: str, *, config: dict[str, Any] | None = None, on_publish: Any = None
) -> dict[str, Any]:
    """Merge refresh ``commit_id``'s staged rows into the files that hold their items and publish them.

    Inferred rows take the plan's catalog fields and the shard's vectors; ``catalog`` rows keep their
    stored vectors. Items whose image could not be read keep their stored row (new ones are left
    out). Each changed file is rewritten whole, sorted by item_id, and written under the staging
    prefix; only when every file is staged are they moved into place, each atomically (a rename, or
    an S3 server-side copy). A commit that fails while it merges or uploads (a worker killed, the S3
    endpoint gone) has changed nothing a reader sees; one that fails while files are moved leaves
    each item in one whole row, old or new. ``on_publish(key)`` is called after each move (tests look
    at the dataset then).

    Safe to rerun: rows are replaced by item_id, so a retry writes exactly what one clean commit
    writes; a commit retried after it completed (or while its clean-up was cut short) returns its
    record. A rerun that changes nothing (a night run again) keeps the stored record of the commit
    that did the work.
    """
    sizes = repository_config(config)
    record_key = store_layout.repository_commit_key(commit_id)
    info_key = store_layout.repository_plan_key(commit_id)
    done_key = store_layout.repository_committed_key(commit_id)
    if store.exists(done_key):  # committed; the clean-up of the staging was cut short
        record = store.read_json(done_key)
        _delete_staging(store, commit_id)
        return record
    if not store.exists(info_key) and store.exists(record_key):  # committed (and, but for strays, cleaned up)
        _delete_staging(store, commit_id)
        return store.read_json(record_key)
    info, plan = read_plan(store, commit_id)
    attributes = info["attributes"]
    schema = file_schema(attributes, info["classes"])
    vector_names = vector_columns(attributes)
    vectors, skipped = _staged_vectors(store, info)
    vector_at = _index(vectors)
    inferred = pc.is_in(plan["action"], pa.array(["new", "image", "model"]))
    missing = [i for i, needs in zip(plan["item_id"].to_pylist(), inferred.to_pylist()) if needs and i not in vector_at]
    if missing:
        plan = plan.filter(pc.invert(pc.is_in(plan["item_id"], pa.array(missing, pa.string()))))
    plan = plan.sort_by([("file", "ascending"), ("item_id", "ascending")])
    file_column = plan["file"].to_pylist()
    written: list[dict[str, Any]] = []
    start = 0
    while start < len(file_column):
        key = file_column[start]
        end = start
        while end < len(file_column) and file_column[end] == key:
            end += 1
        rows = plan.slice(start, end - start)
        start = end
        existing = conform(store.read_parquet(key), schema) if store.exists(key) else schema.empty_table()
        stored_at = _index(existing)
        meta = rows.select(ITEM_COLUMNS)
        actions = rows["action"].to_pylist()
        ids = rows["item_id"].to_pylist()
        take_new = [n for n, a in enumerate(actions) if a != "catalog"]
        take_old = [n for n, a in enumerate(actions) if a == "catalog" and ids[n] in stored_at]
        updated = []
        if take_new:
            source = vectors.take(pa.array([vector_at[ids[n]] for n in take_new], pa.int64()))
            updated.append(_merge_columns(meta.take(pa.array(take_new, pa.int64())), source, vector_names, schema))
        if take_old:
            source = existing.take(pa.array([stored_at[ids[n]] for n in take_old], pa.int64()))
            updated.append(_merge_columns(meta.take(pa.array(take_old, pa.int64())), source, vector_names, schema))
        if not updated:
            continue
        replaced = pa.array([ids[n] for n in take_new + take_old], pa.string())
        kept = existing.filter(pc.invert(pc.is_in(existing["item_id"], replaced)))
        table = pa.concat_tables([kept, *updated]).sort_by("item_id").replace_schema_metadata(schema.metadata)
        store.put_bytes(
            store_layout.repository_staged_file_key(commit_id, key), _parquet_bytes(table, sizes.row_group_rows)
        )
        written.append({"key": key, "rows": table.num_rows, "changed": len(replaced)})
    # Every new file is staged: only now does the dataset change, by moves that move no bytes.
    for entry in written:
        store.move(store_layout.repository_staged_file_key(commit_id, entry["key"]), entry["key"])
        if on_publish is not None:
            on_publish(entry["key"])
    if written or not store.exists(store_layout.REPOSITORY_COMMON_METADATA_KEY):
        common = io.BytesIO()
        pq.write_metadata(schema, common)
        store.put_bytes(store_layout.REPOSITORY_COMMON_METADATA_KEY, common.getvalue())
    rows = repository_dataset(store).count_rows()
    record = {
        "commit_id": commit_id,
        "batch_id": info["batch_id"],
        "batch_ids": info.get("batch_ids", []),
        "failed_retailers": info.get("failed_retailers", []),
        "crawl_date": info["crawl_date"],
        "committed_at": datetime.now(UTC).isoformat(),
        "schema_version": SCHEMA_VERSION,
        "versions": info["versions"],
        "actions": info["actions"],
        "inferred": vectors.num_rows,
        "skipped_undecodable": len(skipped),
        "skipped_item_ids": skipped[:1000],
        "files_written": written,
        "repository_rows": rows,
    }
    if written or not store.exists(record_key):
        store.write_json(record_key, record)
    else:
        logger.info("[repository %s] nothing changed; %s of the earlier commit is kept", commit_id, record_key)
    store.write_json(done_key, record)  # from here on a retry only finishes the clean-up
    _delete_staging(store, commit_id)
    logger.info(
        "[repository %s] committed %d rows in %d file(s); %d items in the repository",
        commit_id,
        sum(w["changed"] for w in written),
        len(written),
        rows,
    )
    return record


def _delete_staging(store: ObjectStore, commit_id: str) -> None:
    """Delete refresh ``commit_id``'s staging, :func:`~pipeline.store_layout.repository_committed_key` last:
    a clean-up cut short (the endpoint gone) leaves that mark, so the retried commit only finishes the clean-up."""
    prefix = store_layout.repository_staging_prefix(commit_id)
    done_key = store_layout.repository_committed_key(commit_id)
    for key in store.list(prefix + "/"):
        if key != done_key:
            store.delete(key)
    if store.exists(done_key):
        store.delete(done_key)
    folder = store.local_path(prefix)
    if folder is not None:  # a file:// store: the emptied folders
        shutil.rmtree(folder, ignore_errors=True)


def _merge_columns(meta: pa.Table, vectors: pa.Table, vector_names: list[str], schema: pa.Schema) -> pa.Table:
    columns = {name: meta[name] for name in meta.column_names}
    columns.update({name: vectors[name] for name in vector_names})
    return pa.Table.from_arrays([columns[f.name].cast(f.type) for f in schema], schema=schema)
