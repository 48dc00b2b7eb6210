"""Batch inference: the fashion vector of every repository item (per attribute the predicted class,
its probability and the whole softmax vector, the model version; one embedding per image).

The repository itself (layout, schema, plan and commit) is ``pipeline.repository``; this module adds
what needs the networks: :meth:`FashionVectorizer.infer_shard` for one shard of a refresh plan.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import keras
import numpy as np
import pyarrow as pa

from models.data import UndecodableImage, decode_image
from models.network import BACKBONE_LAYER, embedding_layer, feature_extractor, head_model
from models.registry import LoadedModel, current, load_model
from pipeline import repository
from pipeline.storage import ObjectStore, StoreKeyError


def backbone_fingerprint(network: LoadedModel) -> str:
    """What decides the pooled features: input size, preprocessing and pooling layers' configs, and
    the backbone's weights. Networks with equal fingerprints compute identical features."""
    digest = hashlib.sha256(str(network.image_size).encode())
    for name in ("preprocess", BACKBONE_LAYER, "pool"):
        layer = network.model.get_layer(name)
        config = layer.get_config() if name != BACKBONE_LAYER else {}
        digest.update(f"{layer.__class__.__name__}{json.dumps(config, sort_keys=True, default=str)}".encode())
        for weight in layer.get_weights():
            digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


@dataclass
class SharedBase:
    """Attribute networks that share one backbone: it runs once per image, then each head."""

    features: keras.Model
    heads: dict[str, keras.Model]


