"""The fashion-vector repository: a Hive-partitioned Parquet dataset with one current row per item.

Layout (schema: ``pipeline/repository_schema.json``, version :data:`SCHEMA_VERSION`)::

    repository/fashion_vectors/crawl_date=<YYYY-MM-DD>/retailer=<retailer>/part-<i>-of-<n>.parquet
    repository/fashion_vectors/_common_metadata      the dataset's file schema (Parquet convention)
    repository/commits/<commit_id>.json              what every refresh changed
    repository/_staging/<commit_id>/                 plan, shard outputs, files before they are published

An item lives in exactly one file for life: the partition of the night that first added it
(``crawl_date``, ``retailer``) and, inside it, file ``hash(item_id) mod n`` (``n`` fixed when the
partition is created). A refresh never moves an item; it rewrites the files that hold changed items,
each file replaced as a whole: every new file is first written under the staging prefix (outside the
dataset), then all are moved into place (local: a rename; S3: a server-side copy, atomic like a PUT).
So a reader that lists the prefix at any moment sees only complete files and every item exactly once;
a commit that fails before its moves (while merging or uploading) has changed nothing, and only in
the moves themselves may some files already hold the new rows and others the old ones.

A refresh is three steps, each idempotent (the refresh DAG maps step 2 over shards):

1. :func:`plan_refresh`: which items need inference (new items, a changed image, or stored model
   versions that differ from the published ones) and which only need new catalog fields; the plan is
   written to staging and the inference items are cut into shards.
2. ``models.inference.infer_shard``: the vectors of one shard, written to staging.
3. :func:`commit_refresh`: the changed rows are merged into their files, which are published.

Rerunning a night finds nothing to infer (same images, same models) and rewrites nothing, so it adds
no rows. This module imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
import shutil
import time
from collections.abc import Mapping
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import store_layout
from pipeline.storage import ObjectStore

if TYPE_CHECKING:
    from pipeline.settings import RepositorySettings

PREFIX = store_layout.FASHION_VECTORS_PREFIX
STAGING_PREFIX = store_layout.REPOSITORY_STAGING_PREFIX
COMMITS_PREFIX = store_layout.REPOSITORY_COMMITS_PREFIX
COMMON_METADATA_KEY = store_layout.REPOSITORY_COMMON_METADATA_KEY
SCHEMA_FILE = Path(__file__).with_name("repository_schema.json")
PARTITION_COLUMNS = ("crawl_date", "retailer")
READ_ATTEMPTS = 3
FILE_NAME = re.compile(r"part-(\d{5})-of-(\d{5})\.parquet$")
TYPES = {
    "string": pa.string(),
    "float64": pa.float64(),
    "float32": pa.float32(),
    "uint64": pa.uint64(),
    "date32": pa.date32(),
    "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
    "list<float32>": pa.list_(pa.float32()),
}
# Catalog fields of a row: a change to one of them rewrites the row without a new inference.
CATALOG_COLUMNS = (
    "product_url",
    "title",
    "price",
    "currency",
    "category",
    "image_key",
    "phash",
    "phash_mirror",
    "dhash",
)


class RepositoryError(RuntimeError):
    """The repository or a refresh's staging is not in the state the contract promises."""


@lru_cache(maxsize=1)
def schema_spec() -> dict[str, Any]:
    """``pipeline/repository_schema.json``: the documented columns, partitioning and version."""
    return json.loads(SCHEMA_FILE.read_text())


SCHEMA_VERSION: int = schema_spec()["schema_version"]
# The non-partition item columns, in file order (item_id first).
ITEM_COLUMNS = [
    c["name"]
    for c in schema_spec()["columns"]
    if not c.get("partition") and c["name"] not in ("embedding", "embedding_source", "inferred_at")
]


def attribute_columns(attribute: str) -> list[str]:
    """``<attr>``, ``<attr>_prob``, ``<attr>_probs``, ``<attr>_model_version``."""
    return [c["name"].format(attribute=attribute) for c in schema_spec()["attribute_columns"]["columns"]]


