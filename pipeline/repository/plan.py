"""Step 1 of a repository refresh: which items need inference and which only new catalog fields,
written to the refresh's staging prefix with the inference items cut into shards."""

from __future__ import annotations

import logging
import math
import re
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import store_layout
from pipeline.repository.dataset import (
    CATALOG_COLUMNS,
    FILE_NAME,
    ITEM_COLUMNS,
    SCHEMA_VERSION,
    RepositoryError,
    bucket,
    conform,
    data_keys,
    file_schema,
    published_models,
    repository_config,
    repository_dataset,
)
from pipeline.storage import ObjectStore

logger = logging.getLogger(__name__)


def _night_of(batch_id: str | None, batch: pa.Table | None) -> date:
    """The night a batch belongs to: its id's ``YYYYMMDD`` (``catalog-20261101``, a retailer's
    ``catalog-20261101-acme``), else its latest crawl, else today."""
    match = re.search(r"-(\d{8})(?:-[a-z0-9][a-z0-9_-]{0,63})?$", batch_id or "")
    if match:
        return datetime.strptime(match.group(1), "%Y%m%d").date()
    if batch is not None and batch.num_rows and pc.max(batch["crawled_at"]).as_py() is not None:
        return pc.max(batch["crawled_at"]).as_py().astimezone(UTC).date()
    return datetime.now(UTC).date()


def _first_per_item(table: pa.Table) -> pa.Table:
    seen: dict[str, int] = {}
    for index, item in enumerate(table["item_id"].to_pylist()):
        seen.setdefault(item, index)
    return table if len(seen) == table.num_rows else table.take(pa.array(sorted(seen.values()), pa.int64()))


def _batch_items(store: ObjectStore, batch_id: str) -> pa.Table:
    """The accepted items of a curated batch, with the repository's item columns and retailer."""
    accepted = store.read_parquet(store_layout.curation_accepted_key(batch_id))
    schema = pa.schema([pa.field("retailer", pa.string())] + [f for f in file_schema([]) if f.name in ITEM_COLUMNS])
    table = _first_per_item(conform(accepted, schema).filter(pc.is_valid(pc.field("item_id"))))
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
    root = store.path(store_layout.FASHION_VECTORS_PREFIX)[: -len(store_layout.FASHION_VECTORS_PREFIX)]
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
        prefix = store_layout.repository_partition_prefix(crawl_date, retailer) + "/"
        found = {int(m.group(2)) for k in existing_files if k.startswith(prefix) and (m := FILE_NAME.search(k))}
        if len(found) > 1:
            raise RepositoryError(f"partition {prefix} has files of different bucket counts {sorted(found)}")
        size = sum(1 for r in new["retailer"].to_pylist() if r == retailer)
        counts[retailer] = found.pop() if found else max(1, math.ceil(size / max_file_rows))
    return [
        store_layout.repository_file_key(crawl_date, r, bucket(i, counts[r]), counts[r])
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
    prefix = store_layout.repository_staging_prefix(commit_id)
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
    plan = pa.concat_tables([conform(p, plan_schema) for p in parts]) if parts else plan_schema.empty_table()
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
    info_key = store_layout.repository_plan_key(commit_id)
    table_key = store_layout.repository_plan_items_key(commit_id)
    store.write_parquet(table_key, plan)
    store.write_json(info_key, info)
    logger.info("[repository %s] plan: %s -> %d items to infer in %d shard(s)", commit_id, actions, n_infer, shards)
    return info


def read_plan(store: ObjectStore, commit_id: str) -> tuple[dict[str, Any], pa.Table]:
    """(plan info, plan rows) of refresh ``commit_id``."""
    info_key = store_layout.repository_plan_key(commit_id)
    table_key = store_layout.repository_plan_items_key(commit_id)
    if not store.exists(info_key):
        raise RepositoryError(f"refresh {commit_id!r} has no plan in {store.uri}; run plan_refresh first")
    return store.read_json(info_key), store.read_parquet(table_key)


def shard_items(store: ObjectStore, commit_id: str, shard: int) -> tuple[dict[str, Any], pa.Table]:
    """(plan info, the item_id and image_key of the items shard ``shard`` infers)."""
    info, plan = read_plan(store, commit_id)
    if not 0 <= shard < info["shards"]:
        raise ValueError(f"refresh {commit_id!r} has shards 0..{info['shards'] - 1}, not {shard}")
    return info, plan.filter(pc.equal(plan["shard"], shard)).select(["item_id", "image_key"])
