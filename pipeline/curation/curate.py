"""Curation of one crawl: validate every image, hash the valid ones, drop duplicates, write the batch.

Reads ``crawls/<crawl_id>/products.parquet`` and the images it names; writes under
``curation/<batch_id>/``: ``accepted.parquet``, ``rejections.parquet``, ``duplicates.parquet`` and
``summary.json``. Every output is a pure function of the inputs (rows sorted by item_id, no clock in
the summary), so a rerun writes the same bytes to the same keys.

Cross-run deduplication, for the batch kinds listed in ``curation.cross_run_kinds`` (batch ids
``<kind>-<YYYYMMDD>``, see :func:`pipeline.runs.batch_id`; the ingest batches that grow the training
set, not the nightly catalog snapshot, which must stay whole for the repository):
``curation/hash_index/<kind>/<batch_id>.parquet`` holds the items each batch kept
(:data:`HASH_INDEX_SCHEMA`: hashes and mirror-image hashes, size, cluster and the 16x16 colour thumbnail
the near-duplicate confirmation needs). Index files written before the mirror hashes existed lack those
two columns; they are read with nulls there, and their items are still matched against a new batch's
mirrored copies through the new rows' mirror hashes. A batch is deduplicated against itself and against
the index files of every *other* batch of its kind, so tonight's crawl is checked against everything
kept before; an item that duplicates an earlier kept item is recorded in ``duplicates.parquet`` with ``kept_batch_id`` naming that batch,
and the earlier item stays the representative (see :mod:`pipeline.curation.dedup`). The batch then replaces
its own index file, so a rerun never matches against its own previous run. Caveat: rerunning an old
batch after later batches were curated checks it against those later ones too; their kept items
were already checked against the old batch's, so only chains through the old batch's dropped items
can change its outcome.

A bad image only ever costs its own row: it becomes a rejection (data), never an exception.
Errors of the store itself (other than a missing object) do propagate: they are not a verdict on the
image, and a task retry is the right answer to them.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.curation.dedup import MIRROR_COLUMNS, THUMBNAIL_COLUMN, THUMBNAIL_SIDE, colour_thumbnail, deduplicate
from pipeline.curation.validate import MISSING, ImageCheck, validate_with_settings
from pipeline.hashing import content_sha256, image_hashes
from pipeline.settings import CurationSettings, get_settings
from pipeline.storage import ObjectStore
from pipeline.store_layout import (
    crawl_products_key,
    curation_accepted_key,
    curation_duplicates_key,
    curation_rejections_key,
    curation_summary_key,
    hash_index_key,
    hash_index_prefix,
)

log = logging.getLogger(__name__)

PROGRESS_EVERY = 500
DUPLICATE_ITEM = "duplicate_item_id"

REJECTIONS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("image_key", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)
# kind: exact, near or near_mirror (pipeline.curation.dedup). kept_batch_id: the batch that kept kept_item_id
# (this batch, or an earlier one: a cross-run duplicate).
DUPLICATES_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("kept_item_id", pa.string()),
        ("kind", pa.string()),
        ("distance", pa.int64()),
        ("kept_batch_id", pa.string()),
    ]
)
HASH_INDEX_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("content_sha256", pa.string()),
        ("phash", pa.uint64()),
        ("dhash", pa.uint64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("crawled_at", pa.timestamp("us", tz="UTC")),
        ("batch_id", pa.string()),
        ("cluster_id", pa.string()),
        (THUMBNAIL_COLUMN, pa.binary()),
        ("phash_mirror", pa.uint64()),
        ("dhash_mirror", pa.uint64()),
    ]
)
IMAGE_COLUMNS = pa.schema(
    [
        ("phash", pa.uint64()),
        ("dhash", pa.uint64()),
        ("content_sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("cluster_id", pa.string()),
        ("phash_mirror", pa.uint64()),
        ("dhash_mirror", pa.uint64()),
    ]
)


def batch_kind(batch_id: str) -> str | None:
    """``ingest`` for ``ingest-20261128`` and for a retailer's ``ingest-20261128-demo-store``
    (scrapers.retailers.retailer_batch_id); None for an id not of the form ``<kind>-<YYYYMMDD>[-<retailer>]``."""
    found = re.fullmatch(r"(.+?)-\d{8}(?:-[a-z0-9][a-z0-9_-]{0,63})?", batch_id)
    return found.group(1) if found else None


def cross_run_kind(batch_id: str, curation: CurationSettings) -> str | None:
    """The batch's kind when that kind is deduplicated across runs, else None."""
    kind = batch_kind(batch_id)
    return kind if kind is not None and kind in curation.cross_run_kinds else None


