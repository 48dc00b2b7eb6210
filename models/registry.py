"""The model registry: which trained version of each attribute network is current.

``models/<attribute>/<version>/model.keras`` and ``metrics.json`` are written by training;
``models/<attribute>/current.json`` names the promoted version and is the one key readers look at.

:func:`promote` guards ``current.json``: a new version replaces the current one only when it is not
worse on the same test split (or when forced), so a bad nightly model never replaces a good one.
Every promotion decision, taken or refused, is appended to ``models/<attribute>/promotions/``.

Importing this module imports no Keras and nothing of the trainer: Keras comes in only inside the
functions that load a network, so a reader of ``current.json`` (:func:`current`) stays light.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from models.data import load_split, split_fingerprint
from models.evaluation import beats
from pipeline.storage import ObjectStore
from pipeline.store_layout import model_file_key, model_metrics_key, model_pointer_key, model_promotion_key

if TYPE_CHECKING:
    import keras


@dataclass
class LoadedModel:
    model: keras.Model
    classes: tuple[str, ...]
    image_size: int
    version: str


def publish(store: ObjectStore, attribute: str, version: str) -> dict[str, Any]:
    """Promote ``version`` of ``attribute``: write ``current.json`` after checking the model exists."""
    key = model_file_key(attribute, version)
    if not store.exists(key) or not store.exists(model_metrics_key(attribute, version)):
        raise FileNotFoundError(
            f"cannot publish {attribute!r} {version!r}: no {key} and its metrics.json in {store.uri}"
        )
    metrics = store.read_json(model_metrics_key(attribute, version))
    record = {
        "attribute": attribute,
        "version": version,
        "key": key,
        "classes": list(metrics["classes"]),
        "image_size": int(metrics["image_size"]),
        "val_accuracy": metrics.get("val_accuracy"),
        "test_accuracy": metrics.get("test", {}).get("accuracy"),
        "published_at": datetime.now(UTC).isoformat(),
    }
    store.write_json(model_pointer_key(attribute), record)
    return record


def current(store: ObjectStore, attribute: str) -> dict[str, Any] | None:
    """The published record of ``attribute``, or None when nothing is published."""
    key = model_pointer_key(attribute)
    return store.read_json(key) if store.exists(key) else None


def load_model(store: ObjectStore, attribute: str, version: str | None = None) -> LoadedModel:
    """The published (or the given) version of ``attribute``'s network, ready for inference."""
    if version is None:
        record = current(store, attribute)
        if record is None:
            raise LookupError(
                f"no published model for attribute {attribute!r} in {store.uri} (no {model_pointer_key(attribute)})"
            )
        version = record["version"]
    key = model_file_key(attribute, version)
    if not store.exists(key):
        raise FileNotFoundError(f"no model {key} in {store.uri}")
    metrics = store.read_json(model_metrics_key(attribute, version))
    import keras

    import models.network  # noqa: F401  (registers the custom layers that saved models refer to)

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


# -- promotion ------------------------------------------------------------------------------------------
def accuracy_on_test_split(store: ObjectStore, attribute: str, version: str) -> tuple[float, str]:
    """(accuracy, split fingerprint) of ``version`` on the dataset's test split as it is now."""
    loaded = load_model(store, attribute, version)
    test = load_split(store, attribute, "test", loaded.classes, loaded.image_size)
    if not len(test):
        raise ValueError(f"attribute {attribute!r}: the test split has no labelled images to compare on")
    from models.network import predict_classes

    predicted = predict_classes(loaded.model, test.images, batch_size=64)
    return float((predicted == test.labels).mean()), split_fingerprint(test)


