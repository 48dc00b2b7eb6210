"""Batch inference: the fashion vector of images (per attribute the predicted class, its probability
and the whole softmax vector, the model version; one embedding per image).

:class:`FashionVectorizer` loads the published networks and predicts batches of images; its callers
(the repository refresh's infer step, ``pipeline.repository.infer``; recommendations' user photos;
the review queue's predictions) turn the vectors into their own tables.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from models.data import UndecodableImage, decode_image
from models.network import BACKBONE_LAYER, embedding_layer, feature_extractor, head_model
from models.registry import LoadedModel, current, load_model
from pipeline.storage import ObjectStore


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
