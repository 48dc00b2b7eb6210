"""Two-phase training: data checks, metrics arithmetic, best-weights bookkeeping, a real tiny run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
from fashion_synthetic import PATTERNS, write_dataset

from models.data import decode_image, load_split
from models.evaluation import classification_metrics
from models.network import BACKBONE_LAYER, build_attribute_network
from models.train import (
    BestWeights,
    PhaseFit,
    balanced_class_weights,
    fine_tune,
    run_config,
    train_attribute,
    train_head_on_features,
)
from pipeline.settings import get_settings

CLASSES = ("checkered", "striped", "floral", "graphic", "solid")  # the taxonomy's pattern classes


def test_classification_metrics_by_hand():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(y_true, y_pred, ("a", "b", "c", "d"))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": round(2 / 3, 4), "f1": 0.8, "support": 3}
    assert m["per_class"]["b"]["precision"] == 0.5 and m["per_class"]["b"]["recall"] == 0.5
    assert m["per_class"]["c"]["precision"] == 0.5 and m["per_class"]["c"]["recall"] == 1.0
    # "d" never occurs, so it is left out of the macro average.
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_balanced_class_weights():
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights[0] == pytest.approx(4 / 6) and weights[1] == pytest.approx(2.0) and weights[2] == 1.0


def test_best_weights_keeps_the_best_epoch_across_phases():
    """Without logged losses (accuracy only) and no margin: the earliest best epoch; phase 2 must beat it."""
    model = build_attribute_network(2, image_size=32, dense_units=4)
    best = BestWeights(model)
    kernel = model.get_layer("predictions").kernel
    history = [("frozen", 0.5), ("frozen", 0.75), ("unfrozen", 0.75), ("unfrozen", 0.6)]
    snapshots = []
    for epoch, (phase, accuracy) in enumerate(history):
        best.phase = phase
        kernel.assign(np.full(kernel.shape, float(epoch), dtype="float32"))
        snapshots.append(float(epoch))
        best.on_epoch_end(epoch, {"val_accuracy": accuracy})
    best.restore()
    assert (best.best_phase, best.best_epoch, best.best_accuracy) == ("frozen", 2, 0.75)
    np.testing.assert_array_equal(kernel.numpy(), np.full(kernel.shape, 1.0))


def test_decode_image_handles_png_transparency_and_rejects_garbage():
    import io

    from PIL import Image

    from models.data import UndecodableImage

    buffer = io.BytesIO()
    Image.new("RGBA", (20, 10), (255, 0, 0, 0)).save(buffer, format="PNG")
    array = decode_image(buffer.getvalue(), 16)
    assert array.shape == (16, 16, 3) and array.dtype == np.uint8
    assert (array == 255).all()  # transparent -> white background
    with pytest.raises(UndecodableImage):
        decode_image(b"not an image", 16)


def test_load_split_only_takes_items_labelled_for_the_attribute(file_store):
    ids = write_dataset(file_store, per_class=5)
    items = file_store.read_parquet("dataset/items.parquet").to_pylist()
    items[0]["pattern"] = None
    file_store.write_parquet("dataset/items.parquet", pa.Table.from_pylist(items))
    train = load_split(file_store, "pattern", "train", CLASSES, 32)
    assert len(train) == 8 and ids[0] not in train.item_ids
    assert train.images.shape == (8, 32, 32, 3) and train.images.dtype == np.uint8
    assert set(train.labels) == {CLASSES.index(p) for p in PATTERNS}
    with pytest.raises(ValueError, match="unknown split"):
        load_split(file_store, "pattern", "holdout", CLASSES, 32)


def test_too_few_labelled_images_is_a_clear_error(file_store, tiny_training):
    write_dataset(file_store, per_class=6, kinds=("striped",))
    with pytest.raises(ValueError, match=r"attribute 'pattern': too few labelled images.*'train': 3"):
        train_attribute(file_store, "pattern", "v1", tiny_training, CLASSES)
    write_dataset(file_store, per_class=3, kinds=("striped", "solid"), fractions=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"'validation': 0"):
        train_attribute(file_store, "pattern", "v1", tiny_training, CLASSES)


def test_labels_outside_the_taxonomy_are_refused(file_store, tiny_training):
    write_dataset(file_store, per_class=4, kinds=("striped", "solid"))
    items = file_store.read_parquet("dataset/items.parquet").to_pylist()
    items[-1]["pattern"] = "polka-dot"
    file_store.write_parquet("dataset/items.parquet", pa.Table.from_pylist(items))
    with pytest.raises(ValueError, match="polka-dot"):
        train_attribute(file_store, "pattern", "v1", tiny_training, CLASSES)


@pytest.mark.slow
def test_phase_one_trains_only_the_head_and_phase_two_the_base(file_store, tiny_training):
    write_dataset(file_store, per_class=4, kinds=("striped", "solid"), fractions=(0.5, 0.5))
    classes = ("striped", "solid")
    train = load_split(file_store, "pattern", "train", classes, 32)
    validation = load_split(file_store, "pattern", "validation", classes, 32)
    config = dataclasses.replace(tiny_training, frozen_epochs=2, unfrozen_epochs=1, finetune_learning_rate=1e-3)
    model = build_attribute_network(2, image_size=32, dense_units=8)
    base = model.get_layer(BACKBONE_LAYER)
    base_before = [w.copy() for w in base.get_weights()]
    head_before = model.get_layer("predictions").get_weights()[0].copy()
    train_head_on_features(model, train, validation, PhaseFit(config, {0: 1.0, 1: 1.0}, []))
    assert not base.trainable_weights
    for before, after in zip(base_before, base.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert not np.array_equal(head_before, model.get_layer("predictions").get_weights()[0])
    fine_tune(model, train, validation, PhaseFit(config, {0: 1.0, 1: 1.0}, []))
    assert len(base.trainable_weights) == len(base.weights)
    changed = [not np.array_equal(b, a) for b, a in zip(base_before, base.get_weights())]
    assert all(changed)  # every backbone weight moved in phase 2, the first conv block included


@pytest.mark.slow
def test_a_tiny_network_learns_patterns_and_keeps_its_best_weights(file_store, tiny_training, capsys, console_logging):
    from models.registry import load_model, publish

    write_dataset(file_store, per_class=50)  # 30 / 10 / 10 images per class
    metrics = train_attribute(file_store, "pattern", "20260101-000000", tiny_training, CLASSES)

    # Progress lines for the Airflow log.
    out = capsys.readouterr().out
    assert "frozen epoch 1/" in out and "unfrozen epoch 1/" in out and "test acc" in out

    # Learns: 3 present classes, chance is 1/3 on the balanced test split (P(>= 17/30 by chance) < 1%).
    assert metrics["test"]["accuracy"] >= 0.55, metrics["test"]
    assert metrics["counts"]["train"]["images"] == 90 and metrics["counts"]["test"]["per_class"]["floral"] == 0
    assert len(metrics["test"]["confusion_matrix"]) == len(CLASSES)
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == metrics["counts"]["test"]["images"] == 30

    # The kept weights follow the selection rule: per phase the epoch of lowest validation loss ...
    history = metrics["history"]
    assert {row["phase"] for row in history} == {"frozen", "unfrozen"}
    best = metrics["best"]
    for phase, candidate in best["candidates"].items():
        rows = [r for r in history if r["phase"] == phase]
        assert candidate["epoch"] == rows[int(np.argmin([r["val_loss"] for r in rows]))]["epoch"]
    kept = best["candidates"][best["phase"]]
    assert (
        kept["val_accuracy"] == pytest.approx(best["val_accuracy"]) == pytest.approx(metrics["network"]["val_accuracy"])
    )
    if best["phase"] == "unfrozen":  # phase 2 only when it beats phase 1 by more than the margin
        assert kept["val_accuracy"] > best["candidates"]["frozen"]["val_accuracy"]
    # ... the published model is the network unless its probe is at least as good on validation ...
    probe = metrics["probe"]
    assert metrics["published"] == (
        "network" if metrics["network"]["val_accuracy"] > probe["val_accuracy"] else "probe"
    )
    assert metrics["val_accuracy"] == (
        metrics["network"]["val_accuracy"] if metrics["published"] == "network" else probe["val_accuracy"]
    )
    assert metrics["test"] == (metrics["network"]["test"] if metrics["published"] == "network" else probe["test"])
    # ... and it is what was saved: the saved model scores that accuracy on validation.
    publish(file_store, "pattern", "20260101-000000")
    loaded = load_model(file_store, "pattern")
    validation = load_split(file_store, "pattern", "validation", CLASSES, 32)
    predicted = loaded.model.predict(validation.images, verbose=0).argmax(axis=1)
    assert float((predicted == validation.labels).mean()) == pytest.approx(metrics["val_accuracy"], abs=1e-4)

    # Evaluation pictures and the model card sit next to the model.
    artifacts = metrics["artifacts"]
    assert set(artifacts) == {"training_curves.png", "confusion_matrix.png", "model_card.md"}
    assert file_store.get_bytes(artifacts["confusion_matrix.png"])[:8] == b"\x89PNG\r\n\x1a\n"
    card = file_store.get_bytes(artifacts["model_card.md"]).decode()
    assert f"Accuracy **{metrics['test']['accuracy']:.4f}**" in card and metrics["test_split"]["fingerprint"] in card
    assert f"| linear probe | {probe['val_accuracy']:.4f} | {probe['test']['accuracy']:.4f}" in card
    assert f"Published as this version's model: **{metrics['published']}**" in card

    # Saved without optimizer state: about the size of the weights alone.
    saved_bytes = len(file_store.get_bytes("models/pattern/20260101-000000/model.keras"))
    assert saved_bytes < 1.2 * 4 * loaded.model.count_params()

    stored = file_store.read_json("models/pattern/20260101-000000/metrics.json")
    assert stored["classes"] == list(CLASSES) and stored["image_size"] == 32 and stored["weights"] is None
    assert stored["backbone"] == "vgg16" and stored["train_seconds"] > 0


def test_a_phase_two_that_only_hurts_falls_back_to_the_phase_one_weights(file_store, tiny_training, monkeypatch):
    """Phase 2 is replaced by one that wrecks the head; the saved model must be phase 1's best."""
    import models.train as train_module
    from models.registry import load_model, publish

    def wrecking_fine_tune(model, train, validation, fit):
        for layer_name in ("head_dense", "predictions"):
            layer = model.get_layer(layer_name)
            layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        for callback in fit.callbacks:
            callback.set_model(model)
            callback.on_epoch_begin(0)
            callback.on_epoch_end(0, {"loss": 9.9, "accuracy": 0.0, "val_loss": 9.9, "val_accuracy": 0.0})

    monkeypatch.setattr(train_module, "fine_tune", wrecking_fine_tune)
    write_dataset(file_store, per_class=10, kinds=("striped", "solid"), fractions=(0.6, 0.2))
    config = dataclasses.replace(tiny_training, frozen_epochs=3, unfrozen_epochs=1, probe=False)
    metrics = train_attribute(file_store, "pattern", "v1", config, CLASSES)
    assert metrics["best"]["phase"] == "frozen" and metrics["published"] == "network"
    assert metrics["history"][-1] == {
        "phase": "unfrozen",
        "epoch": 1,
        "seconds": metrics["history"][-1]["seconds"],
        "loss": 9.9,
        "accuracy": 0.0,
        "val_loss": 9.9,
        "val_accuracy": 0.0,
    }
    publish(file_store, "pattern", "v1")
    model = load_model(file_store, "pattern").model
    assert np.abs(model.get_layer("predictions").get_weights()[0]).sum() > 0  # not the wrecked head
    validation = load_split(file_store, "pattern", "validation", CLASSES, 32)
    predicted = model.predict(validation.images, verbose=0).argmax(axis=1)
    assert float((predicted == validation.labels).mean()) == pytest.approx(metrics["val_accuracy"], abs=1e-4)


