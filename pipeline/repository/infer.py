"""Step 2 of a repository refresh: the fashion vectors of one shard of a plan, staged for the commit.

The networks themselves (images in, class probabilities and embeddings out) are
``models.inference.FashionVectorizer``; this module reads a shard of the plan
(:func:`pipeline.repository.plan.shard_items`), turns the outputs into the repository's vector columns
and stages them (:func:`write_shard`). :func:`build_repository` runs a whole refresh (plan, every shard,
commit) in one process. TensorFlow and Keras load only when networks are (:func:`infer_shard`,
:func:`build_repository`): staging a shard's vectors needs neither.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipeline import store_layout
from pipeline.images import UndecodableImage
from pipeline.repository.commit import commit_refresh
from pipeline.repository.dataset import conform, file_schema, vector_columns
from pipeline.repository.plan import RefreshPlanRequest, plan_refresh, read_plan, shard_items
from pipeline.settings import get_settings
from pipeline.storage import ObjectStore, StoreKeyError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # the networks (TensorFlow) load only where a vectorizer is built
    from models.inference import FashionVectorizer


def write_shard(store: ObjectStore, commit_id: str, shard: int, vectors: pa.Table, summary: dict[str, Any]) -> None:
    """Stage one shard's vectors (and its summary, written last: its presence marks the shard done)."""
    info, _ = read_plan(store, commit_id)
    schema = file_schema(info["attributes"])
    summary_key = store_layout.repository_shard_summary_key(commit_id, shard)
    table_key = store_layout.repository_shard_vectors_key(commit_id, shard)
    store.write_parquet(
        table_key,
        conform(vectors, pa.schema([f for f in schema if f.name in ["item_id", *vector_columns(info["attributes"])]])),
    )
    store.write_json(summary_key, summary)


def vector_table(
    vectorizer: FashionVectorizer,
    item_ids: list[str],
    probabilities: dict[str, np.ndarray],
    embeddings: np.ndarray,
    inferred_at: datetime,
) -> pa.Table:
    """The repository's vector columns (:func:`pipeline.repository.dataset.vector_columns`) for ``item_ids``."""
    n = len(item_ids)
    columns: dict[str, pa.Array] = {"item_id": pa.array(item_ids, pa.string())}
    for attribute, network in vectorizer.networks.items():
        probs = probabilities.get(attribute, np.zeros((0, len(network.classes)), "float32")).astype("float32")
        best = probs.argmax(axis=1) if n else np.zeros(0, dtype=int)
        columns[attribute] = pa.array([network.classes[int(i)] for i in best], pa.string())
        columns[f"{attribute}_prob"] = pa.array(probs[np.arange(n), best], pa.float32())
        columns[f"{attribute}_probs"] = _list_array(probs)
        columns[f"{attribute}_model_version"] = pa.array([network.version] * n, pa.string())
    columns["embedding"] = _list_array(embeddings.astype("float32"))
    columns["embedding_source"] = pa.array([vectorizer.embedding_source] * n, pa.string())
    columns["inferred_at"] = pa.array([inferred_at] * n, pa.timestamp("us", tz="UTC"))
    return pa.table(columns)


def infer_items(
    vectorizer: FashionVectorizer,
    store: ObjectStore,
    items: pa.Table,
    inferred_at: datetime | None = None,
    batch_size: int = 64,
    label: str = "repository",
) -> tuple[pa.Table, list[str]]:
    """(vector table, item ids skipped) for ``items`` (``item_id``, ``image_key``): images that are
    missing or cannot be decoded are skipped."""
    inferred_at = _utc(inferred_at)
    ids, keys = items["item_id"].to_pylist(), items["image_key"].to_pylist()
    kept: list[str] = []
    skipped: list[str] = []
    probabilities: dict[str, list[np.ndarray]] = {a: [] for a in vectorizer.attributes}
    embeddings: list[np.ndarray] = []
    for start in range(0, len(ids), batch_size):
        decoded = []
        for item_id, key in zip(ids[start : start + batch_size], keys[start : start + batch_size]):
            try:
                decoded.append(vectorizer.decode(store.get_bytes(key)))
            except (UndecodableImage, FileNotFoundError, StoreKeyError):
                skipped.append(item_id)
                continue
            kept.append(item_id)
        if decoded:
            probs, embedding = vectorizer.outputs(decoded)
            for attribute in vectorizer.attributes:
                probabilities[attribute].append(probs[attribute])
            embeddings.append(embedding)
        logger.info("[%s] %d/%d items", label, min(start + batch_size, len(ids)), len(ids))
    if not embeddings:
        return vector_table(vectorizer, [], {}, np.zeros((0, 0), "float32"), inferred_at), skipped
    stacked = {a: np.concatenate(p) for a, p in probabilities.items()}
    return vector_table(vectorizer, kept, stacked, np.concatenate(embeddings), inferred_at), skipped


