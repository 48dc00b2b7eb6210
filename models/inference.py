"""Batch inference: the fashion vector (one predicted class per attribute) of every repository item."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import keras
import numpy as np
import pandas as pd
import pyarrow as pa

from models.data import UndecodableImage, decode_image
from models.network import BACKBONE_LAYER, feature_extractor, head_model
from models.registry import LoadedModel, current, load_model
from pipeline.storage import ObjectStore

REPOSITORY_KEY = "repository/fashion_vectors.parquet"
ITEM_COLUMNS = [
    "item_id", "retailer", "product_url", "title", "price", "currency", "image_key", "phash",
    "content_sha256", "crawled_at",
]


def accepted_key(batch_id: str) -> str:
    return f"curation/{batch_id}/accepted.parquet"


def attribute_columns(attribute: str) -> list[str]:
    return [attribute, f"{attribute}_prob", f"{attribute}_model_version"]


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
            self._bases[key] = SharedBase(feature_extractor(first),
                                          {a: head_model(self.networks[a].model) for a in group})
        return self._bases[key]

    def probabilities(self, decoded: list[dict[int, np.ndarray]]) -> dict[str, np.ndarray]:
        """attribute -> (n, classes) softmax outputs for ``decoded`` images."""
        out: dict[str, np.ndarray] = {}
        for group in self.groups:
            size = self.networks[group[0]].image_size
            batch = np.stack([d[size] for d in decoded]).astype("float32")
            if len(group) == 1:
                out[group[0]] = self.networks[group[0]].model.predict(batch, batch_size=self.batch_size, verbose=0)
                continue
            base = self._shared_base(group)
            features = base.features.predict(batch, batch_size=self.batch_size, verbose=0)
            for attribute in group:
                out[attribute] = base.heads[attribute].predict(features, batch_size=self.batch_size, verbose=0)
        return out

    @classmethod
    def from_registry(cls, store: ObjectStore, attributes: list[str], batch_size: int = 64) -> "FashionVectorizer":
        missing = [a for a in attributes if current(store, a) is None]
        if missing:
            raise LookupError(f"no published model for attribute(s) {missing} in {store.uri}; train and publish them first")
        return cls({a: load_model(store, a) for a in attributes}, batch_size=batch_size)

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
        probabilities = self.probabilities(decoded)
        for attribute, network in self.networks.items():
            probs = probabilities[attribute]
            best = probs.argmax(axis=1)
            for vector, index, row in zip(vectors, best, probs):
                vector[attribute] = network.classes[int(index)]
                vector[f"{attribute}_prob"] = float(row[index])
                vector[f"{attribute}_model_version"] = network.version
        return vectors

    def vectorize(self, images: list[bytes]) -> list[dict[str, Any]]:
        """For each image, per attribute: ``<attr>`` class, ``<attr>_prob``, ``<attr>_model_version``."""
        decoded = []
        for position, data in enumerate(images):
            try:
                decoded.append(self.decode(data))
            except UndecodableImage as exc:
                raise UndecodableImage(f"image {position}: {exc}") from exc
        return self.predict(decoded)

    def build_repository(
        self,
        store: ObjectStore,
        batch_id: str,
        inferred_at: datetime | None = None,
        batch_size: int = 64,
    ) -> dict[str, Any]:
        """Vectorize every accepted item of ``batch_id`` and merge the rows into the repository.

        Rows of items already in the repository are replaced (a rerun of the same batch rewrites the
        same rows); items whose image cannot be read or decoded are skipped and counted.
        """
        inferred_at = inferred_at or datetime.now(timezone.utc)
        if inferred_at.tzinfo is None:
            inferred_at = inferred_at.replace(tzinfo=timezone.utc)
        accepted = store.read_parquet(accepted_key(batch_id)).to_pandas()
        rows: list[dict[str, Any]] = []
        skipped: list[str] = []
        for start in range(0, len(accepted), batch_size):
            chunk = accepted.iloc[start:start + batch_size]
            kept, decoded = [], []
            for item in chunk.itertuples(index=False):
                try:
                    decoded.append(self.decode(store.get_bytes(item.image_key)))
                except (UndecodableImage, FileNotFoundError):
                    skipped.append(item.item_id)
                    continue
                kept.append(item)
            for item, vector in zip(kept, self.predict(decoded)):
                rows.append({**{c: getattr(item, c) for c in ITEM_COLUMNS}, **vector, "inferred_at": inferred_at})
            print(f"[repository {batch_id}] {min(start + batch_size, len(accepted))}/{len(accepted)} items", flush=True)
        new = pd.DataFrame(rows, columns=self._columns())
        merged = merge_vectors(store, new)
        store.write_parquet(REPOSITORY_KEY, merged)
        return {
            "batch_id": batch_id,
            "accepted": len(accepted),
            "vectorized": len(rows),
            "skipped_undecodable": len(skipped),
            "skipped_item_ids": skipped,
            "repository_rows": merged.num_rows,
            "model_versions": {a: n.version for a, n in self.networks.items()},
            "key": REPOSITORY_KEY,
        }

    def _columns(self) -> list[str]:
        return ITEM_COLUMNS + [c for a in self.attributes for c in attribute_columns(a)] + ["inferred_at"]


def merge_vectors(store: ObjectStore, new: pd.DataFrame) -> pa.Table:
    """The repository with ``new``'s rows in place of any old rows of the same item, sorted by item_id.

    Attribute columns that only the old repository has (an attribute not vectorized this time) are
    kept, null for the new rows.
    """
    frames = [new]
    columns = list(new.columns)
    if store.exists(REPOSITORY_KEY):
        old = store.read_parquet(REPOSITORY_KEY).to_pandas()
        old = old[~old["item_id"].isin(set(new["item_id"]))]
        extra = [c for c in old.columns if c not in columns]
        columns = columns[:-1] + extra + columns[-1:]  # inferred_at stays last
        frames.insert(0, old)
    frames = [f for f in frames if len(f)] or [new]
    merged = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    merged = merged.reindex(columns=columns).sort_values("item_id", kind="stable").reset_index(drop=True)
    table = pa.Table.from_pandas(merged, preserve_index=False)
    if "phash" in table.column_names and not pa.types.is_uint64(table.schema.field("phash").type):
        table = table.set_column(table.schema.get_field_index("phash"), "phash", table["phash"].cast(pa.uint64()))
    return table


def build_repository(
    store: ObjectStore,
    batch_id: str,
    inferred_at: datetime | None = None,
    batch_size: int = 64,
    attributes: list[str] | None = None,
) -> dict[str, Any]:
    """Vectorize ``batch_id`` with the published networks of ``attributes`` (default: the taxonomy's)."""
    if attributes is None:
        from pipeline.settings import get_settings

        attributes = get_settings().taxonomy.names
    vectorizer = FashionVectorizer.from_registry(store, attributes, batch_size=batch_size)
    return vectorizer.build_repository(store, batch_id, inferred_at=inferred_at, batch_size=batch_size)
