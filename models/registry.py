"""The model registry: which trained version of each attribute network is current.

``models/<attribute>/<version>/model.keras`` and ``metrics.json`` are written by training;
``models/<attribute>/current.json`` names the promoted version and is the one key readers look at.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import keras

import models.network  # noqa: F401  (registers the custom layers that saved models refer to)
from models.train import metrics_key, model_key
from pipeline.storage import ObjectStore


def current_key(attribute: str) -> str:
    return f"models/{attribute}/current.json"


@dataclass
class LoadedModel:
    model: keras.Model
    classes: tuple[str, ...]
    image_size: int
    version: str


def publish(store: ObjectStore, attribute: str, version: str) -> dict[str, Any]:
    """Promote ``version`` of ``attribute``: write ``current.json`` after checking the model exists."""
    key = model_key(attribute, version)
    if not store.exists(key) or not store.exists(metrics_key(attribute, version)):
        raise FileNotFoundError(f"cannot publish {attribute!r} {version!r}: no {key} and its metrics.json in {store.uri}")
    metrics = store.read_json(metrics_key(attribute, version))
    record = {
        "attribute": attribute,
        "version": version,
        "key": key,
        "classes": list(metrics["classes"]),
        "image_size": int(metrics["image_size"]),
        "val_accuracy": metrics.get("val_accuracy"),
        "test_accuracy": metrics.get("test", {}).get("accuracy"),
        "published_at": datetime.now(timezone.utc).isoformat(),
    }
    store.write_json(current_key(attribute), record)
    return record


def current(store: ObjectStore, attribute: str) -> dict[str, Any] | None:
    """The published record of ``attribute``, or None when nothing is published."""
    key = current_key(attribute)
    return store.read_json(key) if store.exists(key) else None


def load_model(store: ObjectStore, attribute: str, version: str | None = None) -> LoadedModel:
    """The published (or the given) version of ``attribute``'s network, ready for inference."""
    if version is None:
        record = current(store, attribute)
        if record is None:
            raise LookupError(f"no published model for attribute {attribute!r} in {store.uri} (no {current_key(attribute)})")
        version = record["version"]
    key = model_key(attribute, version)
    if not store.exists(key):
        raise FileNotFoundError(f"no model {key} in {store.uri}")
    metrics = store.read_json(metrics_key(attribute, version))
    local = store.local_path(key)
    if local is not None:
        model = keras.saving.load_model(local, compile=False)
    else:  # keras reads a file path, so an S3 object goes through a temporary file
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.keras")
            with open(path, "wb") as handle:
                handle.write(store.get_bytes(key))
            model = keras.saving.load_model(path, compile=False)
    return LoadedModel(model, tuple(metrics["classes"]), int(metrics["image_size"]), version)