def conform_to_index_schema(table: pa.Table) -> pa.Table:
    """An index file's table in :data:`HASH_INDEX_SCHEMA`: columns it lacks (the mirror hashes, in files
    written before they existed) are added as nulls; other columns are cast, and extra ones dropped."""
    columns = [
        table[field.name].cast(field.type) if field.name in table.column_names else pa.nulls(table.num_rows, field.type)
        for field in HASH_INDEX_SCHEMA
    ]
    return pa.Table.from_arrays(columns, schema=HASH_INDEX_SCHEMA)


def read_prior_index(store: ObjectStore, kind: str | None, batch_id: str) -> pd.DataFrame:
    """The items kept by every other batch of ``kind`` (none without a kind), thumbnails as arrays.

    ``phash``/``dhash`` are numpy uint64; the mirror hashes are pandas ``UInt64`` (null for rows from
    index files without them)."""
    own = hash_index_key(kind or "", batch_id)
    keys = store.list(f"{hash_index_prefix(kind)}/") if kind else []
    tables = [store.read_parquet(key) for key in keys if key.endswith(".parquet") and key != own]
    table = (
        pa.concat_tables([conform_to_index_schema(t) for t in tables]) if tables else HASH_INDEX_SCHEMA.empty_table()
    )
    # Nullable uint64 would become float64 in pandas (losing bits): keep it as UInt64.
    frame = table.to_pandas(types_mapper={pa.uint64(): pd.UInt64Dtype()}.get)
    frame["phash"] = frame["phash"].to_numpy(dtype=np.uint64)
    frame["dhash"] = frame["dhash"].to_numpy(dtype=np.uint64)
    shape = (THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3)
    frame[THUMBNAIL_COLUMN] = [np.frombuffer(b, dtype=np.uint8).reshape(shape) for b in frame[THUMBNAIL_COLUMN]]
    return frame


def write_hash_index(
    store: ObjectStore, kind: str, batch_id: str, kept: pd.DataFrame, thumbnails: dict[str, bytes]
) -> None:
    """Replace ``batch_id``'s rows of the persistent hash index with the items it kept."""
    rows = [
        {
            "item_id": r.item_id,
            "content_sha256": r.content_sha256,
            "phash": int(r.phash),
            "dhash": int(r.dhash),
            "width": int(r.width),
            "height": int(r.height),
            "crawled_at": pd.Timestamp(r.crawled_at).to_pydatetime(),
            "batch_id": batch_id,
            "cluster_id": r.cluster_id,
            THUMBNAIL_COLUMN: thumbnails[r.item_id],
            "phash_mirror": int(r.phash_mirror),
            "dhash_mirror": int(r.dhash_mirror),
        }
        for r in kept.itertuples(index=False)
    ]
    store.write_parquet(hash_index_key(kind, batch_id), pa.Table.from_pylist(rows, schema=HASH_INDEX_SCHEMA))


def read_products(store: ObjectStore, crawl_id: str) -> pa.Table:
    """The crawl's products sorted by item_id, one row per item_id (the earliest crawled is kept)."""
    table = store.read_parquet(crawl_products_key(crawl_id))
    order = pc.sort_indices(table, sort_keys=[("item_id", "ascending"), ("crawled_at", "ascending")])
    return table.take(order)


def fetch_image(store: ObjectStore, image_key: str | None) -> bytes | None:
    """The image's bytes, or None when the row names no image or the object is absent."""
    if not image_key:
        return None
    try:
        return store.get_bytes(image_key)
    except FileNotFoundError:
        return None