def test_augmentation_keeps_shape_and_pixel_range_and_only_flips_when_told():
    from models.train import augmentation

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, 32, 32, 3)).astype("float32")
    training = get_settings().training
    full = augmentation(
        dataclasses.replace(
            training, augment_translation=0.1, augment_zoom=0.2, augment_brightness=0.2, augment_contrast=0.2
        )
    )
    out = np.asarray(full(images, training=True))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
    assert not np.allclose(out, images)
    assert [layer.__class__.__name__ for layer in full.layers] == [
        "RandomFlip",
        "RandomTranslation",
        "RandomZoom",
        "RandomBrightness",
        "RandomContrast",
    ]
    flip_only = augmentation(
        dataclasses.replace(training, augment_translation=0, augment_zoom=0, augment_brightness=0, augment_contrast=0)
    )
    flipped = np.asarray(flip_only(images, training=True))
    for original, augmented in zip(images, flipped):
        assert np.array_equal(augmented, original) or np.array_equal(augmented, original[:, ::-1])
    np.testing.assert_array_equal(np.asarray(full(images, training=False)), images)  # inference: untouched


def test_shared_backbone_mode_never_unfreezes_the_base():
    training = get_settings().training
    config = run_config(dataclasses.replace(training, shared_backbone=True, frozen_epochs=4, unfrozen_epochs=6))
    assert (config.frozen_epochs, config.unfrozen_epochs) == (4, 0)
    assert run_config(dataclasses.replace(training, unfrozen_epochs=6)).unfrozen_epochs == 6
