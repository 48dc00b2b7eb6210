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
from pipeline.store_layout import model_artifact_key


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


# -- the linear-probe baseline --------------------------------------------------------------------------
PROBE_L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def standardize_like_training(train: np.ndarray, std_floor_share: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the training features, std floored like models.network.FeatureStandardization."""
    std = train.std(axis=0)
    return train.mean(axis=0), np.maximum(std, max(std_floor_share * float(np.median(std)), 1e-6))


def softmax_regression(
    x: np.ndarray, y: np.ndarray, num_classes: int, l2: float, max_iterations: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression: min mean cross-entropy + l2/2 * |W|^2 (bias not penalised),
    by L-BFGS (scipy); returns (W (d, k), b (k,)). ``x`` should be standardised."""
    from scipy.optimize import minimize

    n, d = x.shape
    onehot = np.eye(num_classes)[y]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: d * num_classes].reshape(d, num_classes), theta[d * num_classes :]
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = -(onehot * log_p).sum() / n + 0.5 * l2 * float((w * w).sum())
        residual = (np.exp(log_p) - onehot) / n
        return loss, np.concatenate([(x.T @ residual + l2 * w).ravel(), residual.sum(axis=0)])

    theta0 = np.zeros(d * num_classes + num_classes)
    result = minimize(objective, theta0, jac=True, method="L-BFGS-B", options={"maxiter": max_iterations})
    return result.x[: d * num_classes].reshape(d, num_classes), result.x[d * num_classes :]


