"""The model registry on a folder store and on S3 (moto): publish, current, load."""

from __future__ import annotations

import numpy as np
import pytest
from fashion_synthetic import SHAPES as CLASSES
from fashion_synthetic import write_version

from models.registry import current, load_model, publish


def test_publish_and_load_round_trip(any_store):
    images = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3)).astype("uint8")
    assert current(any_store, "shape") is None
    first = write_version(any_store, "shape", "v1", seed=1)
    second = write_version(any_store, "shape", "v2", seed=2)

    record = publish(any_store, "shape", "v1")
    assert record["version"] == "v1" and record["key"] == "models/shape/v1/model.keras"
    assert record["classes"] == list(CLASSES) and record["image_size"] == 32
    assert record["val_accuracy"] == 0.5 and record["test_accuracy"] == 0.25 and record["published_at"]
    assert current(any_store, "shape") == record

    loaded = load_model(any_store, "shape")
    assert (loaded.version, loaded.classes, loaded.image_size) == ("v1", CLASSES, 32)
    np.testing.assert_allclose(loaded.model.predict(images, verbose=0), first.predict(images, verbose=0), rtol=1e-5)

    publish(any_store, "shape", "v2")
    assert load_model(any_store, "shape").version == "v2"
    pinned = load_model(any_store, "shape", version="v1")
    assert pinned.version == "v1"
    np.testing.assert_allclose(
        load_model(any_store, "shape").model.predict(images, verbose=0), second.predict(images, verbose=0), rtol=1e-5
    )


def test_publishing_a_missing_version_fails_and_changes_nothing(file_store):
    write_version(file_store, "shape", "v1")
    publish(file_store, "shape", "v1")
    with pytest.raises(FileNotFoundError, match="models/shape/v9/model.keras"):
        publish(file_store, "shape", "v9")
    assert current(file_store, "shape")["version"] == "v1"
    with pytest.raises(LookupError, match="'pattern'"):
        load_model(file_store, "pattern")


# -- promotion ------------------------------------------------------------------------------------------
def write_scored(store, version: str, accuracy: float, fingerprint: str = "split-a", classes=CLASSES) -> None:
    """A saved version whose metrics say it scored ``accuracy`` on the test split ``fingerprint``."""
    from pipeline.store_layout import model_metrics_key

    write_version(store, "shape", version)
    store.write_json(
        model_metrics_key("shape", version),
        {
            "classes": list(classes),
            "image_size": 32,
            "val_accuracy": accuracy,
            "test": {"accuracy": accuracy},
            "test_split": {"images": 30, "fingerprint": fingerprint},
        },
    )


def promotion_log(store) -> list[dict]:
    return [store.read_json(k) for k in store.list("models/shape/promotions")]


def test_a_worse_version_never_replaces_the_current_one(file_store):
    from models.registry import promote

    write_scored(file_store, "v1", 0.80)
    assert promote(file_store, "shape", "v1")["reason"] == "first version"
    write_scored(file_store, "v2", 0.70)
    decision = promote(file_store, "shape", "v2")
    assert decision["promoted"] is False and "worse" in decision["reason"]
    assert decision["comparison"] == {"candidate": 0.70, "current": 0.80, "split": "split-a", "evaluated_now": False}
    assert current(file_store, "shape")["version"] == "v1"
    write_scored(file_store, "v3", 0.80)  # equal is not worse
    assert promote(file_store, "shape", "v3")["promoted"] is True
    assert current(file_store, "shape")["version"] == "v3"
    assert [(d["candidate"], d["promoted"]) for d in promotion_log(file_store)] == [
        ("v1", True),
        ("v2", False),
        ("v3", True),
    ]


def test_force_tolerance_and_changed_classes(file_store):
    from models.registry import promote

    write_scored(file_store, "v1", 0.80)
    promote(file_store, "shape", "v1")
    write_scored(file_store, "v2", 0.78)
    assert promote(file_store, "shape", "v2", tolerance=0.05)["promoted"] is True
    write_scored(file_store, "v3", 0.10)
    assert promote(file_store, "shape", "v3", force=True)["reason"] == "forced"
    assert current(file_store, "shape")["version"] == "v3"
    write_scored(file_store, "v4", 0.05, classes=("a", "b"))
    assert promote(file_store, "shape", "v4")["reason"].startswith("classes changed")
    with pytest.raises(FileNotFoundError, match="v9"):
        promote(file_store, "shape", "v9")


def test_versions_evaluated_on_different_splits_are_compared_on_todays_split(file_store):
    from fashion_synthetic import PATTERNS, write_dataset

    from models.registry import accuracy_on_test_split, promote

    write_dataset(file_store, per_class=10, attribute="shape", kinds=PATTERNS)  # any 3 classes will do
    write_scored(file_store, "v1", 0.99, fingerprint="an-older-split", classes=PATTERNS)
    promote(file_store, "shape", "v1")
    write_scored(file_store, "v2", 0.01, fingerprint="another-split", classes=PATTERNS)
    expected = {v: accuracy_on_test_split(file_store, "shape", v) for v in ("v1", "v2")}
    decision = promote(file_store, "shape", "v2")
    comparison = decision["comparison"]
    assert comparison["evaluated_now"] is True and comparison["split"] == expected["v1"][1]
    assert (comparison["candidate"], comparison["current"]) == (expected["v2"][0], expected["v1"][0])
    assert decision["promoted"] == (expected["v2"][0] >= expected["v1"][0])


def test_a_network_that_does_not_beat_its_own_probe_is_not_promoted(file_store):
    """Issue 13: promotion refuses a network whose validation accuracy is not above its linear probe's by
    more than the selection margin; a version that publishes its probe, or a forced one, passes."""
    from models.registry import promote

    def with_probe(version: str, network: float, probe: float, published: str = "network") -> None:
        write_scored(file_store, version, 0.80)
        metrics = file_store.read_json(f"models/shape/{version}/metrics.json")
        metrics.update(
            {
                "published": published,
                "network": {"val_accuracy": network},
                "probe": {"val_accuracy": probe},
                "counts": {"validation": {"images": 100}},
                "config": {"selection_margin": 1},
            }
        )
        file_store.write_json(f"models/shape/{version}/metrics.json", metrics)

    with_probe("v1", network=0.91, probe=0.90)  # one image better: not enough, even as the first version
    decision = promote(file_store, "shape", "v1")
    assert decision["promoted"] is False and "does not beat its own linear probe" in decision["reason"]
    assert current(file_store, "shape") is None
    with_probe("v2", network=0.90, probe=0.90, published="probe")  # the probe is the published model
    assert promote(file_store, "shape", "v2")["promoted"] is True
    with_probe("v3", network=0.93, probe=0.90)  # three images better
    assert promote(file_store, "shape", "v3")["promoted"] is True
    with_probe("v4", network=0.80, probe=0.90)
    assert promote(file_store, "shape", "v4", force=True)["reason"] == "forced"


def test_importing_the_registry_imports_neither_keras_nor_the_trainer():
    """Issue 14: reading which version is current needs no Keras; the registry imports Keras only inside
    the functions that load a network, and nothing of the trainer."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, models.registry\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'models.train', 'models.network') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"importing models.registry imported {done.stdout.strip()}"