def compare_on_test_split(
    store: ObjectStore, attribute: str, candidate: dict[str, Any], incumbent: dict[str, Any]
) -> dict[str, Any]:
    """Both versions' test accuracy on one and the same test split.

    When both were evaluated on the same split at training time (same fingerprint), their recorded
    accuracies are compared; otherwise both are evaluated on the current test split.
    """
    same = candidate.get("test_split", {}).get("fingerprint") is not None and candidate.get("test_split", {}).get(
        "fingerprint"
    ) == incumbent.get("test_split", {}).get("fingerprint")
    if same:
        return {
            "candidate": float(candidate["test"]["accuracy"]),
            "current": float(incumbent["test"]["accuracy"]),
            "split": candidate["test_split"]["fingerprint"],
            "evaluated_now": False,
        }
    cand_acc, split = accuracy_on_test_split(store, attribute, candidate["version"])
    cur_acc, _ = accuracy_on_test_split(store, attribute, incumbent["version"])
    return {"candidate": cand_acc, "current": cur_acc, "split": split, "evaluated_now": True}


def network_beats_probe(metrics: dict[str, Any]) -> bool:
    """False for a version that publishes its network although the network does not beat its own linear
    probe on validation (by the version's selection margin, models.evaluation.beats). A version that
    publishes its probe, or has no probe record (trained before issue 13), passes."""
    probe = metrics.get("probe")
    if not probe or metrics.get("published", "network") != "network":
        return True
    images = int(metrics.get("counts", {}).get("validation", {}).get("images", 0))
    margin = float(metrics.get("config", {}).get("selection_margin", 0.0))
    return beats(float(metrics["network"]["val_accuracy"]), float(probe["val_accuracy"]), images, margin)


def network_probe_reason(metrics: dict[str, Any]) -> str:
    return (
        f"the network does not beat its own linear probe on validation "
        f"({metrics['network']['val_accuracy']:.4f} vs probe {metrics['probe']['val_accuracy']:.4f})"
    )


def promote(
    store: ObjectStore, attribute: str, version: str, force: bool = False, tolerance: float = 0.0
) -> dict[str, Any]:
    """Make ``version`` current unless it is worse than the current version, or it publishes a network
    that does not beat its own linear probe on validation; returns the decision.

    "Worse" means a lower test accuracy than the current version's by more than ``tolerance`` on
    the same test split. Promoted without comparison: the first version, ``force``, or a version
    whose classes differ from the current one's (the taxonomy changed; the old model cannot answer).
    """
    candidate = (
        store.read_json(model_metrics_key(attribute, version))
        if store.exists(model_metrics_key(attribute, version))
        else None
    )
    if candidate is None:
        raise FileNotFoundError(
            f"cannot promote {attribute!r} {version!r}: no {model_metrics_key(attribute, version)} in {store.uri}"
        )
    candidate = {**candidate, "version": version}
    record = current(store, attribute)
    comparison: dict[str, Any] | None = None
    if not force and not network_beats_probe(candidate):
        promoted, reason = False, network_probe_reason(candidate)
    elif record is None:
        promoted, reason = True, "first version"
    elif record["version"] == version:
        promoted, reason = True, "already current"
    elif force:
        promoted, reason = True, "forced"
    elif list(record["classes"]) != list(candidate["classes"]):
        promoted, reason = True, f"classes changed from {record['classes']}"
    else:
        incumbent = {**store.read_json(model_metrics_key(attribute, record["version"])), "version": record["version"]}
        comparison = compare_on_test_split(store, attribute, candidate, incumbent)
        promoted = comparison["candidate"] >= comparison["current"] - tolerance
        reason = (
            f"test accuracy {comparison['candidate']:.4f} vs current {comparison['current']:.4f}"
            f" ({'not worse' if promoted else 'worse'}, tolerance {tolerance})"
        )
    decided_at = datetime.now(UTC).isoformat()
    decision = {
        "attribute": attribute,
        "candidate": version,
        "current": record["version"] if record else None,
        "promoted": promoted,
        "reason": reason,
        "comparison": comparison,
        "forced": force,
        "decided_at": decided_at,
    }
    stamp = decided_at.replace(":", "").replace("-", "").replace("+0000", "Z")
    store.write_json(model_promotion_key(attribute, stamp, version), decision)
    if promoted and (record is None or record["version"] != version):
        decision["published"] = publish(store, attribute, version)
    return decision