def infer_shard_with(
    vectorizer: FashionVectorizer,
    store: ObjectStore,
    commit_id: str,
    shard: int,
    batch_size: int,
    inferred_at: datetime | None = None,
) -> dict[str, Any]:
    """Infer shard ``shard`` of refresh ``commit_id`` (:func:`pipeline.repository.plan.plan_refresh`)
    with ``vectorizer``, ``batch_size`` images at a time, and stage its vectors; its networks must be
    the versions the plan names."""
    info, items = shard_items(store, commit_id, shard)
    if vectorizer.versions != {a: info["versions"][a] for a in vectorizer.attributes} or set(
        vectorizer.attributes
    ) != set(info["attributes"]):
        raise ValueError(
            f"refresh {commit_id!r} was planned for {info['versions']}, these networks are {vectorizer.versions}"
        )
    vectors, skipped = infer_items(
        vectorizer,
        store,
        items,
        inferred_at,
        batch_size,
        label=f"repository {commit_id} shard {shard + 1}/{info['shards']}",
    )
    summary = {
        "commit_id": commit_id,
        "shard": shard,
        "items": items.num_rows,
        "vectorized": vectors.num_rows,
        "skipped_undecodable": len(skipped),
        "skipped_item_ids": skipped,
        "versions": info["versions"],
        "embedding_source": vectorizer.embedding_source,
    }
    write_shard(store, commit_id, shard, vectors, summary)
    return summary


def build_repository_with(
    vectorizer: FashionVectorizer,
    store: ObjectStore,
    batch_id: str,
    inferred_at: datetime | None = None,
    batch_size: int = 64,
    crawl_date: date | None = None,
) -> dict[str, Any]:
    """One whole refresh in this process: plan ``batch_id`` against the repository, infer every
    shard with ``vectorizer``'s networks, commit. What the refresh DAG does in three tasks.

    New items, items with a new image and items whose stored model versions are not these
    networks' are inferred; rows of items whose image cannot be read or decoded are skipped (new
    ones) or kept as they were. Rerunning the same batch infers and writes nothing.
    """
    request = RefreshPlanRequest(
        batch_id, vectorizer.attributes, batch_id=batch_id, crawl_date=crawl_date, models=vectorizer.models
    )
    plan = plan_refresh(store, request)
    summaries = [
        infer_shard_with(vectorizer, store, batch_id, shard, batch_size, inferred_at) for shard in range(plan["shards"])
    ]
    record = commit_refresh(store, batch_id)
    skipped = [i for s in summaries for i in s["skipped_item_ids"]]
    return {
        "batch_id": batch_id,
        "accepted": plan["batch_items"],
        "actions": plan["actions"],
        "shards": plan["shards"],
        "vectorized": sum(s["vectorized"] for s in summaries),
        "skipped_undecodable": len(skipped),
        "skipped_item_ids": skipped,
        "files_written": len(record["files_written"]),
        "repository_rows": record["repository_rows"],
        "model_versions": vectorizer.versions,
        "embedding_source": vectorizer.embedding_source,
        "prefix": store_layout.FASHION_VECTORS_PREFIX,
    }


def _utc(moment: datetime | None) -> datetime:
    moment = moment or datetime.now(UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _list_array(matrix: np.ndarray) -> pa.Array:
    """An (n, d) matrix as a list<float32> array of n lists."""
    n = matrix.shape[0]
    width = matrix.shape[1] if matrix.ndim == 2 else 0
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(
        offsets, pa.array(np.ascontiguousarray(matrix, dtype="float32").ravel(), pa.float32())
    )


def infer_shard(store: ObjectStore, commit_id: str, shard: int, batch_size: int | None = None) -> dict[str, Any]:
    """Shard ``shard`` of refresh ``commit_id`` with the model versions its plan names (the refresh
    DAG's mapped ``infer_shard`` task), ``batch_size`` images at a time (default: settings
    ``repository.inference_batch_size``)."""
    from models.inference import FashionVectorizer

    batch_size = batch_size or get_settings().repository.inference_batch_size
    info, _ = read_plan(store, commit_id)
    vectorizer = FashionVectorizer.from_registry(
        store, info["attributes"], versions=info["versions"], batch_size=batch_size
    )
    return infer_shard_with(vectorizer, store, commit_id, shard, batch_size)


def build_repository(
    store: ObjectStore,
    batch_id: str,
    inferred_at: datetime | None = None,
    batch_size: int = 64,
    attributes: list[str] | None = None,
    crawl_date: date | None = None,
) -> dict[str, Any]:
    """Refresh the repository from ``batch_id`` in one process with the published networks of
    ``attributes`` (default: the taxonomy's)."""
    from models.inference import FashionVectorizer

    attributes = attributes if attributes is not None else get_settings().taxonomy.names
    vectorizer = FashionVectorizer.from_registry(store, attributes, batch_size=batch_size)
    return build_repository_with(
        vectorizer, store, batch_id, inferred_at=inferred_at, batch_size=batch_size, crawl_date=crawl_date
    )
