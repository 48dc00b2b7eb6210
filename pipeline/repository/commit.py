"""Step 3 of a repository refresh: the staged rows merged into the files that hold their items, and
those files published (moved into place, each atomically), then the staging deleted."""

from __future__ import annotations

import io
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    repository_dataset,
    vector_columns,
)
from pipeline.repository.plan import read_plan
from pipeline.settings import RepositorySettings, get_settings
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


@dataclass(frozen=True)
class _StagedVectors:
    """The shards' staged vector rows (item_id and the vector ``columns``), the position of each
    item's row, and the items whose image could not be read (they keep their stored row; new ones
    are left out)."""

    table: pa.Table
    columns: list[str]
    position: dict[str, int]
    skipped: list[str]


def _staged_vectors(store: ObjectStore, info: dict[str, Any]) -> _StagedVectors:
    """Every shard's staged vectors; a shard without output, or inferred with other model versions
    than the plan's, is a RepositoryError."""
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
    columns = vector_columns(info["attributes"])
    schema = pa.schema([f for f in file_schema(info["attributes"]) if f.name in ["item_id", *columns]])
    vectors = pa.concat_tables([conform(t, schema) for t in tables]) if tables else schema.empty_table()
    return _StagedVectors(vectors, columns, _index(vectors), skipped)


def _index(table: pa.Table) -> dict[str, int]:
    return {item: position for position, item in enumerate(table["item_id"].to_pylist())}


