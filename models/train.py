"""Two-phase training of one attribute network, its evaluation, and its artifacts in the store.

The recipe (keras-io transfer learning, adapted to CPU budgets):

1. **Frozen base.** The backbone does not change in this phase, so its pooled features are computed
   ONCE per train/validation image and the head is trained on those cached features for
   ``frozen_epochs`` (about 20x faster than running the frozen backbone every epoch). The head model
   shares its layers with the full network, so the trained head is already in place afterwards.
2. **Fine-tuning.** The whole backbone becomes trainable (BatchNormalization stays in inference
   mode), the network is recompiled with the lower ``finetune_learning_rate`` and trained on lightly
   augmented images for up to ``unfrozen_epochs``, stopping early after ``patience`` epochs without
   a better validation accuracy.

The weights with the best validation accuracy over BOTH phases are kept (a fine-tuning that only
hurts falls back to the phase-1 head) and evaluated on the test split.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from models.checkpoint import (
    FROZEN, UNFROZEN, Checkpoints, EpochCheckpoint, TrainingState, apply_layer_weights, restore_optimizer,
)
from models.data import SPLITS, SplitArrays, labelled_items, load_arrays
from models.evaluation import classification_metrics, write_evaluation
from models.network import build_attribute_network, feature_extractor, head_model, set_backbone_trainable
from pipeline.storage import ObjectStore


def model_key(attribute: str, version: str) -> str:
    return f"models/{attribute}/{version}/model.keras"


def metrics_key(attribute: str, version: str) -> str:
    return f"models/{attribute}/{version}/metrics.json"


@dataclass(frozen=True)
class TrainingConfig:
    """The ``training`` settings section, with defaults for the optional keys."""

    backbone: str = "vgg16"
    weights: str | None = None
    image_size: int = 224
    batch_size: int = 32
    dense_units: int = 512
    dropout: float = 0.5
    pooling: str = "avg"
    frozen_epochs: int = 5
    unfrozen_epochs: int = 7
    head_learning_rate: float = 1e-3
    finetune_learning_rate: float = 1e-5
    patience: int = 2
    augment_translation: float = 0.1
    augment_zoom: float = 0.1
    augment_brightness: float = 0.1
    augment_contrast: float = 0.1
    seed: int = 1234
    # Shared-base mode: the backbone stays frozen (no phase 2), so every attribute's network keeps the
    # same base and batch inference runs it once per image for all of them (models.inference).
    shared_backbone: bool = False

    @classmethod
    def from_dict(cls, training: dict[str, Any]) -> "TrainingConfig":
        known = set(cls.__dataclass_fields__)
        config = cls(**{key: value for key, value in training.items() if key in known})
        if config.shared_backbone and config.unfrozen_epochs:
            config = dataclasses.replace(config, unfrozen_epochs=0)
        return config


# -- data checks and class weights ----------------------------------------------------------------
def check_trainable(attribute: str, splits: dict[str, SplitArrays], classes: tuple[str, ...]) -> None:
    """Refuse, with the counts, data that cannot train and evaluate a classifier."""
    counts = {name: len(arrays) for name, arrays in splits.items()}
    train_classes = sorted({classes[i] for i in splits["train"].labels})
    if len(train_classes) < 2 or any(n == 0 for n in counts.values()):
        raise ValueError(
            f"attribute {attribute!r}: too few labelled images to train: {counts} images per split, "
            f"train classes present {train_classes} (need >= 2 classes in train and images in every split)"
        )


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """n / (k * count_c) for the k classes present, so every present class weighs the same in the loss."""
    counts = np.bincount(labels, minlength=num_classes)
    present = int((counts > 0).sum())
    return {c: (len(labels) / (present * counts[c]) if counts[c] else 1.0) for c in range(num_classes)}


def split_fingerprint(arrays: SplitArrays) -> str:
    """sha256 of the split's (item_id, label) pairs: two evaluations are comparable when these agree."""
    pairs = sorted(f"{item}\t{int(label)}" for item, label in zip(arrays.item_ids, arrays.labels))
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()