def vector_columns(attributes: list[str]) -> list[str]:
    """What inference writes: the attribute columns, the embedding, its source and inferred_at."""
    return [c for a in attributes for c in attribute_columns(a)] + ["embedding", "embedding_source", "inferred_at"]


def _field(spec: dict[str, Any], attribute: str | None = None) -> pa.Field:
    name = spec["name"].format(attribute=attribute) if attribute else spec["name"]
    return pa.field(name, TYPES[spec["type"]])  # nullable in Arrow; the JSON says which values are never null


def repository_schema(attributes: list[str]) -> pa.Schema:
    """The dataset's columns as readers see them (partition columns included), in documented order."""
    fields: list[pa.Field] = []
    for column in schema_spec()["columns"]:
        fields.append(_field(column))
        if column["name"] == "crawl_date":
            fields += [_field(c, a) for a in attributes for c in schema_spec()["attribute_columns"]["columns"]]
    return pa.schema(fields, metadata={"fashionnet.schema_version": str(SCHEMA_VERSION)})


def file_schema(attributes: list[str], classes: dict[str, list[str]] | None = None) -> pa.Schema:
    """The columns stored in each Parquet file: the dataset's without the partition columns."""
    metadata = {"fashionnet.schema_version": str(SCHEMA_VERSION)}
    if classes is not None:
        metadata["fashionnet.classes"] = json.dumps({a: list(classes[a]) for a in attributes})
    full = repository_schema(attributes)
    return pa.schema([f for f in full if f.name not in PARTITION_COLUMNS], metadata=metadata)


def _with_partition_columns(stored: pa.Schema) -> pa.Schema:
    """A file schema with ``retailer`` after item_id and ``crawl_date`` after crawled_at."""
    fields = [f for f in stored if f.name not in PARTITION_COLUMNS]
    names = [f.name for f in fields]
    fields.insert(names.index("item_id") + 1 if "item_id" in names else 0, pa.field("retailer", pa.string()))
    names = [f.name for f in fields]
    fields.insert(
        names.index("crawled_at") + 1 if "crawled_at" in names else len(fields), pa.field("crawl_date", pa.date32())
    )
    return pa.schema(fields, metadata=stored.metadata)


def partitioning() -> ds.Partitioning:
    """``crawl_date=<YYYY-MM-DD>/retailer=<URI-encoded retailer>``."""
    return ds.partitioning(pa.schema([("crawl_date", pa.date32()), ("retailer", pa.string())]), flavor="hive")


partition_prefix = store_layout.repository_partition_prefix
file_key = store_layout.repository_file_key


def bucket(item_id: str, count: int) -> int:
    """The file (0..count-1) of a partition that holds ``item_id``; stable across processes."""
    return int(hashlib.sha1(item_id.encode()).hexdigest()[:8], 16) % count


def repository_config(overrides: Mapping[str, Any] | None = None) -> RepositorySettings:
    """``settings.repository`` with ``overrides`` (some of its keys) replacing its values."""
    from pipeline.settings import get_settings

    return dataclasses.replace(get_settings().repository, **{k: int(v) for k, v in (overrides or {}).items()})


# -- reading ------------------------------------------------------------------------------------------
def arrow_filesystem(store: ObjectStore) -> pafs.FileSystem:
    """The store's filesystem for pyarrow (S3 goes through the store's own fsspec client)."""
    if store.protocol == "file":
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(store.fs))


def data_keys(store: ObjectStore) -> list[str]:
    """The dataset's Parquet files (sorted keys); ``_``- and ``.``-prefixed names are not data."""
    keys = []
    for key in store.list(PREFIX):
        parts = key[len(PREFIX) + 1 :].split("/")
        if key.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in parts):
            keys.append(key)
    return keys


def _stored_file_schema(store: ObjectStore, keys: list[str]) -> pa.Schema | None:
    if store.exists(COMMON_METADATA_KEY):
        return pq.read_schema(io.BytesIO(store.get_bytes(COMMON_METADATA_KEY)))
    if not keys:
        return None
    schemas = [pq.read_schema(store.fs.open(store.path(k), "rb")) for k in keys]
    return pa.unify_schemas(schemas, promote_options="permissive")


