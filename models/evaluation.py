"""Evaluation of a trained attribute network: metrics, pictures and a model card.

Per model version, next to ``model.keras`` and ``metrics.json``:

* ``training_curves.png``: loss and accuracy per epoch, train and validation, both phases, with the
  epoch whose weights were kept marked;
* ``confusion_matrix.png``: the test split's confusion matrix (counts, rows = true class);
* ``model_card.md``: what the model is, the data it saw (split counts, the test split's fingerprint),
  its configuration and its test metrics, per class included.

Nothing here needs TensorFlow: the metrics are numpy arithmetic on class indices, and the pictures
are drawn with matplotlib's non-interactive Agg backend.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np

from pipeline.storage import ObjectStore


def artifact_key(attribute: str, version: str, name: str) -> str:
    return f"models/{attribute}/{version}/{name}"


# -- metrics --------------------------------------------------------------------------------------------
def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, macro-F1 (over the classes that occur in truth or prediction), per-class P/R/F1."""
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    true_positive = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    actual = matrix.sum(axis=1).astype(float)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    occurring = (predicted + actual) > 0
    return {
        "accuracy": float(true_positive.sum() / max(len(y_true), 1)),
        "macro_f1": float(f1[occurring].mean()) if occurring.any() else 0.0,
        "per_class": {
            name: {
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(actual[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": matrix.tolist(),
    }


# -- pictures -------------------------------------------------------------------------------------------
def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def training_curves_png(history: list[dict[str, Any]], best: dict[str, Any], title: str) -> bytes:
    """Loss and accuracy per epoch over both phases (x: epochs in training order)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(9, 3.6))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    steps = np.arange(1, len(history) + 1)
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [row.get(prefix + metric, np.nan) for row in history]
            axes.plot(steps, values, style, marker="o", markersize=3, label=(prefix or "train_") + metric)
        axes.set_xlabel("epoch (both phases)")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(metric)
        axes.grid(alpha=0.3)
    frozen = sum(1 for row in history if row.get("phase") == "frozen")
    kept = _kept_step(history, best)
    for axes in (loss_axes, accuracy_axes):
        if 0 < frozen < len(history):
            axes.axvline(frozen + 0.5, color="grey", linewidth=1)
            axes.text(frozen + 0.6, axes.get_ylim()[1], "unfrozen", va="top", fontsize=8, color="grey")
        if kept is not None:
            axes.axvline(kept, color="green", linestyle=":", linewidth=1.5, label="kept weights")
    accuracy_axes.legend(fontsize=8, loc="lower right")
    loss_axes.legend(fontsize=8, loc="upper right")
    figure.suptitle(title)
    return _figure_png(figure)


def _kept_step(history: list[dict[str, Any]], best: dict[str, Any]) -> int | None:
    for step, row in enumerate(history, start=1):
        if row.get("phase") == best.get("phase") and row.get("epoch") == best.get("epoch"):
            return step
    return None


def confusion_matrix_png(matrix: list[list[int]], classes: tuple[str, ...], title: str) -> bytes:
    from matplotlib.figure import Figure

    counts = np.asarray(matrix)
    size = 1.2 + 0.75 * len(classes)
    figure = Figure(figsize=(size + 1.5, size))
    axes = figure.subplots()
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    threshold = counts.max() / 2 if counts.size and counts.max() else 0
    for (row, column), value in np.ndenumerate(counts):
        axes.text(column, row, str(value), ha="center", va="center",
                  color="white" if value > threshold else "black", fontsize=9)
    axes.set_title(title)
    return _figure_png(figure)


# -- the model card -------------------------------------------------------------------------------------
def model_card(metrics: dict[str, Any]) -> str:
    """A short Markdown card: what, on which data, how trained, how good (test split)."""
    test = metrics["test"]
    classes = metrics["classes"]
    lines = [
        f"# {metrics['attribute']} network, version {metrics['version']}",
        "",
        f"Classifies a product image into one of {len(classes)} {metrics['attribute']} classes: "
        f"{', '.join(classes)}.",
        f"Backbone {metrics['backbone']} (weights: {metrics['weights'] or 'random init'}), "
        f"{metrics['pooling']} pooling, Dense({metrics['config']['dense_units']}, ReLU), softmax; "
        f"{metrics['image_size']} px input with the backbone's own preprocessing inside the model.",
        "",
        "## Data",
        "",
        "| split | images | " + " | ".join(classes) + " |",
        "|---|---|" + "---|" * len(classes),
    ]
    for split, counts in metrics["counts"].items():
        per_class = " | ".join(str(counts["per_class"].get(c, 0)) for c in classes)
        lines.append(f"| {split} | {counts['images']} | {per_class} |")
    lines += [
        "",
        f"Test split fingerprint (item ids and labels): `{metrics.get('test_split', {}).get('fingerprint', 'n/a')}`.",
        f"Class weights: {metrics['class_weight']}.",
        "",
        "## Training",
        "",
        f"Phase 1 (base frozen, cached features): up to {metrics['config']['frozen_epochs']} epochs at learning rate "
        f"{metrics['config']['head_learning_rate']}; phase 2 (unfrozen, BatchNormalization in inference mode): up to "
        f"{metrics['config']['unfrozen_epochs']} epochs at {metrics['config']['finetune_learning_rate']}, early "
        f"stopping after {metrics['config']['patience']} epochs without a better validation accuracy.",
        f"Kept weights: {metrics['best']['phase']} epoch {metrics['best']['epoch']}, validation accuracy "
        f"{metrics['best']['val_accuracy']:.4f}. Training took {metrics['train_seconds']} s.",
        "",
        "## Test metrics",
        "",
        f"Accuracy **{test['accuracy']:.4f}**, macro-F1 **{test['macro_f1']:.4f}**.",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for name in classes:
        row = test["per_class"][name]
        lines.append(f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
    lines += ["", "Pictures: `training_curves.png`, `confusion_matrix.png`.", ""]
    return "\n".join(lines)


def write_evaluation(store: ObjectStore, metrics: dict[str, Any]) -> dict[str, str]:
    """Write the pictures and the model card of one trained version; returns name -> key."""
    attribute, version = metrics["attribute"], metrics["version"]
    title = f"{attribute} {version}"
    artifacts = {
        "training_curves.png": training_curves_png(metrics["history"], metrics["best"], title),
        "confusion_matrix.png": confusion_matrix_png(metrics["test"]["confusion_matrix"], tuple(metrics["classes"]),
                                                     f"{title}: test split"),
        "model_card.md": model_card(metrics).encode(),
    }
    return {name: store.put_bytes(artifact_key(attribute, version, name), data) for name, data in artifacts.items()}