def class_counts(arrays: SplitArrays, classes: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(arrays.labels, minlength=len(classes))
    return {name: int(n) for name, n in zip(classes, counts)}


# -- callbacks ----------------------------------------------------------------------------------------
class BestWeights(keras.callbacks.Callback):
    """Keeps a copy of ``network``'s weights at the best validation accuracy seen in any phase.

    ``network`` is the full attribute network even while the head model is the one being fitted:
    the two share layers, so the full network's weights are what a phase-1 epoch produced.
    """

    def __init__(self, network: keras.Model) -> None:
        super().__init__()
        self.network = network
        self.phase = ""
        self.best_accuracy = -1.0
        self.best_phase: str | None = None
        self.best_epoch: int | None = None
        self.best_weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        accuracy = float((logs or {}).get("val_accuracy", -1.0))
        if accuracy > self.best_accuracy:  # strictly better: on a tie the earlier (cheaper) epoch stays
            self.best_accuracy, self.best_phase, self.best_epoch = accuracy, self.phase, epoch + 1
            self.best_weights = [np.array(w, copy=True) for w in self.network.get_weights()]

    def restore(self) -> None:
        if self.best_weights is not None:
            self.network.set_weights(self.best_weights)


class EpochLog(keras.callbacks.Callback):
    """One concise line per epoch (it shows up in the Airflow task log) and the history rows."""

    def __init__(self, label: str, phase: str, epochs: int, history: list[dict]) -> None:
        super().__init__()
        self.label, self.phase, self.epochs, self.history = label, phase, epochs, history
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        row = {"phase": self.phase, "epoch": epoch + 1, "seconds": round(time.perf_counter() - self._started, 2)}
        row.update({k: round(float(logs[k]), 4) for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs})
        self.history.append(row)
        print(
            f"[{self.label}] {self.phase} epoch {epoch + 1}/{self.epochs}: loss {row.get('loss', float('nan')):.3f} "
            f"acc {row.get('accuracy', float('nan')):.3f} val_acc {row.get('val_accuracy', float('nan')):.3f} "
            f"({row['seconds']:.1f}s)",
            flush=True,
        )


class PatienceStop(keras.callbacks.Callback):
    """Early stopping on validation accuracy, counted from the run's history rows of ``phase``.

    Keras' EarlyStopping keeps its count in memory; this one derives it from the history, so a
    resumed phase stops exactly where an uninterrupted one would. Must run after the EpochLog that
    appends the rows.
    """

    def __init__(self, history: list[dict], phase: str, patience: int) -> None:
        super().__init__()
        self.history, self.phase, self.patience = history, phase, patience

    @staticmethod
    def exhausted(history: list[dict], phase: str, patience: int) -> bool:
        accuracies = [row.get("val_accuracy", -1.0) for row in history if row.get("phase") == phase]
        if not accuracies:
            return False
        best_at = int(np.argmax(accuracies))  # first epoch of the best accuracy
        return len(accuracies) - 1 - best_at >= patience

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.exhausted(self.history, self.phase, self.patience):
            self.model.stop_training = True


# -- the two phases -----------------------------------------------------------------------------------
def train_head_on_features(
    model: keras.Model,
    train: SplitArrays,
    validation: SplitArrays,
    config: TrainingConfig,
    class_weight: dict[int, float],
    callbacks: list[keras.callbacks.Callback],
    initial_epoch: int = 0,
    optimizer_state: dict[str, np.ndarray] | None = None,
) -> None:
    """Phase 1: the backbone is frozen, so run it once per image and fit the head on cached features.

    ``initial_epoch`` and ``optimizer_state`` resume an interrupted phase (see models.checkpoint)."""
    set_backbone_trainable(model, False)
    extractor = feature_extractor(model)
    train_features = extractor.predict(train.images, batch_size=config.batch_size, verbose=0)
    val_features = extractor.predict(validation.images, batch_size=config.batch_size, verbose=0)
    model.get_layer("feature_norm").adapt_to(train_features)
    head = head_model(model)
    head.compile(
        optimizer=keras.optimizers.Adam(config.head_learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    if optimizer_state:
        restore_optimizer(head.optimizer, head.trainable_variables, optimizer_state)
    head.fit(
        train_features,
        train.labels,
        validation_data=(val_features, validation.labels),
        initial_epoch=initial_epoch,
        epochs=config.frozen_epochs,
        batch_size=config.batch_size,
        class_weight=class_weight,
        shuffle=True,
        callbacks=callbacks,
        verbose=0,
    )


def augmentation(config: TrainingConfig) -> keras.Sequential:
    """Fine-tuning augmentation within reason for product photos: a horizontal flip, a small
    translation, a zoom-in of up to ``augment_zoom`` (a random crop at the same output size) and
    brightness/contrast jitter. Never a vertical flip or a hue change: "upside down" and "another
    colour" are not the same garment. Inputs and outputs are raw RGB in 0-255."""
    t, seed = config.augment_translation, config.seed
    layers = [keras.layers.RandomFlip("horizontal", seed=seed)]
    if t > 0:
        layers.append(keras.layers.RandomTranslation(t, t, fill_mode="nearest", seed=seed))
    if config.augment_zoom > 0:
        layers.append(keras.layers.RandomZoom((-config.augment_zoom, 0.0), fill_mode="nearest", seed=seed))
    if config.augment_brightness > 0:
        layers.append(keras.layers.RandomBrightness(config.augment_brightness, value_range=(0, 255), seed=seed))
    if config.augment_contrast > 0:
        layers.append(keras.layers.RandomContrast(config.augment_contrast, value_range=(0, 255), seed=seed))
    return keras.Sequential(layers, name="augmentation")


def augmented_dataset(arrays: SplitArrays, config: TrainingConfig) -> tf.data.Dataset:
    augment = augmentation(config)

    def augment_batch(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return augment(tf.cast(images, "float32"), training=True), labels

    return (
        tf.data.Dataset.from_tensor_slices((arrays.images, arrays.labels))
        .shuffle(len(arrays), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .map(augment_batch, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def fine_tune(
    model: keras.Model,
    train: SplitArrays,
    validation: SplitArrays,
    config: TrainingConfig,
    class_weight: dict[int, float],
    callbacks: list[keras.callbacks.Callback],
    initial_epoch: int = 0,
    optimizer_state: dict[str, np.ndarray] | None = None,
    history: list[dict] | None = None,
) -> None:
    """Phase 2: the whole backbone trainable, a low learning rate, early stopping on val accuracy.

    ``history`` (the run's epoch rows) lets a resumed phase keep counting its patience."""
    set_backbone_trainable(model, True)
    model.compile(
        optimizer=keras.optimizers.Adam(config.finetune_learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    if optimizer_state:
        restore_optimizer(model.optimizer, model.trainable_variables, optimizer_state)
    history = [] if history is None else history
    if initial_epoch >= config.unfrozen_epochs or PatienceStop.exhausted(history, "unfrozen", config.patience):
        return
    stop = PatienceStop(history, "unfrozen", config.patience)
    model.fit(
        augmented_dataset(train, config),
        validation_data=(validation.images.astype("float32"), validation.labels),
        initial_epoch=initial_epoch,
        epochs=config.unfrozen_epochs,
        class_weight=class_weight,
        callbacks=[*callbacks, stop],
        shuffle=False,  # the dataset shuffles itself
        verbose=0,
    )


# -- evaluation ---------------------------------------------------------------------------------------
def predict_classes(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.argmax(model.predict(images.astype("float32"), batch_size=batch_size, verbose=0), axis=1)


# -- artifacts ----------------------------------------------------------------------------------------
def save_model(store: ObjectStore, key: str, model: keras.Model) -> None:
    """Save an uncompiled copy to ``key`` in the store.

    Why a copy: a compiled model saves its Adam slots too, three times the size of the weights, and
    ``clone_model`` would compile the clone again. Rebuilding from the config gives a bare model.
    """
    export = keras.Model.from_config(model.get_config())
    export.set_weights(model.get_weights())
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        export.save(path)
        with open(path, "rb") as handle:
            store.put_bytes(key, handle.read())


def train_attribute(
    store: ObjectStore, attribute: str, version: str, training: dict[str, Any], classes: tuple[str, ...]
) -> dict[str, Any]:
    """Train, evaluate and save the network of one attribute; returns (and writes) its metrics.

    Resumable and idempotent: an interrupted run of the same version continues from its last
    checkpointed epoch (models.checkpoint); a version that already has its model and metrics is not
    trained again (its metrics are returned).
    """
    if store.exists(model_key(attribute, version)) and store.exists(metrics_key(attribute, version)):
        print(f"[{attribute} {version}] already trained; keeping {model_key(attribute, version)}", flush=True)
        return store.read_json(metrics_key(attribute, version))
    config = TrainingConfig.from_dict(training)
    if config.frozen_epochs + config.unfrozen_epochs < 1:
        raise ValueError("training needs frozen_epochs + unfrozen_epochs >= 1")
    label = f"{attribute} {version}"
    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)

    frame = labelled_items(store, attribute, classes)
    splits = {name: load_arrays(store, frame[frame["split"] == name], config.image_size) for name in SPLITS}
    check_trainable(attribute, splits, classes)
    train, validation, test = splits["train"], splits["validation"], splits["test"]
    print(f"[{label}] images train/validation/test: {len(train)}/{len(validation)}/{len(test)}", flush=True)

    model = build_attribute_network(
        len(classes),
        backbone=config.backbone,
        weights=config.weights,
        image_size=config.image_size,
        dense_units=config.dense_units,
        dropout=config.dropout,
        pooling=config.pooling,
        name=f"{attribute}_network",
    )
    class_weight = balanced_class_weights(train.labels, len(classes))
    best = BestWeights(model)
    checkpoints = Checkpoints(store, attribute, version)
    config_record = {k: getattr(config, k) for k in TrainingConfig.__dataclass_fields__}
    resumed = checkpoints.load(config_record)
    state, saved = (resumed[0], resumed[1]) if resumed else (TrainingState(config=config_record), {})
    if resumed:
        resume_weights(model, best, state, resumed[1], resumed[2])
        print(f"[{label}] resuming from the checkpoint after {state.phase} epoch {state.epochs_done}", flush=True)
    resumed_phase = state.phase if resumed else None
    history = state.history

    def callbacks(phase: str, epochs: int) -> list[keras.callbacks.Callback]:
        return [EpochLog(label, phase, epochs, history), best, EpochCheckpoint(checkpoints, state, model, phase, best)]

    frozen_done = state.epochs_done if resumed_phase == FROZEN else (config.frozen_epochs if resumed else 0)
    if frozen_done < config.frozen_epochs:
        best.phase = FROZEN
        train_head_on_features(model, train, validation, config, class_weight, callbacks(FROZEN, config.frozen_epochs),
                               initial_epoch=frozen_done, optimizer_state=saved if resumed_phase == FROZEN else None)
    if config.unfrozen_epochs > 0:
        best.phase = UNFROZEN
        fine_tune(model, train, validation, config, class_weight, callbacks(UNFROZEN, config.unfrozen_epochs),
                  initial_epoch=state.epochs_done if resumed_phase == UNFROZEN else 0,
                  optimizer_state=saved if resumed_phase == UNFROZEN else None, history=history)
    best.restore()

    test_metrics = classification_metrics(test.labels, predict_classes(model, test.images, config.batch_size), classes)
    train_seconds = round(time.perf_counter() - started, 1)
    print(
        f"[{label}] best val_acc {best.best_accuracy:.3f} ({best.best_phase} epoch {best.best_epoch}); "
        f"test acc {test_metrics['accuracy']:.3f} macro-F1 {test_metrics['macro_f1']:.3f}; {train_seconds}s",
        flush=True,
    )
    metrics = {
        "attribute": attribute,
        "version": version,
        "classes": list(classes),
        "image_size": config.image_size,
        "backbone": config.backbone,
        "weights": config.weights,
        "pooling": config.pooling,
        "config": {k: getattr(config, k) for k in TrainingConfig.__dataclass_fields__},
        "counts": {
            name: {"images": len(arrays), "skipped": arrays.skipped, "per_class": class_counts(arrays, classes)}
            for name, arrays in splits.items()
        },
        "class_weight": {classes[c]: round(w, 4) for c, w in class_weight.items()},
        "history": history,
        "best": {"phase": best.best_phase, "epoch": best.best_epoch, "val_accuracy": best.best_accuracy},
        "val_accuracy": best.best_accuracy,
        "test": test_metrics,
        "test_split": {"images": len(test), "fingerprint": split_fingerprint(test)},
        "train_seconds": train_seconds,
        "model_key": model_key(attribute, version),
    }
    save_model(store, model_key(attribute, version), model)
    metrics["artifacts"] = write_evaluation(store, metrics)
    store.write_json(metrics_key(attribute, version), metrics)  # last: its presence means "trained"
    checkpoints.clear()
    return metrics


def resume_weights(model: keras.Model, best: "BestWeights", state: TrainingState, current: dict[str, np.ndarray],
                   best_arrays: dict[str, np.ndarray]) -> None:
    """Put a checkpoint back into a freshly built ``model`` (same seed, so the same initial weights).

    The best snapshot is rebuilt first: its arrays hold only the layers its phase changed, the rest
    being the fresh model's.
    """
    fresh = model.get_weights()
    if best_arrays and state.best.get("phase"):
        apply_layer_weights(model, best_arrays)
        best.best_weights = [np.array(w, copy=True) for w in model.get_weights()]
        best.best_phase, best.best_epoch = state.best["phase"], state.best["epoch"]
        best.best_accuracy = float(state.best["val_accuracy"])
        model.set_weights(fresh)
    apply_layer_weights(model, current)