def repository_dataset(store: ObjectStore, attributes: list[str] | None = None) -> ds.Dataset:
    """The repository as a pyarrow dataset over its current files, partition columns included.

    Its schema is the one the last commit recorded (``_common_metadata``); a file written before a
    column existed reads it as nulls. ``attributes``: attribute columns to add when absent (null).
    An empty repository is an empty dataset with the schema of ``attributes`` (default: the taxonomy).
    """
    keys = data_keys(store)
    stored = _stored_file_schema(store, keys)
    if stored is None:
        if attributes is None:
            from pipeline.settings import get_settings

            attributes = get_settings().taxonomy.names
        stored = file_schema(attributes)
    elif attributes:
        missing = [f for f in file_schema(attributes) if f.name not in stored.names]
        stored = pa.schema(list(stored) + missing, metadata=stored.metadata)
    schema = _with_partition_columns(stored)
    if not keys:
        return ds.dataset([], schema=schema, format="parquet")
    return ds.dataset(
        [store.path(k) for k in keys],
        schema=schema,
        format="parquet",
        filesystem=arrow_filesystem(store),
        partitioning=partitioning(),
        partition_base_dir=store.path(PREFIX),
    )


def read_repository(
    store: ObjectStore, columns: list[str] | None = None, filter: Any = None, *, sort: bool = True
) -> pa.Table:
    """The repository (all partitions; ``crawl_date`` and ``retailer`` as normal columns), one row
    per item, sorted by item_id (``sort=False``: in file order, also deterministic, and cheaper:
    reordering 200,000 rows with 512-value embeddings takes about a second).

    ``columns``: a projection (default: every column); ``filter``: a ``pyarrow.compute.Expression``
    (e.g. ``pc.field("pattern") == "striped"``) or pandas-style DNF tuples
    (``[("crawl_date", ">=", date(2026, 11, 1))]``), pushed down to partitions and row groups.
    """
    if isinstance(filter, (list, tuple)):
        filter = pq.filters_to_expression(filter)
    for attempt in range(READ_ATTEMPTS):
        dataset = repository_dataset(store)
        wanted = list(columns) if columns is not None else dataset.schema.names
        read = wanted if "item_id" in wanted else ["item_id", *wanted]
        try:
            table = dataset.to_table(columns=read, filter=filter)
            break
        except OSError:
            # On S3 a file replaced by a commit while it is read fails the read (s3fs pins the ETag):
            # list the dataset again and reread.
            if attempt == READ_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    if pc.count_distinct(table["item_id"]).as_py() != table.num_rows:
        counts = pc.value_counts(table["item_id"])
        repeated = [v["values"] for v in counts.to_pylist() if v["counts"] > 1][:5]
        raise RepositoryError(f"the repository in {store.uri} holds more than one row for item(s) {repeated}")
    if sort and table.num_rows > 1:
        ids = table["item_id"].combine_chunks()
        if not pc.all(pc.less(ids.slice(0, len(ids) - 1), ids.slice(1))).as_py():
            table = table.sort_by("item_id")
    return table.select(wanted)


def published_models(store: ObjectStore, attributes: list[str]) -> dict[str, dict[str, Any]]:
    """attribute -> {"version", "classes"} of the published (current) networks, read without Keras."""
    records = {}
    for attribute in attributes:
        key = store_layout.model_pointer_key(attribute)
        if store.exists(key):
            record = store.read_json(key)
            records[attribute] = {"version": record["version"], "classes": list(record["classes"])}
    missing = [a for a in attributes if a not in records]
    if missing:
        raise LookupError(f"no published model for attribute(s) {missing} in {store.uri}; train and publish them first")
    return records


# -- planning -----------------------------------------------------------------------------------------
staging_prefix = store_layout.repository_staging_prefix


def plan_keys(commit_id: str) -> tuple[str, str]:
    """(plan record, plan per item) of refresh ``commit_id``."""
    return store_layout.repository_plan_key(commit_id), store_layout.repository_plan_items_key(commit_id)