def inspect_products(
    store: ObjectStore, products: pa.Table, curation: CurationSettings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Validate and hash every product's image: (valid rows with hashes, rejection rows)."""
    valid: list[dict[str, Any]] = []
    rejections: list[dict[str, Any]] = []
    seen: set[str] = set()
    rows = products.select(["item_id", "image_key", "crawled_at"]).to_pylist()
    for position, row in enumerate(rows):
        item_id, image_key = row["item_id"], row["image_key"]
        if item_id in seen:
            rejections.append(
                {
                    "item_id": item_id,
                    "image_key": image_key,
                    "reason": DUPLICATE_ITEM,
                    "detail": "the crawl lists this item_id more than once; the first is kept",
                }
            )
            continue
        seen.add(item_id)
        data = fetch_image(store, image_key)
        check: ImageCheck = validate_with_settings(data, curation)
        if not check.ok:
            detail = check.detail if check.reason != MISSING else f"no object {image_key!r}"
            rejections.append({"item_id": item_id, "image_key": image_key, "reason": check.reason, "detail": detail})
        else:
            assert data is not None and check.image is not None
            hashes = image_hashes(check.image)
            valid.append(
                {
                    "position": position,
                    "item_id": item_id,
                    "crawled_at": row["crawled_at"],
                    "content_sha256": content_sha256(data),
                    **hashes._asdict(),
                    "width": check.width,
                    "height": check.height,
                    "thumbnail": colour_thumbnail(check.image),
                }
            )
        if (position + 1) % PROGRESS_EVERY == 0:
            log.info("curation: %d/%d images inspected, %d valid", position + 1, len(rows), len(valid))
    return valid, rejections


def accepted_table(products: pa.Table, kept: pd.DataFrame) -> pa.Table:
    """Product columns of the kept rows (types as the spider wrote them) plus the image columns."""
    table = products.take(pa.array(kept["position"].to_numpy(), type=pa.int64()))
    for field in IMAGE_COLUMNS:
        values = kept[field.name].tolist()
        table = table.append_column(field, pa.array(values, type=field.type))
    return table


def curate_batch(store: ObjectStore, crawl_id: str, batch_id: str | None = None) -> dict[str, Any]:
    """Curate crawl ``crawl_id`` into batch ``batch_id`` (default: the crawl id); returns the summary."""
    batch_id = batch_id or crawl_id
    curation = get_settings().curation
    products = read_products(store, crawl_id)
    log.info("curation %s: %d products from crawl %s", batch_id, products.num_rows, crawl_id)

    valid, rejections = inspect_products(store, products, curation)
    frame = pd.DataFrame(
        valid,
        columns=[
            "position",
            "item_id",
            "crawled_at",
            "content_sha256",
            "phash",
            "dhash",
            *MIRROR_COLUMNS,
            "width",
            "height",
            "thumbnail",
        ],
    )
    for column in ("phash", "dhash", *MIRROR_COLUMNS):
        frame[column] = frame[column].astype("uint64")
    frame["crawled_at"] = pd.to_datetime(frame["crawled_at"], utc=True)
    thumbnails = {row["item_id"]: row["thumbnail"].tobytes() for row in valid}
    kind = cross_run_kind(batch_id, curation)
    prior = read_prior_index(store, kind, batch_id)
    result = deduplicate(
        frame,
        curation.phash_max_distance,
        curation.dhash_max_distance,
        float(curation.thumbnail_max_mad),
        prior=prior,
    )
    duplicates = result.duplicates.assign(kept_batch_id=result.duplicates["kept_batch_id"].fillna(batch_id))

    accepted = accepted_table(products, result.kept)
    store.write_parquet(curation_accepted_key(batch_id), accepted)
    store.write_parquet(
        curation_rejections_key(batch_id),
        pa.Table.from_pylist(sorted(rejections, key=lambda r: r["item_id"]), schema=REJECTIONS_SCHEMA),
    )
    store.write_parquet(
        curation_duplicates_key(batch_id),
        pa.Table.from_pandas(duplicates, schema=DUPLICATES_SCHEMA, preserve_index=False),
    )
    if kind is not None:
        write_hash_index(store, kind, batch_id, result.kept, thumbnails)

    kinds = Counter(duplicates["kind"])
    earlier = duplicates["kept_batch_id"] != batch_id
    summary = {
        "crawl_id": crawl_id,
        "batch_id": batch_id,
        "products": products.num_rows,
        "valid_images": len(valid),
        "accepted": accepted.num_rows,
        "rejected": len(rejections),
        "rejections_by_reason": dict(sorted(Counter(r["reason"] for r in rejections).items())),
        "duplicates": len(result.duplicates),
        "duplicates_by_kind": dict(sorted(kinds.items())),
        "duplicates_of_earlier_batches": int(earlier.sum()),
        "index_items_before": len(prior),
        "clusters": int(result.kept["cluster_id"].nunique()),
    }
    store.write_json(curation_summary_key(batch_id), summary)
    log.info(
        "curation %s: %d accepted, %d rejected %s, %d duplicates %s",
        batch_id,
        summary["accepted"],
        summary["rejected"],
        summary["rejections_by_reason"],
        summary["duplicates"],
        summary["duplicates_by_kind"],
    )
    return summary