def commit_refresh(
    store: ObjectStore,
    commit_id: str,
    *,
    repository: RepositorySettings | None = None,
    on_publish: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Merge refresh ``commit_id``'s staged rows into the files that hold their items and publish them.

    Inferred rows take the plan's catalog fields and the shard's vectors; ``catalog`` rows keep their
    stored vectors. Items whose image could not be read keep their stored row (new ones are left
    out). Each changed file is rewritten whole, sorted by item_id, in row groups of
    ``repository.row_group_rows`` (default: ``settings.repository``), and written under the staging
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
    repository = repository or get_settings().repository
    finished = _finished_record(store, commit_id)
    if finished is not None:
        return finished
    info, plan = read_plan(store, commit_id)
    schema = file_schema(info["attributes"], info["classes"])
    vectors = _staged_vectors(store, info)
    written = _stage_files(
        store, commit_id, _without_missing_vectors(plan, vectors), vectors, schema, repository.row_group_rows
    )
    _publish(store, commit_id, written, schema, on_publish)
    record = _commit_record(info, vectors, written, repository_dataset(store).count_rows())
    _write_record(store, record)
    return record


def _finished_record(store: ObjectStore, commit_id: str) -> dict[str, Any] | None:
    """The record of refresh ``commit_id`` when it is already committed (its staging then deleted), else None."""
    record_key = store_layout.repository_commit_key(commit_id)
    done_key = store_layout.repository_committed_key(commit_id)
    if store.exists(done_key):  # committed; the clean-up of the staging was cut short
        record = store.read_json(done_key)
        _delete_staging(store, commit_id)
        return record
    if not store.exists(store_layout.repository_plan_key(commit_id)) and store.exists(record_key):
        _delete_staging(store, commit_id)  # committed (and, but for strays, cleaned up)
        return store.read_json(record_key)
    return None


def _without_missing_vectors(plan: pa.Table, vectors: _StagedVectors) -> pa.Table:
    """The plan without the items to infer that have no staged vector row (their image could not be
    read), sorted by file, then item_id."""
    inferred = pc.is_in(plan["action"], pa.array(["new", "image", "model"]))
    missing = [
        i for i, needs in zip(plan["item_id"].to_pylist(), inferred.to_pylist()) if needs and i not in vectors.position
    ]
    if missing:
        plan = plan.filter(pc.invert(pc.is_in(plan["item_id"], pa.array(missing, pa.string()))))
    return plan.sort_by([("file", "ascending"), ("item_id", "ascending")])


def _file_rows(plan: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """(file key, its plan rows) of a plan sorted by file."""
    file_column = plan["file"].to_pylist()
    start = 0
    while start < len(file_column):
        end = start
        while end < len(file_column) and file_column[end] == file_column[start]:
            end += 1
        yield file_column[start], plan.slice(start, end - start)
        start = end


def _stage_files(
    store: ObjectStore,
    commit_id: str,
    plan: pa.Table,
    vectors: _StagedVectors,
    schema: pa.Schema,
    row_group_rows: int,
) -> list[dict[str, Any]]:
    """Write every file that ``plan`` changes, merged, under the staging prefix; what was written
    (key, rows, rows changed) per file."""
    written: list[dict[str, Any]] = []
    for key, rows in _file_rows(plan):
        existing = conform(store.read_parquet(key), schema) if store.exists(key) else schema.empty_table()
        merged = _merged_file(existing, rows, vectors, schema)
        if merged is None:
            continue
        table, changed = merged
        store.put_bytes(store_layout.repository_staged_file_key(commit_id, key), _parquet_bytes(table, row_group_rows))
        written.append({"key": key, "rows": table.num_rows, "changed": changed})
    return written


def _merged_file(
    existing: pa.Table, rows: pa.Table, vectors: _StagedVectors, schema: pa.Schema
) -> tuple[pa.Table, int] | None:
    """(file ``existing`` with its plan ``rows`` applied, sorted by item_id; the rows replaced), or None
    when no row changes: inferred rows take their staged vectors, ``catalog`` rows their stored ones
    (a ``catalog`` row of an item the file does not hold is dropped)."""
    stored_at = _index(existing)
    meta = rows.select(ITEM_COLUMNS)
    actions = rows["action"].to_pylist()
    ids = rows["item_id"].to_pylist()
    take_new = [n for n, a in enumerate(actions) if a != "catalog"]
    take_old = [n for n, a in enumerate(actions) if a == "catalog" and ids[n] in stored_at]
    updated = []
    if take_new:
        source = vectors.table.take(pa.array([vectors.position[ids[n]] for n in take_new], pa.int64()))
        updated.append(_merge_columns(meta.take(pa.array(take_new, pa.int64())), source, vectors.columns, schema))
    if take_old:
        source = existing.take(pa.array([stored_at[ids[n]] for n in take_old], pa.int64()))
        updated.append(_merge_columns(meta.take(pa.array(take_old, pa.int64())), source, vectors.columns, schema))
    if not updated:
        return None
    replaced = pa.array([ids[n] for n in take_new + take_old], pa.string())
    kept = existing.filter(pc.invert(pc.is_in(existing["item_id"], replaced)))
    table = pa.concat_tables([kept, *updated]).sort_by("item_id").replace_schema_metadata(schema.metadata)
    return table, len(replaced)


def _publish(
    store: ObjectStore,
    commit_id: str,
    written: list[dict[str, Any]],
    schema: pa.Schema,
    on_publish: Callable[[str], None] | None,
) -> None:
    """Move every staged file into place (every new file is staged: only now does the dataset change,
    by moves that move no bytes), then record the dataset's schema (``_common_metadata``)."""
    for entry in written:
        store.move(store_layout.repository_staged_file_key(commit_id, entry["key"]), entry["key"])
        if on_publish is not None:
            on_publish(entry["key"])
    if written or not store.exists(store_layout.REPOSITORY_COMMON_METADATA_KEY):
        common = io.BytesIO()
        pq.write_metadata(schema, common)
        store.put_bytes(store_layout.REPOSITORY_COMMON_METADATA_KEY, common.getvalue())


def _commit_record(
    info: dict[str, Any], vectors: _StagedVectors, written: list[dict[str, Any]], repository_rows: int
) -> dict[str, Any]:
    """What the commit of plan ``info`` did (``repository/commits/<commit_id>.json``)."""
    return {
        "commit_id": info["commit_id"],
        "batch_id": info["batch_id"],
        "batch_ids": info.get("batch_ids", []),
        "failed_retailers": info.get("failed_retailers", []),
        "crawl_date": info["crawl_date"],
        "committed_at": datetime.now(UTC).isoformat(),
        "schema_version": SCHEMA_VERSION,
        "versions": info["versions"],
        "actions": info["actions"],
        "inferred": vectors.table.num_rows,
        "skipped_undecodable": len(vectors.skipped),
        "skipped_item_ids": vectors.skipped[:1000],
        "files_written": written,
        "repository_rows": repository_rows,
    }


def _write_record(store: ObjectStore, record: dict[str, Any]) -> None:
    """Store the commit's record (a commit that changed nothing keeps the record of the one that did
    the work), mark the refresh committed and delete its staging."""
    commit_id = record["commit_id"]
    record_key = store_layout.repository_commit_key(commit_id)
    written = record["files_written"]
    if written or not store.exists(record_key):
        store.write_json(record_key, record)
    else:
        logger.info("[repository %s] nothing changed; %s of the earlier commit is kept", commit_id, record_key)
    store.write_json(store_layout.repository_committed_key(commit_id), record)  # from here a retry only cleans up
    _delete_staging(store, commit_id)
    logger.info(
        "[repository %s] committed %d rows in %d file(s); %d items in the repository",
        commit_id,
        sum(w["changed"] for w in written),
        len(written),
        record["repository_rows"],
    )


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