def shard_keys(commit_id: str, shard: int) -> tuple[str, str]:
    """(summary, vectors) of one shard of refresh ``commit_id``."""
    return (
        store_layout.repository_shard_summary_key(commit_id, shard),
        store_layout.repository_shard_vectors_key(commit_id, shard),
    )


def _night_of(batch_id: str | None, batch: pa.Table | None) -> date:
    """The night a batch belongs to: its id's ``YYYYMMDD`` (``catalog-20261101``, a retailer's
    ``catalog-20261101-acme``), else its latest crawl, else today."""
    match = re.search(r"-(\d{8})(?:-[a-z0-9][a-z0-9_-]{0,63})?$", batch_id or "")
    if match:
        return datetime.strptime(match.group(1), "%Y%m%d").date()
    if batch is not None and batch.num_rows and pc.max(batch["crawled_at"]).as_py() is not None:
        return pc.max(batch["crawled_at"]).as_py().astimezone(UTC).date()
    return datetime.now(UTC).date()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: cast, or null where absent."""
    arrays = [
        table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _first_per_item(table: pa.Table) -> pa.Table:
    seen: dict[str, int] = {}
    for index, item in enumerate(table["item_id"].to_pylist()):
        seen.setdefault(item, index)
    return table if len(seen) == table.num_rows else table.take(pa.array(sorted(seen.values()), pa.int64()))


def _batch_items(store: ObjectStore, batch_id: str) -> pa.Table:
    """The accepted items of a curated batch, with the repository's item columns and retailer."""
    accepted = store.read_parquet(store_layout.curation_accepted_key(batch_id))
    schema = pa.schema([pa.field("retailer", pa.string())] + [f for f in file_schema([]) if f.name in ITEM_COLUMNS])
    table = _first_per_item(_conform(accepted, schema).filter(pc.is_valid(pc.field("item_id"))))
    retailer = pc.fill_null(table["retailer"], "unknown")
    return table.set_column(0, "retailer", retailer)


def _batches_items(store: ObjectStore, batch_ids: list[str]) -> pa.Table | None:
    """The accepted items of several curated batches (one per retailer); an item in more than one keeps
    the row crawled last (then the later batch id), so the result does not depend on the batches' order."""
    if not batch_ids:
        return None
    tables = []
    for batch_id in sorted(set(batch_ids)):
        items = _batch_items(store, batch_id)
        tables.append(items.append_column("_batch", pa.array([batch_id] * items.num_rows, pa.string())))
    table = pa.concat_tables(tables)
    if len(tables) > 1:
        table = table.sort_by([("crawled_at", "descending"), ("_batch", "descending")])
        table = _first_per_item(table)
    return table.drop_columns(["_batch"])


def _current_state(store: ObjectStore, attributes: list[str]) -> pa.Table:
    """Every stored row without its vectors: item and catalog columns, model versions, its file."""
    dataset = repository_dataset(store, attributes)
    columns = [
        "item_id",
        "retailer",
        "crawl_date",
        "content_sha256",
        "crawled_at",
        *CATALOG_COLUMNS,
        *[f"{a}_model_version" for a in attributes],
    ]
    table = dataset.to_table(columns=columns + ["__filename"])
    root = store.path(PREFIX)[: -len(PREFIX)]
    files = pc.utf8_slice_codeunits(table["__filename"], len(root))
    table = table.drop_columns(["__filename"]).append_column("file", files)
    if pc.count_distinct(table["item_id"]).as_py() != table.num_rows:
        raise RepositoryError(f"the repository in {store.uri} holds more than one row for some item")
    return table


