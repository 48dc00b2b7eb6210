"""Step 1 of a repository refresh: which items need inference and which only new catalog fields,
written to the refresh's staging prefix with the inference items cut into shards."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    repository_dataset,
)
from pipeline.settings import RepositorySettings, get_settings
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


@dataclass(frozen=True)
class RefreshPlanRequest:
    """What refresh ``commit_id`` is asked to apply, for the networks of ``attributes``.

    ``batch_id``: a curated catalog batch whose items are added or updated, or ``batch_ids``: several
    (the night's batch of each retailer; neither: only re-score rows whose model versions are not
    ``models'``). ``failed_retailers``: retailers whose batch the night could not make, recorded in the
    plan and the commit record. ``crawl_date``: the partition of new items (default: the first batch
    id's ``YYYYMMDD``). ``models``: attribute -> {"version", "classes"} (default: the published
    networks of ``attributes``).
    """

    commit_id: str
    attributes: Sequence[str]
    batch_id: str | None = None
    batch_ids: Sequence[str] = ()
    failed_retailers: Sequence[str] = ()
    crawl_date: date | None = None
    models: Mapping[str, Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.batch_id and self.batch_ids:
            raise ValueError("give batch_id or batch_ids, not both")

    def batches(self) -> list[str]:
        """The batch ids to apply, sorted and without repeats."""
        return sorted(set(self.batch_ids)) if self.batch_ids else ([self.batch_id] if self.batch_id else [])


@dataclass(frozen=True)
class _PlanInputs:
    """What a plan is computed from: the batches' items (``batch``, None without batches), the stored
    rows (``current``, with a ``model_changed`` column), the new items' partition date and the networks."""

    batch_ids: list[str]
    batch: pa.Table | None
    current: pa.Table
    crawl_date: date
    models: Mapping[str, Mapping[str, Any]]
    versions: dict[str, str]


def plan_refresh(
    store: ObjectStore, request: RefreshPlanRequest, repository: RepositorySettings | None = None
) -> dict[str, Any]:
    """Decide what refresh ``request.commit_id`` changes and write the plan to its staging prefix.

    Per item, the action is one of ``new`` (not in the repository), ``image`` (content_sha256
    changed), ``model`` (a stored model version differs; re-inferred from the row's own image when
    the batch does not have the item) — these three are inferred — or ``catalog`` (only catalog
    fields changed: the stored vectors are kept). A batch row crawled before the stored row is not
    applied. The rows to infer are cut into shards as ``repository`` (default: ``settings.repository``)
    says; new items are spread over files of at most its ``max_file_rows``.
    """
    repository = repository or get_settings().repository
    models = request.models or published_models(store, list(request.attributes))
    # An earlier attempt's plan and shard outputs go.
    store.delete_prefix(store_layout.repository_staging_prefix(request.commit_id) + "/")
    inputs = _plan_inputs(store, request, models)
    parts, applied = _batch_rows(store, inputs, repository.max_file_rows)
    parts += _rescore_rows(inputs.current, applied)
    plan, shards, to_infer = _with_shards(_plan_table(parts), repository)
    info = _plan_info(request, inputs, plan, shards, to_infer)
    _write_plan(store, plan, info)
    return info


def _plan_inputs(
    store: ObjectStore, request: RefreshPlanRequest, models: Mapping[str, Mapping[str, Any]]
) -> _PlanInputs:
    """Read the stored rows and the request's batches."""
    attributes = list(request.attributes)
    versions = {a: models[a]["version"] for a in attributes}
    batch_ids = request.batches()
    current = _current_state(store, attributes)
    batch = _batches_items(store, batch_ids)
    crawl_date = request.crawl_date or _night_of(batch_ids[0] if batch_ids else None, batch)
    return _PlanInputs(batch_ids, batch, _with_model_changed(current, versions), crawl_date, models, versions)


def _with_model_changed(current: pa.Table, versions: dict[str, str]) -> pa.Table:
    """The stored rows with ``model_changed``: some attribute's model version is not ``versions'``."""
    model_changed = pa.chunked_array([pa.array([False] * current.num_rows, pa.bool_())])
    for attribute, version in versions.items():
        stale = pc.invert(
            _equal(
                current[f"{attribute}_model_version"],
                pa.chunked_array([pa.array([version] * current.num_rows, pa.string())]),
            )
        )
        model_changed = pc.or_(model_changed, stale)
    return current.append_column("model_changed", model_changed)


def _batch_actions(batch: pa.Table, current: pa.Table) -> tuple[pa.Table, set[str]]:
    """The batch's rows joined to their stored rows (as ``old.<column>``), each with its ``action``
    (rows that change nothing are left out), and the stored items the batch settles (crawled no
    earlier than the stored row): those are not re-scored on their own."""
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
        pc.make_struct(pc.invert(known), pc.and_(fresh, image), pc.and_(fresh, models_stale), pc.and_(fresh, catalog)),
        "new",
        "image",
        "model",
        "catalog",
    )
    applied = set(joined.filter(pc.and_(known, fresh))["item_id"].to_pylist())
    return joined.append_column("action", action).filter(pc.is_valid(pc.field("action"))), applied