def log_loss(probabilities: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probabilities[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    num_classes: int,
    grid: tuple[float, ...] = PROBE_L2_GRID,
) -> dict[str, Any]:
    """The linear-probe baseline on frozen features: a softmax regression fitted on train for each L2
    strength of ``grid``, the one with the lowest validation log-loss kept (a continuous criterion:
    one validation image cannot flip the choice the way it flips an accuracy).

    Returns mean/std (the standardisation), W, b, l2, val_accuracy, val_loss and every grid point's
    validation accuracy and loss (the record of what was tried)."""
    train_x, val_x = np.asarray(train_x, np.float64), np.asarray(val_x, np.float64)
    mean, std = standardize_like_training(train_x)
    xs, vs = (train_x - mean) / std, (val_x - mean) / std
    tried, best = [], None
    for l2 in grid:
        w, b = softmax_regression(xs, train_y, num_classes, l2)
        p = softmax(vs @ w + b)
        row = {"l2": l2, "val_accuracy": float((p.argmax(axis=1) == val_y).mean()), "val_loss": log_loss(p, val_y)}
        tried.append(row)
        if best is None or row["val_loss"] < best[0]["val_loss"]:
            best = (row, w, b)
    if best is None:
        raise ValueError("the linear probe needs at least one L2 strength in grid")
    row, w, b = best
    return {
        "mean": mean,
        "std": std,
        "W": w,
        "b": b,
        "l2": row["l2"],
        "val_accuracy": row["val_accuracy"],
        "val_loss": row["val_loss"],
        "grid": tried,
    }


def probe_predict(probe: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Class probabilities of a fitted :func:`linear_probe` on raw (unstandardised) features."""
    return softmax(((np.asarray(x, np.float64) - probe["mean"]) / probe["std"]) @ probe["W"] + probe["b"])


def beats(candidate_accuracy: float, reference_accuracy: float, images: int, margin_images: float) -> bool:
    """The selection rule: a candidate (a later phase, a network over its probe) is preferred to the
    simpler reference only when its validation accuracy is higher by MORE than ``margin_images``
    images' worth of the ``images`` validation images, so one image cannot flip the choice."""
    return candidate_accuracy - reference_accuracy > margin_images / max(images, 1) + 1e-9


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
        axes.text(
            column,
            row,
            str(value),
            ha="center",
            va="center",
            color="white" if value > threshold else "black",
            fontsize=9,
        )
    axes.set_title(title)
    return _figure_png(figure)


# -- the model card -------------------------------------------------------------------------------------
def model_card(metrics: dict[str, Any]) -> str:
    """A short Markdown card: what, on which data, how trained, how good (test split)."""
    test = metrics["test"]
    classes = metrics["classes"]
    units = metrics["config"]["dense_units"]
    head = (
        f"Dense({units}, ReLU), softmax"
        if units and metrics.get("published", "network") == "network"
        else "a linear softmax layer"
    )
    lines = [
        f"# {metrics['attribute']} network, version {metrics['version']}",
        "",
        f"Classifies a product image into one of {len(classes)} {metrics['attribute']} classes: {', '.join(classes)}.",
        f"Published model: the {metrics.get('published', 'network')} (see below). "
        f"Backbone {metrics['backbone']} (weights: {metrics['weights'] or 'random init'}), "
        f"{metrics['pooling']} pooling, {head}; "
        f"{metrics['image_size']} px input ({metrics['config'].get('image_fit', 'squash')}) with the backbone's own "
        "preprocessing inside the model.",
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
        f"{metrics['config']['head_learning_rate']}; phase 2 (from phase 1's kept epoch; backbone trainable from "
        f"{_unfrozen_part(metrics['config'], metrics['backbone'])}, BatchNormalization in inference mode): up to "
        f"{metrics['config']['unfrozen_epochs']} epochs at {metrics['config']['finetune_learning_rate']}, early "
        f"stopping after {metrics['config']['patience']} epochs without a lower validation loss "
        f"(schedule {metrics['config'].get('lr_schedule', 'constant')}, weight decay "
        f"{metrics['config'].get('weight_decay', 0)}, label smoothing {metrics['config'].get('label_smoothing', 0)}, "
        f"mirror augmentation {metrics['config'].get('mirror_augment', False)}).",
        "Selection on validation only: per phase the epoch of lowest validation loss; phase 2 is kept only when its "
        f"accuracy beats phase 1's by more than {metrics['config'].get('selection_margin', 0)} validation image(s).",
        f"Kept weights: {metrics['best']['phase']} epoch {metrics['best']['epoch']}, validation accuracy "
        f"{metrics['best']['val_accuracy']:.4f}. Training took {metrics['train_seconds']} s.",
        "",
        *baseline_lines(metrics),
        *rejected_lines(metrics),
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


def _unfrozen_part(config: dict[str, Any], backbone: str) -> str:
    value = config.get("unfreeze_from", "all")
    value = value.get(backbone, "all") if isinstance(value, dict) else value
    return "its first layer" if value == "all" else f"layer {value}"


def baseline_lines(metrics: dict[str, Any]) -> list[str]:
    """The network against its linear probe (same cached features), and which one is published."""
    probe, network = metrics.get("probe"), metrics.get("network")
    if not probe or not network:
        return []
    published = metrics.get("published", "network")
    return [
        "## Network vs linear probe",
        "",
        "The probe: multinomial logistic regression on the same frozen, pooled features (L2 "
        f"{probe['l2']} picked on validation log-loss). The network is published only when its validation "
        f"accuracy beats the probe's by more than {metrics['config'].get('selection_margin', 0)} validation "
        "image(s); otherwise the probe is published as this attribute's model.",
        "",
        "| model | validation accuracy | test accuracy | test macro-F1 |",
        "|---|---|---|---|",
        f"| network | {network['val_accuracy']:.4f} | {network['test']['accuracy']:.4f} | {network['test']['macro_f1']:.4f} |",
        f"| linear probe | {probe['val_accuracy']:.4f} | {probe['test']['accuracy']:.4f} | {probe['test']['macro_f1']:.4f} |",
        "",
        f"Published as this version's model: **{published}**.",
        "",
    ]


def rejected_lines(metrics: dict[str, Any]) -> list[str]:
    """Every image the run left out, by split, key and reason."""
    rejected = metrics.get("rejected") or {}
    rows = [(split, r) for split, items in rejected.items() for r in items]
    if not rows:
        return []
    lines = ["## Images left out", "", "| split | item | image key | reason | detail |", "|---|---|---|---|---|"]
    lines += [
        f"| {split} | {r['item_id']} | `{r['image_key']}` | {r['reason']} | {r.get('detail', '')} |"
        for split, r in rows
    ]
    return lines + [""]


def write_evaluation(store: ObjectStore, metrics: dict[str, Any]) -> dict[str, str]:
    """Write the pictures and the model card of one trained version; returns name -> key."""
    attribute, version = metrics["attribute"], metrics["version"]
    title = f"{attribute} {version}"
    artifacts = {
        "training_curves.png": training_curves_png(metrics["history"], metrics["best"], title),
        "confusion_matrix.png": confusion_matrix_png(
            metrics["test"]["confusion_matrix"], tuple(metrics["classes"]), f"{title}: test split"
        ),
        "model_card.md": model_card(metrics).encode(),
    }
    return {
        name: store.put_bytes(model_artifact_key(attribute, version, name), data) for name, data in artifacts.items()
    }
