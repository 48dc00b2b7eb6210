"""The fashion-vector repository's layout and schema, and its readers
(:func:`read_repository`, :func:`repository_dataset`); no TensorFlow, no Keras."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import store_layout
from pipeline.settings import get_settings
from pipeline.storage import ObjectStore

SCHEMA_FILE = Path(__file__).with_name("schema.json")
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
    """``pipeline/repository/schema.json``: the documented columns, partitioning and version."""
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


def bucket(item_id: str, count: int) -> int:
    """The file (0..count-1) of a partition that holds ``item_id``; stable across processes."""
    return int(hashlib.sha1(item_id.encode()).hexdigest()[:8], 16) % count


# -- reading ------------------------------------------------------------------------------------------
def arrow_filesystem(store: ObjectStore) -> pafs.FileSystem:
    """The store's filesystem for pyarrow (S3 goes through the store's own fsspec client)."""
    if store.protocol == "file":
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(store.fs))


def data_keys(store: ObjectStore) -> list[str]:
    """The dataset's Parquet files (sorted keys); ``_``- and ``.``-prefixed names are not data."""
    keys = []
    for key in store.list(store_layout.FASHION_VECTORS_PREFIX):
        parts = key[len(store_layout.FASHION_VECTORS_PREFIX) + 1 :].split("/")
        if key.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in parts):
            keys.append(key)
    return keys


def _stored_file_schema(store: ObjectStore, keys: list[str]) -> pa.Schema | None:
    if store.exists(store_layout.REPOSITORY_COMMON_METADATA_KEY):
        return pq.read_schema(io.BytesIO(store.get_bytes(store_layout.REPOSITORY_COMMON_METADATA_KEY)))
    if not keys:
        return None
    schemas = [pq.read_schema(store.fs.open(store.path(k), "rb")) for k in keys]
    return pa.unify_schemas(schemas, promote_options="permissive")


def repository_dataset(
    store: ObjectStore, attributes: Sequence[str] = (), *, empty_attributes: Sequence[str] | None = None
) -> ds.Dataset:
    """The repository as a pyarrow dataset over its current files, partition columns included.

    Its schema is the one the last commit recorded (``_common_metadata``); a file written before a
    column existed reads it as nulls. ``attributes``: attribute columns to add when absent (null).
    An empty repository is an empty dataset with the schema of ``empty_attributes`` (default: ``attributes``).
    """
    keys = data_keys(store)
    stored = _stored_file_schema(store, keys)
    if stored is None:
        stored = file_schema(list(attributes if empty_attributes is None else empty_attributes))
    elif attributes:
        missing = [f for f in file_schema(list(attributes)) if f.name not in stored.names]
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
        partition_base_dir=store.path(store_layout.FASHION_VECTORS_PREFIX),
    )


def read_repository(
    store: ObjectStore,
    columns: list[str] | None = None,
    filter: Any = None,
    *,
    sort: bool = True,
    empty_attributes: Sequence[str] | None = None,
) -> pa.Table:
    """The repository (all partitions; ``crawl_date`` and ``retailer`` as normal columns), one row
    per item, sorted by item_id (``sort=False``: in file order, also deterministic, and cheaper:
    reordering 200,000 rows with 512-value embeddings takes about a second).

    ``columns``: a projection (default: every column); ``filter``: a ``pyarrow.compute.Expression``
    (e.g. ``pc.field("pattern") == "striped"``) or pandas-style DNF tuples
    (``[("crawl_date", ">=", date(2026, 11, 1))]``), pushed down to partitions and row groups.
    ``empty_attributes``: the attribute columns of an empty repository (default: the taxonomy's).
    """
    if empty_attributes is None:
        empty_attributes = get_settings().taxonomy.names
    if isinstance(filter, (list, tuple)):
        filter = pq.filters_to_expression(filter)
    for attempt in range(READ_ATTEMPTS):
        dataset = repository_dataset(store, empty_attributes=empty_attributes)
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
    """attribute -> {"version", "classes"} of the published (current) networks: the registry's record
    (:func:`models.registry.current`, which imports no Keras)."""
    from models.registry import current

    records = {}
    for attribute in attributes:
        record = current(store, attribute)
        if record is not None:
            records[attribute] = {"version": record["version"], "classes": list(record["classes"])}
    missing = [a for a in attributes if a not in records]
    if missing:
        raise LookupError(f"no published model for attribute(s) {missing} in {store.uri}; train and publish them first")
    return records


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: cast, or null where absent."""
    arrays = [
        table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)