def _equal(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    """Element-wise equality where null equals null."""
    both_null = pc.and_(pc.is_null(a), pc.is_null(b))
    return pc.or_(both_null, pc.fill_null(pc.equal(a, b), False))


def _new_item_files(new: pa.Table, crawl_date: date, existing_files: list[str], max_file_rows: int) -> list[str]:
    """The file of each new item: its retailer's partition of ``crawl_date``, bucket by item_id."""
    counts: dict[str, int] = {}
    for retailer in set(new["retailer"].to_pylist()):
        prefix = partition_prefix(crawl_date, retailer) + "/"
        found = {int(m.group(2)) for k in existing_files if k.startswith(prefix) and (m := FILE_NAME.search(k))}
        if len(found) > 1:
            raise RepositoryError(f"partition {prefix} has files of different bucket counts {sorted(found)}")
        size = sum(1 for r in new["retailer"].to_pylist() if r == retailer)
        counts[retailer] = found.pop() if found else max(1, math.ceil(size / max_file_rows))
    return [
        file_key(crawl_date, r, bucket(i, counts[r]), counts[r])
        for i, r in zip(new["item_id"].to_pylist(), new["retailer"].to_pylist())
    ]


def plan_refresh(
    store: ObjectStore,
    commit_id: str,
    *,
    batch_id: str | None = None,
    batch_ids: list[str] | None = None,
    failed_retailers: list[str] | None = None,
    crawl_date: date | None = None,
    attributes: list[str] | None = None,
    models: dict[str, dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Decide what refresh ``commit_id`` changes and write the plan to its staging prefix.

    ``batch_id``: a curated catalog batch whose items are added or updated, or ``batch_ids``: several
    (the night's batch of each retailer; neither: only re-score rows whose model versions are not
    ``models'``). ``failed_retailers``: retailers whose batch the night could not make, recorded in the
    plan and the commit record. ``crawl_date``: the partition of new items (default: the first batch
    id's ``YYYYMMDD``). ``models``: attribute -> {"version", "classes"} (default: the
    published networks of ``attributes``, default the taxonomy's). Per item, the action is one of
    ``new`` (not in the repository), ``image`` (content_sha256 changed), ``model`` (a stored model
    version differs; re-inferred from the row's own image when the batch does not have the item) —
    these three are inferred — or ``catalog`` (only catalog fields changed: the stored vectors are
    kept). A batch row crawled before the stored row is not applied.
    """
    sizes = repository_config(config)
    if attributes is None:
        from pipeline.settings import get_settings

        attributes = get_settings().taxonomy.names
    models = models or published_models(store, attributes)
    versions = {a: models[a]["version"] for a in attributes}
    prefix = staging_prefix(commit_id)
    store.delete_prefix(prefix + "/")  # an earlier attempt's plan and shard outputs

    if batch_id and batch_ids:
        raise ValueError("give batch_id or batch_ids, not both")
    batches = sorted(set(batch_ids)) if batch_ids else ([batch_id] if batch_id else [])
    current = _current_state(store, attributes)
    batch = _batches_items(store, batches)
    crawl_date = crawl_date or _night_of(batches[0] if batches else None, batch)

    model_changed = pa.chunked_array([pa.array([False] * current.num_rows, pa.bool_())])
    for attribute in attributes:
        stale = pc.invert(
            _equal(
                current[f"{attribute}_model_version"],
                pa.chunked_array([pa.array([versions[attribute]] * current.num_rows, pa.string())]),
            )
        )
        model_changed = pc.or_(model_changed, stale)
    current = current.append_column("model_changed", model_changed)
    parts: list[pa.Table] = []
    applied: set[str] = set()
    if batch is not None and batch.num_rows:
        old = current.rename_columns([c if c == "item_id" else f"old.{c}" for c in current.column_names])
        joined = batch.join(old, keys="item_id", join_type="left outer").sort_by("item_id")
        known = pc.is_valid(joined["old.file"])
        fresh = pc.fill_null(pc.greater_equal(joined["crawled_at"], joined["old.crawled_at"]), True)
        image = pc.invert(_equal(joined["content_sha256"], joined["old.content_sha256"]))
        catalog = pa.chunked_array([pa.array([False] * joined.num_rows, pa.bool_())])
        for column in CATALOG_COLUMNS:
            catalog = pc.or_(catalog, pc.invert(_equal(joined[column], joined[f"old.{column}"])))
        models_stale = pc.fill_null(joined["old.model_changed"], True)
        action = pc.case_when(
            pc.make_struct(
                pc.invert(known), pc.and_(fresh, image), pc.and_(fresh, models_stale), pc.and_(fresh, catalog)
            ),
            "new",
            "image",
            "model",
            "catalog",
        )
        # A stored row that the batch settles (crawled no earlier than it) is not re-scored on its own.
        applied = set(joined.filter(pc.and_(known, fresh))["item_id"].to_pylist())
        joined = joined.append_column("action", action).filter(pc.is_valid(pc.field("action")))
        new = joined.filter(pc.equal(pc.field("action"), "new"))
        new_files = _new_item_files(new, crawl_date, data_keys(store), sizes.max_file_rows)
        files = dict(zip(new["item_id"].to_pylist(), new_files))
        file_column = [files.get(i, f) for i, f in zip(joined["item_id"].to_pylist(), joined["old.file"].to_pylist())]
        dates = pc.fill_null(joined["old.crawl_date"], pa.scalar(crawl_date, pa.date32()))
        retailers = pc.if_else(pc.is_valid(joined["old.file"]), joined["old.retailer"], joined["retailer"])
        parts.append(
            pa.table(
                {
                    "item_id": joined["item_id"],
                    "action": joined["action"],
                    "file": pa.array(file_column, pa.string()),
                    "crawl_date": dates,
                    "retailer": retailers,
                    **{c: joined[c] for c in ITEM_COLUMNS if c != "item_id"},
                }
            )
        )
    rescore = current.filter(pc.field("model_changed"))
    if applied:
        rescore = rescore.filter(pc.invert(pc.is_in(rescore["item_id"], pa.array(sorted(applied), pa.string()))))
    if rescore.num_rows:
        parts.append(
            pa.table(
                {
                    "item_id": rescore["item_id"],
                    "action": pa.array(["model"] * rescore.num_rows, pa.string()),
                    "file": rescore["file"],
                    "crawl_date": rescore["crawl_date"],
                    "retailer": rescore["retailer"],
                    **{c: rescore[c] for c in ITEM_COLUMNS if c != "item_id"},
                }
            )
        )
    plan_schema = pa.schema(
        [
            pa.field("item_id", pa.string()),
            pa.field("action", pa.string()),
            pa.field("file", pa.string()),
            pa.field("crawl_date", pa.date32()),
            pa.field("retailer", pa.string()),
        ]
        + [f for f in file_schema([]) if f.name in ITEM_COLUMNS and f.name != "item_id"]
    )
    plan = pa.concat_tables([_conform(p, plan_schema) for p in parts]) if parts else plan_schema.empty_table()
    plan = plan.sort_by("item_id")

    infer = pc.is_in(plan["action"], pa.array(["new", "image", "model"]))
    n_infer = pc.sum(infer).as_py() or 0
    shards = min(sizes.max_shards, max(1, math.ceil(n_infer / sizes.shard_size)))
    positions = pc.subtract(pc.cumulative_sum(pc.cast(infer, pa.int64())), 1)
    shard = pc.if_else(infer, pc.divide(pc.multiply(positions, shards), max(n_infer, 1)), -1)
    plan = plan.append_column("shard", pc.cast(shard, pa.int32()))

    actions = {a: int(pc.sum(pc.equal(plan["action"], a)).as_py() or 0) for a in ("new", "image", "model", "catalog")}
    info = {
        "commit_id": commit_id,
        "batch_id": batches[0] if len(batches) == 1 else None,
        "batch_ids": batches,
        "failed_retailers": sorted(failed_retailers or []),
        "crawl_date": crawl_date.isoformat(),
        "attributes": list(attributes),
        "versions": versions,
        "classes": {a: list(models[a]["classes"]) for a in attributes},
        "shards": shards,
        "to_infer": n_infer,
        "actions": actions,
        "batch_items": batch.num_rows if batch is not None else 0,
        "repository_rows": current.num_rows,
        "schema_version": SCHEMA_VERSION,
        "planned_at": datetime.now(UTC).isoformat(),
    }
    info_key, table_key = plan_keys(commit_id)
    store.write_parquet(table_key, plan)
    store.write_json(info_key, info)
    print(f"[repository {commit_id}] plan: {actions} -> {n_infer} items to infer in {shards} shard(s)", flush=True)
    return info


def read_plan(store: ObjectStore, commit_id: str) -> tuple[dict[str, Any], pa.Table]:
    """(plan info, plan rows) of refresh ``commit_id``."""
    info_key, table_key = plan_keys(commit_id)
    if not store.exists(info_key):
        raise RepositoryError(f"refresh {commit_id!r} has no plan in {store.uri}; run plan_refresh first")
    return store.read_json(info_key), store.read_parquet(table_key)


def shard_items(store: ObjectStore, commit_id: str, shard: int) -> tuple[dict[str, Any], pa.Table]:
    """(plan info, the item_id and image_key of the items shard ``shard`` infers)."""
    info, plan = read_plan(store, commit_id)
    if not 0 <= shard < info["shards"]:
        raise ValueError(f"refresh {commit_id!r} has shards 0..{info['shards'] - 1}, not {shard}")
    return info, plan.filter(pc.equal(plan["shard"], shard)).select(["item_id", "image_key"])


def write_shard(store: ObjectStore, commit_id: str, shard: int, vectors: pa.Table, summary: dict[str, Any]) -> None:
    """Stage one shard's vectors (and its summary, written last: its presence marks the shard done)."""
    info, _ = read_plan(store, commit_id)
    schema = file_schema(info["attributes"])
    summary_key, table_key = shard_keys(commit_id, shard)
    store.write_parquet(
        table_key,
        _conform(vectors, pa.schema([f for f in schema if f.name in ["item_id", *vector_columns(info["attributes"])]])),
    )
    store.write_json(summary_key, summary)


# -- committing ---------------------------------------------------------------------------------------
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


staged_file_key = store_layout.repository_staged_file_key


def _staged_vectors(store: ObjectStore, info: dict[str, Any]) -> tuple[pa.Table, list[str]]:
    commit_id = info["commit_id"]
    tables, skipped = [], []
    for shard in range(info["shards"]):
        summary_key, table_key = shard_keys(commit_id, shard)
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
    vectors = pa.concat_tables([_conform(t, schema) for t in tables]) if tables else schema.empty_table()
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
    info_key, _ = plan_keys(commit_id)
    done_key = committed_key(commit_id)
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
        existing = _conform(store.read_parquet(key), schema) if store.exists(key) else schema.empty_table()
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
        store.put_bytes(staged_file_key(commit_id, key), _parquet_bytes(table, sizes.row_group_rows))
        written.append({"key": key, "rows": table.num_rows, "changed": len(replaced)})
    # Every new file is staged: only now does the dataset change, by moves that move no bytes.
    for entry in written:
        store.move(staged_file_key(commit_id, entry["key"]), entry["key"])
        if on_publish is not None:
            on_publish(entry["key"])
    if written or not store.exists(COMMON_METADATA_KEY):
        common = io.BytesIO()
        pq.write_metadata(schema, common)
        store.put_bytes(COMMON_METADATA_KEY, common.getvalue())
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
        print(f"[repository {commit_id}] nothing changed; {record_key} of the earlier commit is kept", flush=True)
    store.write_json(done_key, record)  # from here on a retry only finishes the clean-up
    _delete_staging(store, commit_id)
    print(
        f"[repository {commit_id}] committed {sum(w['changed'] for w in written)} rows in {len(written)} file(s);"
        f" {rows} items in the repository",
        flush=True,
    )
    return record


committed_key = store_layout.repository_committed_key


def _delete_staging(store: ObjectStore, commit_id: str) -> None:
    """Delete refresh ``commit_id``'s staging, :func:`committed_key` last: a clean-up cut short (the
    endpoint gone) leaves that mark, so the retried commit only finishes the clean-up."""
    prefix = staging_prefix(commit_id)
    done_key = committed_key(commit_id)
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
