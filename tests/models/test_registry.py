"""The model registry on a folder store and on S3 (moto): publish, current, load."""
from __future__ import annotations

import numpy as np
import pytest

from fashion_synthetic import SHAPES as CLASSES, write_version
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