def _batch_rows(store: ObjectStore, inputs: _PlanInputs, max_file_rows: int) -> tuple[list[pa.Table], set[str]]:
    """The plan rows of the batches' items (none without a batch row) and the stored items they settle:
    a known item keeps its file, crawl_date and retailer; a new one gets a file of ``inputs.crawl_date``."""
    if inputs.batch is None or not inputs.batch.num_rows:
        return [], set()
    joined, applied = _batch_actions(inputs.batch, inputs.current)
    new = joined.filter(pc.equal(pc.field("action"), "new"))
    new_files = _new_item_files(new, inputs.crawl_date, data_keys(store), max_file_rows)
    files = dict(zip(new["item_id"].to_pylist(), new_files))
    file_column = [files.get(i, f) for i, f in zip(joined["item_id"].to_pylist(), joined["old.file"].to_pylist())]
    dates = pc.fill_null(joined["old.crawl_date"], pa.scalar(inputs.crawl_date, pa.date32()))
    retailers = pc.if_else(pc.is_valid(joined["old.file"]), joined["old.retailer"], joined["retailer"])
    rows = pa.table(
        {
            "item_id": joined["item_id"],
            "action": joined["action"],
            "file": pa.array(file_column, pa.string()),
            "crawl_date": dates,
            "retailer": retailers,
            **{c: joined[c] for c in ITEM_COLUMNS if c != "item_id"},
        }
    )
    return [rows], applied


def _rescore_rows(current: pa.Table, applied: set[str]) -> list[pa.Table]:
    """The ``model`` plan rows of stored items with a changed model version that no batch row settles
    (none when there are none), from their stored fields."""
    rescore = current.filter(pc.field("model_changed"))
    if applied:
        rescore = rescore.filter(pc.invert(pc.is_in(rescore["item_id"], pa.array(sorted(applied), pa.string()))))
    if not rescore.num_rows:
        return []
    rows = pa.table(
        {
            "item_id": rescore["item_id"],
            "action": pa.array(["model"] * rescore.num_rows, pa.string()),
            "file": rescore["file"],
            "crawl_date": rescore["crawl_date"],
            "retailer": rescore["retailer"],
            **{c: rescore[c] for c in ITEM_COLUMNS if c != "item_id"},
        }
    )
    return [rows]


def _plan_table(parts: list[pa.Table]) -> pa.Table:
    """The plan rows in one table of the plan's columns, sorted by item_id."""
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
    return plan.sort_by("item_id")


def _with_shards(plan: pa.Table, repository: RepositorySettings) -> tuple[pa.Table, int, int]:
    """(``plan`` with its ``shard`` column, the number of shards, the rows to infer): the rows to infer,
    in item order, cut into ``ceil(n / shard_size)`` shards of near-equal size (at most ``max_shards``,
    at least one: an empty list would skip the mapped task and the commit after it); -1 for the others."""
    infer = pc.is_in(plan["action"], pa.array(["new", "image", "model"]))
    to_infer = pc.sum(infer).as_py() or 0
    shards = min(repository.max_shards, max(1, math.ceil(to_infer / repository.shard_size)))
    positions = pc.subtract(pc.cumulative_sum(pc.cast(infer, pa.int64())), 1)
    shard = pc.if_else(infer, pc.divide(pc.multiply(positions, shards), max(to_infer, 1)), -1)
    return plan.append_column("shard", pc.cast(shard, pa.int32())), shards, to_infer


def _plan_info(
    request: RefreshPlanRequest, inputs: _PlanInputs, plan: pa.Table, shards: int, to_infer: int
) -> dict[str, Any]:
    """The plan's record (``plan.json``): what was asked, the networks, the counts per action."""
    actions = {a: int(pc.sum(pc.equal(plan["action"], a)).as_py() or 0) for a in ("new", "image", "model", "catalog")}
    batch_ids = inputs.batch_ids
    return {
        "commit_id": request.commit_id,
        "batch_id": batch_ids[0] if len(batch_ids) == 1 else None,
        "batch_ids": batch_ids,
        "failed_retailers": sorted(request.failed_retailers),
        "crawl_date": inputs.crawl_date.isoformat(),
        "attributes": list(request.attributes),
        "versions": inputs.versions,
        "classes": {a: list(inputs.models[a]["classes"]) for a in request.attributes},
        "shards": shards,
        "to_infer": to_infer,
        "actions": actions,
        "batch_items": inputs.batch.num_rows if inputs.batch is not None else 0,
        "repository_rows": inputs.current.num_rows,
        "schema_version": SCHEMA_VERSION,
        "planned_at": datetime.now(UTC).isoformat(),
    }


def _write_plan(store: ObjectStore, plan: pa.Table, info: dict[str, Any]) -> None:
    """Stage the plan's rows, then its record (``plan.json``)."""
    commit_id = info["commit_id"]
    store.write_parquet(store_layout.repository_plan_items_key(commit_id), plan)
    store.write_json(store_layout.repository_plan_key(commit_id), info)
    logger.info(
        "[repository %s] plan: %s -> %d items to infer in %d shard(s)",
        commit_id,
        info["actions"],
        info["to_infer"],
        info["shards"],
    )


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