class FashionVectorizer:
    """The published networks of several attributes, applied together to batches of images.

    Shared-backbone inference: networks whose backbones are identical (trained with the base frozen
    from the same weights, i.e. ``unfrozen_epochs: 0`` or phase 1 kept as best) are grouped, and the
    group's backbone runs once per image instead of once per attribute (``shared=False`` turns this
    off). The heads are the networks' own layers, so the vectors equal the per-network ones.
    """

    def __init__(self, networks: dict[str, LoadedModel], batch_size: int = 64, shared: bool = True) -> None:
        if not networks:
            raise ValueError("a FashionVectorizer needs at least one attribute network")
        self.networks = networks
        self.batch_size = batch_size
        self.groups = self._group(networks) if shared else [[a] for a in networks]
        self._bases: dict[str, SharedBase] = {}
        self._alone: dict[str, keras.Model] = {}

    @staticmethod
    def _group(networks: dict[str, LoadedModel]) -> list[list[str]]:
        groups: dict[str, list[str]] = {}
        for attribute, network in networks.items():
            groups.setdefault(backbone_fingerprint(network), []).append(attribute)
        return list(groups.values())

    def _shared_base(self, group: list[str]) -> SharedBase:
        key = ",".join(group)
        if key not in self._bases:
            first = self.networks[group[0]].model
            self._bases[key] = SharedBase(
                feature_extractor(first), {a: head_model(self.networks[a].model) for a in group}
            )
        return self._bases[key]

    def _network_with_embedding(self, attribute: str) -> keras.Model:
        """A network alone: raw image -> (its Dense-512 ``head_dense`` output, its softmax)."""
        key = f"alone:{attribute}"
        if key not in self._alone:
            model = self.networks[attribute].model
            self._alone[key] = keras.Model(model.input, [model.get_layer(embedding_layer(model)).output, model.output])
        return self._alone[key]

    def outputs(self, decoded: list[dict[int, np.ndarray]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(attribute -> (n, classes) softmax outputs, the (n, d) L2-normalised embeddings).

        The embedding concatenates one part per backbone group (see :attr:`embedding_source`): the
        pooled backbone features of a group of networks that share their backbone, or the ``head_dense``
        output of a network with a backbone of its own. Each part is L2-normalised and the whole divided
        by sqrt(parts), so the cosine of two embeddings is the mean of their parts' cosines.
        """
        out: dict[str, np.ndarray] = {}
        parts: list[np.ndarray] = []
        for group in self.groups:
            size = self.networks[group[0]].image_size
            batch = np.stack([d[size] for d in decoded]).astype("float32")
            if len(group) == 1:
                dense, out[group[0]] = self._network_with_embedding(group[0]).predict(
                    batch, batch_size=self.batch_size, verbose=0
                )
                parts.append(dense)
                continue
            base = self._shared_base(group)
            features = base.features.predict(batch, batch_size=self.batch_size, verbose=0)
            parts.append(features)
            for attribute in group:
                out[attribute] = base.heads[attribute].predict(features, batch_size=self.batch_size, verbose=0)
        normalised = [p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12) for p in parts]
        embedding = np.concatenate(normalised, axis=1) / np.sqrt(len(parts))
        return out, embedding.astype("float32")

    def probabilities(self, decoded: list[dict[int, np.ndarray]]) -> dict[str, np.ndarray]:
        """attribute -> (n, classes) softmax outputs for ``decoded`` images."""
        return self.outputs(decoded)[0]

    @property
    def embedding_source(self) -> str:
        """Which outputs the embedding concatenates, e.g. ``pool(vgg16:pattern,fabric)`` (a shared
        backbone's pooled features) or ``head_dense(pattern)+head_dense(fabric)`` (each network's
        Dense-512 layer)."""
        parts = []
        for group in self.groups:
            if len(group) == 1:
                parts.append(f"head_dense({group[0]})")
            else:
                backbone = getattr(self.networks[group[0]].model.get_layer("preprocess"), "backbone", BACKBONE_LAYER)
                parts.append(f"pool({backbone}:{','.join(group)})")
        return "+".join(parts)

    @property
    def versions(self) -> dict[str, str]:
        return {a: n.version for a, n in self.networks.items()}

    @property
    def models(self) -> dict[str, dict[str, Any]]:
        """attribute -> {"version", "classes"}, as a refresh plan records them."""
        return {a: {"version": n.version, "classes": list(n.classes)} for a, n in self.networks.items()}

    @classmethod
    def from_registry(
        cls, store: ObjectStore, attributes: list[str], batch_size: int = 64, versions: dict[str, str] | None = None
    ) -> FashionVectorizer:
        """The published networks of ``attributes`` (or the given ``versions`` of them)."""
        missing = [a for a in attributes if (versions or {}).get(a) is None and current(store, a) is None]
        if missing:
            raise LookupError(
                f"no published model for attribute(s) {missing} in {store.uri}; train and publish them first"
            )
        return cls({a: load_model(store, a, (versions or {}).get(a)) for a in attributes}, batch_size=batch_size)

    @property
    def attributes(self) -> list[str]:
        return list(self.networks)

    def decode(self, data: bytes) -> dict[int, np.ndarray]:
        """One image at every input size the networks need; raises UndecodableImage."""
        return {size: decode_image(data, size) for size in {n.image_size for n in self.networks.values()}}

    def predict(self, decoded: list[dict[int, np.ndarray]]) -> list[dict[str, Any]]:
        vectors: list[dict[str, Any]] = [{} for _ in decoded]
        if not decoded:
            return vectors
        probabilities, embeddings = self.outputs(decoded)
        source = self.embedding_source
        for attribute, network in self.networks.items():
            probs = probabilities[attribute]
            best = probs.argmax(axis=1)
            for vector, index, row in zip(vectors, best, probs):
                vector[attribute] = network.classes[int(index)]
                vector[f"{attribute}_prob"] = float(row[index])
                vector[f"{attribute}_probs"] = row.astype("float32")
                vector[f"{attribute}_model_version"] = network.version
        for vector, embedding in zip(vectors, embeddings):
            vector["embedding"] = embedding
            vector["embedding_source"] = source
        return vectors

    def vectorize(self, images: list[bytes]) -> list[dict[str, Any]]:
        """For each image, per attribute: ``<attr>`` class, ``<attr>_prob``, ``<attr>_probs`` (float32
        array in the network's class order) and ``<attr>_model_version``; then ``embedding`` (float32
        array, L2-normalised) and ``embedding_source``."""
        decoded = []
        for position, data in enumerate(images):
            try:
                decoded.append(self.decode(data))
            except UndecodableImage as exc:  # the same error (reason, detail), naming the position
                raise exc.for_key(f"#{position}") from exc
        return self.predict(decoded)

    # -- the repository ---------------------------------------------------------------------------
    def vector_table(
        self, item_ids: list[str], probabilities: dict[str, np.ndarray], embeddings: np.ndarray, inferred_at: datetime
    ) -> pa.Table:
        """The repository's vector columns (``pipeline.repository.vector_columns``) for ``item_ids``."""
        n = len(item_ids)
        columns: dict[str, pa.Array] = {"item_id": pa.array(item_ids, pa.string())}
        for attribute, network in self.networks.items():
            probs = probabilities.get(attribute, np.zeros((0, len(network.classes)), "float32")).astype("float32")
            best = probs.argmax(axis=1) if n else np.zeros(0, dtype=int)
            columns[attribute] = pa.array([network.classes[int(i)] for i in best], pa.string())
            columns[f"{attribute}_prob"] = pa.array(probs[np.arange(n), best], pa.float32())
            columns[f"{attribute}_probs"] = _list_array(probs)
            columns[f"{attribute}_model_version"] = pa.array([network.version] * n, pa.string())
        columns["embedding"] = _list_array(embeddings.astype("float32"))
        columns["embedding_source"] = pa.array([self.embedding_source] * n, pa.string())
        columns["inferred_at"] = pa.array([inferred_at] * n, pa.timestamp("us", tz="UTC"))
        return pa.table(columns)

    def infer_items(
        self,
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
        probabilities: dict[str, list[np.ndarray]] = {a: [] for a in self.attributes}
        embeddings: list[np.ndarray] = []
        for start in range(0, len(ids), batch_size):
            decoded = []
            for item_id, key in zip(ids[start : start + batch_size], keys[start : start + batch_size]):
                try:
                    decoded.append(self.decode(store.get_bytes(key)))
                except (UndecodableImage, FileNotFoundError, StoreKeyError):
                    skipped.append(item_id)
                    continue
                kept.append(item_id)
            if decoded:
                probs, embedding = self.outputs(decoded)
                for attribute in self.attributes:
                    probabilities[attribute].append(probs[attribute])
                embeddings.append(embedding)
            print(f"[{label}] {min(start + batch_size, len(ids))}/{len(ids)} items", flush=True)
        if not embeddings:
            return self.vector_table([], {}, np.zeros((0, 0), "float32"), inferred_at), skipped
        stacked = {a: np.concatenate(p) for a, p in probabilities.items()}
        return self.vector_table(kept, stacked, np.concatenate(embeddings), inferred_at), skipped

    def infer_shard(
        self,
        store: ObjectStore,
        commit_id: str,
        shard: int,
        inferred_at: datetime | None = None,
        batch_size: int | None = None,
    ) -> dict[str, Any]:
        """Infer shard ``shard`` of refresh ``commit_id`` (``pipeline.repository.plan_refresh``) and
        stage its vectors; these networks must be the versions the plan names."""
        info, items = repository.shard_items(store, commit_id, shard)
        if self.versions != {a: info["versions"][a] for a in self.attributes} or set(self.attributes) != set(
            info["attributes"]
        ):
            raise ValueError(
                f"refresh {commit_id!r} was planned for {info['versions']}, these networks are {self.versions}"
            )
        batch_size = batch_size or repository.repository_config().inference_batch_size
        vectors, skipped = self.infer_items(
            store, items, inferred_at, batch_size, label=f"repository {commit_id} shard {shard + 1}/{info['shards']}"
        )
        summary = {
            "commit_id": commit_id,
            "shard": shard,
            "items": items.num_rows,
            "vectorized": vectors.num_rows,
            "skipped_undecodable": len(skipped),
            "skipped_item_ids": skipped,
            "versions": info["versions"],
            "embedding_source": self.embedding_source,
        }
        repository.write_shard(store, commit_id, shard, vectors, summary)
        return summary

    def build_repository(
        self,
        store: ObjectStore,
        batch_id: str,
        inferred_at: datetime | None = None,
        batch_size: int = 64,
        crawl_date: date | None = None,
    ) -> dict[str, Any]:
        """One whole refresh in this process: plan ``batch_id`` against the repository, infer every
        shard with these networks, commit. What the refresh DAG does in three tasks.

        New items, items with a new image and items whose stored model versions are not these
        networks' are inferred; rows of items whose image cannot be read or decoded are skipped (new
        ones) or kept as they were. Rerunning the same batch infers and writes nothing.
        """
        plan = repository.plan_refresh(
            store, batch_id, batch_id=batch_id, crawl_date=crawl_date, attributes=self.attributes, models=self.models
        )
        summaries = [
            self.infer_shard(store, batch_id, shard, inferred_at, batch_size) for shard in range(plan["shards"])
        ]
        record = repository.commit_refresh(store, batch_id)
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
            "model_versions": self.versions,
            "embedding_source": self.embedding_source,
            "prefix": repository.PREFIX,
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
    DAG's mapped ``infer_shard`` task)."""
    info, _ = repository.read_plan(store, commit_id)
    vectorizer = FashionVectorizer.from_registry(
        store, info["attributes"], versions=info["versions"], batch_size=batch_size or 64
    )
    return vectorizer.infer_shard(store, commit_id, shard, batch_size=batch_size)


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
    if attributes is None:
        from pipeline.settings import get_settings

        attributes = get_settings().taxonomy.names
    vectorizer = FashionVectorizer.from_registry(store, attributes, batch_size=batch_size)
    return vectorizer.build_repository(
        store, batch_id, inferred_at=inferred_at, batch_size=batch_size, crawl_date=crawl_date
    )
