"""Evaluation artifacts: metrics arithmetic lives in test_train.py; here the pictures and the card."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from models.evaluation import (
    classification_metrics,
    confusion_matrix_png,
    model_card,
    training_curves_png,
    write_evaluation,
)

CLASSES = ("full-sleeve", "half-sleeve", "sleeveless")


def sample_metrics() -> dict:
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 2])
    history = [
        {
            "phase": "frozen",
            "epoch": e,
            "loss": 1.0 / e,
            "accuracy": 0.5 + e / 20,
            "val_loss": 1.1 / e,
            "val_accuracy": 0.4 + e / 20,
        }
        for e in (1, 2, 3)
    ]
    history += [{"phase": "unfrozen", "epoch": 1, "loss": 0.3, "accuracy": 0.7, "val_loss": 0.5, "val_accuracy": 0.5}]
    counts = {
        s: {"images": n, "skipped": 0, "per_class": {c: n // 3 for c in CLASSES}}
        for s, n in (("train", 30), ("validation", 9), ("test", 7))
    }
    return {
        "attribute": "shape",
        "version": "v1",
        "classes": list(CLASSES),
        "image_size": 64,
        "backbone": "vgg16",
        "weights": None,
        "pooling": "avg",
        "counts": counts,
        "class_weight": {c: 1.0 for c in CLASSES},
        "config": {
            "dense_units": 512,
            "frozen_epochs": 3,
            "unfrozen_epochs": 1,
            "head_learning_rate": 1e-3,
            "finetune_learning_rate": 1e-5,
            "patience": 2,
        },
        "history": history,
        "best": {"phase": "frozen", "epoch": 3, "val_accuracy": 0.55},
        "test": classification_metrics(y_true, y_pred, CLASSES),
        "test_split": {"images": 7, "fingerprint": "abc123"},
        "train_seconds": 12.5,
    }


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def test_pictures_are_real_pngs():
    metrics = sample_metrics()
    width, height = png_size(training_curves_png(metrics["history"], metrics["best"], "shape v1"))
    assert width > 400 and height > 200
    assert min(png_size(confusion_matrix_png(metrics["test"]["confusion_matrix"], CLASSES, "test"))) > 150


def test_model_card_states_data_config_and_metrics():
    metrics = sample_metrics()
    card = model_card(metrics)
    assert card.startswith("# shape network, version v1")
    assert "| test | 7 | 2 | 2 | 2 |" in card and "`abc123`" in card
    assert f"Accuracy **{metrics['test']['accuracy']:.4f}**" in card
    assert "| sleeveless | 1.000 | 0.667 | 0.800 | 3 |" in card
    assert "frozen epoch 3" in card and "random init" in card


def test_write_evaluation_puts_three_artifacts_next_to_the_model(file_store):
    keys = write_evaluation(file_store, sample_metrics())
    assert keys == {
        name: f"models/shape/v1/{name}" for name in ("training_curves.png", "confusion_matrix.png", "model_card.md")
    }
    assert all(file_store.exists(k) for k in keys.values())
