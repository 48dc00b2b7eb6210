"""Two-phase training of one attribute network, its linear-probe baseline, its evaluation, and its
artifacts in the store.

The recipe (keras-io transfer learning, adapted to CPU budgets; issue 13 measured each choice on real
photos, bench/recipe_search.py and bench/README.md):

1. **Frozen base.** The backbone does not change in this phase, so its pooled features are computed
   ONCE per train/validation image (and per mirrored train image when ``mirror_augment``) and the
   head is trained on those cached features for ``frozen_epochs``. The head model shares its layers
   with the full network, so the trained head is already in place afterwards.
2. **Linear probe.** On the same cached features a multinomial logistic regression is fitted on train
   (L2 picked on validation log-loss, models.evaluation.linear_probe): the baseline the network has
   to beat.
3. **Fine-tuning** starts from phase 1's kept weights. With ``unfreeze_from`` naming a block ("block11")
   only the backbone's top blocks train: the activations entering them are computed once per image
   (and mirror), so an epoch costs a fraction of a full pass; with "all" the whole backbone trains on
   augmented images. BatchNormalization stays in inference mode. Early stopping after ``patience``
   epochs without a lower validation loss.

Selection, on validation only: within a phase the epoch with the lowest validation loss is that
phase's candidate; phase 2's candidate replaces phase 1's only when its validation accuracy is higher
by more than ``selection_margin`` images (models.evaluation.beats), and the network is published only
when it beats its own probe by the same rule, else the probe is published as the attribute's model.
The test split is read once for each of the two final candidates (network and probe) and recorded.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from models.checkpoint import (
    FROZEN,
    UNFROZEN,
    Checkpoints,
    EpochCheckpoint,
    TrainingState,
    apply_layer_weights,
    restore_optimizer,
)
from models.data import SPLITS, SplitArrays, labelled_items, load_arrays, split_fingerprint
from models.evaluation import beats, classification_metrics, linear_probe, write_evaluation
from models.network import (
    BACKBONE_LAYER,
    backbone_cut,
    build_attribute_network,
    feature_extractor,
    head_model,
    input_batches,
    predict_classes,
    set_backbone_trainable,
    set_tail_trainable,
    split_at,
)
from pipeline.storage import ObjectStore
from pipeline.store_layout import model_file_key, model_metrics_key

logger = logging.getLogger(__name__)


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
    # issue 13 (the defaults here are the seed's behaviour; config/settings.yaml holds the chosen recipe)
    weight_decay: float = 0.0  # L2 on the head's kernels
    label_smoothing: float = 0.0
    lr_schedule: str = "constant"  # constant | cosine (per phase, to 0, after warmup_epochs of linear warm-up)
    warmup_epochs: int = 0
    unfreeze_from: Any = "all"  # "all", a backbone layer-name prefix ("block11"), or {backbone: prefix}
    mirror_augment: bool = False  # phase 1 and a top-blocks phase 2 also train on mirrored images
    selection_margin: float = 0.0  # images of validation a later candidate must win by (models.evaluation.beats)
    probe: bool = True  # fit and record the linear-probe baseline (and publish it when it wins)
    head_init: str = "random"  # random | probe (dense_units 0: the head starts as the fitted probe, "LP-FT")
    image_fit: str = "squash"  # squash | crop (aspect-preserving resize + centre crop), pipeline.images
    mixed_precision: str = "auto"  # auto (mixed_float16 when a GPU is present) | off

    @classmethod
    def from_dict(cls, training: dict[str, Any]) -> TrainingConfig:
        known = set(cls.__dataclass_fields__)
        config = cls(**{key: value for key, value in training.items() if key in known})
        if config.shared_backbone and config.unfrozen_epochs:
            config = dataclasses.replace(config, unfrozen_epochs=0)
        return config

    def unfreeze_prefix(self) -> str:
        """``unfreeze_from`` for this config's backbone ("all" when a mapping does not name it)."""
        if isinstance(self.unfreeze_from, dict):
            return str(self.unfreeze_from.get(self.backbone, "all"))
        return str(self.unfreeze_from)


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


def class_counts(arrays: SplitArrays, classes: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(arrays.labels, minlength=len(classes))
    return {name: int(n) for name, n in zip(classes, counts)}


# -- callbacks ----------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One phase's kept epoch: its validation accuracy and loss and (in memory) the network's weights."""

    epoch: int
    val_accuracy: float
    val_loss: float | None
    weights: list[np.ndarray] | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "val_accuracy": self.val_accuracy, "val_loss": self.val_loss}


class BestWeights(keras.callbacks.Callback):
    """The selection rule over epochs and phases, with a weights snapshot per phase's candidate.

    Within a phase the candidate is the epoch with the lowest validation loss (the highest accuracy
    when no loss is logged); a continuous criterion, so one validation image barely moves it. Across
    phases the later phase's candidate is kept only when it :func:`~models.evaluation.beats` the
    earlier one's accuracy by more than ``margin_images`` of the ``validation_images``.

    ``network`` is the full attribute network even while the head or tail model is the one being
    fitted: they share layers, so the full network's weights are what the epoch produced.
    """

    def __init__(self, network: keras.Model, margin_images: float = 0.0, validation_images: int = 1) -> None:
        super().__init__()
        self.network = network
        self.phase = ""
        self.margin_images, self.validation_images = margin_images, validation_images
        self.candidates: dict[str, Candidate] = {}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        accuracy = float(logs.get("val_accuracy", -1.0))
        loss = float(logs["val_loss"]) if "val_loss" in logs and math.isfinite(float(logs["val_loss"])) else None
        current = self.candidates.get(self.phase)
        if current is None or self._better(accuracy, loss, current):
            weights = [np.array(w, copy=True) for w in self.network.get_weights()]
            self.candidates[self.phase] = Candidate(epoch + 1, accuracy, loss, weights)

    @staticmethod
    def _better(accuracy: float, loss: float | None, current: Candidate) -> bool:
        if loss is not None and current.val_loss is not None:
            return loss < current.val_loss  # strictly lower: on a tie the earlier (cheaper) epoch stays
        return accuracy > current.val_accuracy

    @property
    def kept_phase(self) -> str | None:
        """FROZEN's candidate unless UNFROZEN's beats it by the margin (or there is no FROZEN one)."""
        frozen, unfrozen = self.candidates.get(FROZEN), self.candidates.get(UNFROZEN)
        if unfrozen is not None and (
            frozen is None
            or beats(unfrozen.val_accuracy, frozen.val_accuracy, self.validation_images, self.margin_images)
        ):
            return UNFROZEN
        return FROZEN if frozen is not None else next(iter(self.candidates), None)

    @property
    def best_phase(self) -> str | None:
        return self.kept_phase

    @property
    def best_epoch(self) -> int | None:
        return self.candidates[self.kept_phase].epoch if self.kept_phase else None

    @property
    def best_accuracy(self) -> float:
        return self.candidates[self.kept_phase].val_accuracy if self.kept_phase else -1.0

    def record(self) -> dict[str, Any]:
        """The kept epoch and every phase's candidate, for metrics.json and the checkpoint's state."""
        return {
            "phase": self.best_phase,
            "epoch": self.best_epoch,
            "val_accuracy": self.best_accuracy,
            "candidates": {phase: c.record() for phase, c in self.candidates.items()},
        }

    def restore(self, phase: str | None = None) -> None:
        """Put the kept weights (or ``phase``'s candidate's) back into the network."""
        phase = phase or self.kept_phase
        if phase in self.candidates and self.candidates[phase].weights is not None:
            self.network.set_weights(self.candidates[phase].weights)


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
        logger.info(
            f"[{self.label}] {self.phase} epoch {epoch + 1}/{self.epochs}: loss {row.get('loss', float('nan')):.3f} "
            f"acc {row.get('accuracy', float('nan')):.3f} val_acc {row.get('val_accuracy', float('nan')):.3f} "
            f"({row['seconds']:.1f}s)"
        )


class PatienceStop(keras.callbacks.Callback):
    """Early stopping on validation loss (accuracy where no loss is logged), counted from the run's
    history rows of ``phase``.

    Keras' EarlyStopping keeps its count in memory; this one derives it from the history, so a
    resumed phase stops exactly where an uninterrupted one would. Must run after the EpochLog that
    appends the rows.
    """

    def __init__(self, history: list[dict], phase: str, patience: int) -> None:
        super().__init__()
        self.history, self.phase, self.patience = history, phase, patience

    @staticmethod
    def exhausted(history: list[dict], phase: str, patience: int) -> bool:
        rows = [row for row in history if row.get("phase") == phase]
        if not rows:
            return False
        if all("val_loss" in row for row in rows):
            best_at = int(np.argmin([row["val_loss"] for row in rows]))  # first epoch of the lowest loss
        else:
            best_at = int(np.argmax([row.get("val_accuracy", -1.0) for row in rows]))  # first of the best accuracy
        return len(rows) - 1 - best_at >= patience

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.exhausted(self.history, self.phase, self.patience):
            self.model.stop_training = True


# -- the two phases -----------------------------------------------------------------------------------
def learning_rate(peak: float, config: TrainingConfig, epochs: int, steps_per_epoch: int):
    """``peak`` constant, or (``lr_schedule: cosine``) a linear warm-up over ``warmup_epochs`` then a
    cosine decay to 0 at the phase's last epoch. The step count lives in the optimizer, so a resumed
    phase continues the schedule where it stopped."""
    if config.lr_schedule == "constant":
        return peak
    total = max(1, epochs * steps_per_epoch)
    warmup = min(config.warmup_epochs * steps_per_epoch, total - 1)
    if warmup:
        return keras.optimizers.schedules.CosineDecay(0.0, total - warmup, warmup_target=peak, warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(peak, total)


def compile_for(model: keras.Model, peak: float, config: TrainingConfig, epochs: int, examples: int) -> None:
    steps = math.ceil(examples / config.batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate(peak, config, epochs, steps)),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype="float32")[labels]


def mirrored(images: np.ndarray) -> np.ndarray:
    """Left-right mirror images of an (n, h, w, c) batch (the one augmentation cached passes keep)."""
    return images[:, :, ::-1, :]


def with_mirrors(train: FrozenPass) -> tuple[np.ndarray, np.ndarray]:
    """The train inputs with their mirrored copies appended (when computed) and the labels to match."""
    if train.mirrored is None:
        return train.inputs, train.labels
    return np.concatenate([train.inputs, train.mirrored]), np.concatenate([train.labels, train.labels])


@dataclass
class FrozenPass:
    """What the frozen part of the network computed once for one split: ``inputs`` (pooled features or
    the activations entering the unfrozen tail), their mirrored-image counterparts, and the labels."""

    inputs: np.ndarray
    labels: np.ndarray
    mirrored: np.ndarray | None = None
    features: np.ndarray | None = None  # pooled features (== inputs when no tail is cut off)
    mirrored_features: np.ndarray | None = None
    seconds: float = 0.0
    images: int = 0

    def pooled_features(self) -> np.ndarray:
        """``features``, which every frozen pass computes; raises ValueError when they are missing."""
        if self.features is None:
            raise ValueError("this frozen pass has no pooled features")
        return self.features


def frozen_pass(
    model: keras.Model, arrays: SplitArrays, config: TrainingConfig, cut: str | None, mirror: bool
) -> FrozenPass:
    """Run the frozen part once over a split (and its mirror images): pooled features, or with ``cut``
    the activations entering the tail plus the pooled features the tail makes of them."""
    started = time.perf_counter()
    images = arrays.images
    if cut is None:
        extractor = feature_extractor(model)
        run = lambda x: extractor.predict(input_batches(x, config.batch_size), verbose=0)  # noqa: E731
        inputs = run(images)
        mirrored_inputs = run(mirrored(images)) if mirror else None
        result = FrozenPass(inputs, arrays.labels, mirrored_inputs, inputs, mirrored_inputs)
    else:
        frozen, _, tail_features = split_at(model, cut)
        inputs = frozen.predict(input_batches(images, config.batch_size), verbose=0)
        mirrored_inputs = (
            frozen.predict(input_batches(mirrored(images), config.batch_size), verbose=0) if mirror else None
        )
        result = FrozenPass(
            inputs,
            arrays.labels,
            mirrored_inputs,
            tail_features.predict(inputs, batch_size=config.batch_size, verbose=0),
        )
        if mirror:
            result.mirrored_features = tail_features.predict(mirrored_inputs, batch_size=config.batch_size, verbose=0)
    result.seconds = time.perf_counter() - started
    result.images = len(images) * (2 if mirror else 1)
    return result


def labelled_batches(images: np.ndarray, targets: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """(float32 image batch, target batch) pairs, converted on parallel threads and prefetched."""
    return (
        tf.data.Dataset.from_tensor_slices((images, targets))
        .batch(batch_size)
        .map(lambda x, y: (tf.cast(x, "float32"), y), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def train_head_on_features(
    model: keras.Model,
    train: SplitArrays | FrozenPass,
    validation: SplitArrays | FrozenPass,
    config: TrainingConfig,
    class_weight: dict[int, float],
    callbacks: list[keras.callbacks.Callback],
    initial_epoch: int = 0,
    optimizer_state: dict[str, np.ndarray] | None = None,
) -> None:
    """Phase 1: the backbone is frozen, so the head is fitted on features computed once.

    ``train``/``validation``: FrozenPass results (their pooled ``features``, train with mirrors when
    computed), or SplitArrays whose images are run through the frozen backbone here.
    ``initial_epoch`` and ``optimizer_state`` resume an interrupted phase (see models.checkpoint)."""
    set_backbone_trainable(model, False)
    if isinstance(train, SplitArrays):
        train = frozen_pass(model, train, config, None, config.mirror_augment)
    if isinstance(validation, SplitArrays):
        validation = frozen_pass(model, validation, config, None, False)
    features = train.pooled_features()
    train_x = features if train.mirrored is None else np.concatenate([features, train.mirrored_features])
    train_y = train.labels if train.mirrored is None else np.concatenate([train.labels, train.labels])
    model.get_layer("feature_norm").adapt_to(features)
    head = head_model(model)
    num_classes = int(model.output.shape[-1])
    compile_for(head, config.head_learning_rate, config, config.frozen_epochs, len(train_x))
    if optimizer_state:
        restore_optimizer(head.optimizer, head.trainable_variables, optimizer_state)
    head.fit(
        train_x,
        one_hot(train_y, num_classes),
        validation_data=(validation.pooled_features(), one_hot(validation.labels, num_classes)),
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


def augmented_dataset(arrays: SplitArrays, config: TrainingConfig, num_classes: int) -> tf.data.Dataset:
    """Shuffled, augmented (on the input pipeline's parallel threads) and prefetched training batches."""
    augment = augmentation(config)

    def augment_batch(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return augment(tf.cast(images, "float32"), training=True), labels

    return (
        tf.data.Dataset.from_tensor_slices((arrays.images, one_hot(arrays.labels, num_classes)))
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
    """Phase 2 with ``unfreeze_from: all``: the whole backbone trainable on augmented images, the low
    learning rate, early stopping on validation loss.

    ``history`` (the run's epoch rows) lets a resumed phase keep counting its patience."""
    set_backbone_trainable(model, True)
    num_classes = int(model.output.shape[-1])
    compile_for(model, config.finetune_learning_rate, config, config.unfrozen_epochs, len(train))
    if optimizer_state:
        restore_optimizer(model.optimizer, model.trainable_variables, optimizer_state)
    history = [] if history is None else history
    if initial_epoch >= config.unfrozen_epochs or PatienceStop.exhausted(history, "unfrozen", config.patience):
        return
    stop = PatienceStop(history, "unfrozen", config.patience)
    model.fit(
        augmented_dataset(train, config, num_classes),
        validation_data=labelled_batches(validation.images, one_hot(validation.labels, num_classes), config.batch_size),
        initial_epoch=initial_epoch,
        epochs=config.unfrozen_epochs,
        class_weight=class_weight,
        callbacks=[*callbacks, stop],
        shuffle=False,  # the dataset shuffles itself
        verbose=0,
    )


def fine_tune_tail(
    model: keras.Model,
    cut: str,
    train: FrozenPass,
    validation: FrozenPass,
    config: TrainingConfig,
    class_weight: dict[int, float],
    callbacks: list[keras.callbacks.Callback],
    initial_epoch: int = 0,
    optimizer_state: dict[str, np.ndarray] | None = None,
    history: list[dict] | None = None,
) -> None:
    """Phase 2 with ``unfreeze_from`` naming a block: only the backbone's layers from ``cut`` on (and
    the head) train, on the activations entering them, computed once per image and mirror image
    (``train.inputs`` / ``train.mirrored``). Early stopping on validation loss as in :func:`fine_tune`."""
    set_tail_trainable(model, cut)
    _, tail, _ = split_at(model, cut)
    num_classes = int(model.output.shape[-1])
    train_x, train_y = with_mirrors(train)
    compile_for(tail, config.finetune_learning_rate, config, config.unfrozen_epochs, len(train_x))
    if optimizer_state:
        restore_optimizer(tail.optimizer, tail.trainable_variables, optimizer_state)
    history = [] if history is None else history
    if initial_epoch >= config.unfrozen_epochs or PatienceStop.exhausted(history, "unfrozen", config.patience):
        return
    stop = PatienceStop(history, "unfrozen", config.patience)
    tail.fit(
        train_x,
        one_hot(train_y, num_classes),
        validation_data=(validation.inputs, one_hot(validation.labels, num_classes)),
        initial_epoch=initial_epoch,
        epochs=config.unfrozen_epochs,
        batch_size=config.batch_size,
        class_weight=class_weight,
        shuffle=True,
        callbacks=[*callbacks, stop],
        verbose=0,
    )


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


def use_mixed_precision(config: TrainingConfig) -> bool:
    """mixed_float16 when ``mixed_precision: auto`` and TensorFlow sees a GPU (float32 on CPUs, where
    float16 is slower); the softmax layer always computes in float32 (models.network)."""
    if config.mixed_precision not in ("auto", "off"):
        raise ValueError(f"mixed_precision must be auto or off, got {config.mixed_precision!r}")
    return config.mixed_precision == "auto" and bool(tf.config.list_physical_devices("GPU"))


def init_head_from_probe(model: keras.Model, probe: dict[str, Any]) -> None:
    """Start a linear head (``dense_units: 0``) as the fitted probe: its standardisation and softmax
    layer. Fine-tuning then starts from the best linear solution instead of a random head, whose large
    early gradients would distort the pretrained features ("LP-FT", Kumar et al. 2022)."""
    if "head_dense" in {layer.name for layer in model.layers}:
        raise ValueError("head_init: probe needs a linear head (dense_units: 0)")
    norm = model.get_layer("feature_norm")
    norm.mean.assign(probe["mean"].astype("float32"))
    norm.std.assign(probe["std"].astype("float32"))
    model.get_layer("predictions").set_weights([probe["W"].astype("float32"), probe["b"].astype("float32")])


def probe_network(
    model: keras.Model,
    probe: dict[str, Any],
    config: TrainingConfig,
    classes: tuple[str, ...],
    backbone_weights: list[np.ndarray],
    name: str,
) -> keras.Model:
    """The fitted linear probe as an attribute network: the frozen backbone, the probe's own
    standardisation, a linear softmax layer (``dense_units: 0``). It is what gets published when the
    probe wins, so inference treats it like any network."""
    network = build_attribute_network(
        len(classes),
        backbone=config.backbone,
        weights=None,
        image_size=config.image_size,
        dense_units=0,
        dropout=0.0,
        pooling=config.pooling,
        name=name,
    )
    network.get_layer(BACKBONE_LAYER).set_weights(backbone_weights)
    init_head_from_probe(network, probe)
    return network


def rejection_record(splits: dict[str, SplitArrays]) -> dict[str, list[dict[str, str]]]:
    """Every image the run could not use, per split: item id, image key and the reason."""
    return {name: list(arrays.rejected) for name, arrays in splits.items()}


def train_attribute(
    store: ObjectStore, attribute: str, version: str, training: dict[str, Any], classes: tuple[str, ...]
) -> dict[str, Any]:
    """Train, evaluate and save the network of one attribute; returns (and writes) its metrics.

    Resumable and idempotent: an interrupted run of the same version continues from its last
    checkpointed epoch (models.checkpoint); a version that already has its model and metrics is not
    trained again (its metrics are returned).
    """
    if store.exists(model_file_key(attribute, version)) and store.exists(model_metrics_key(attribute, version)):
        logger.info(f"[{attribute} {version}] already trained; keeping {model_file_key(attribute, version)}")
        return store.read_json(model_metrics_key(attribute, version))
    config = TrainingConfig.from_dict(training)
    if config.frozen_epochs + config.unfrozen_epochs < 1:
        raise ValueError("training needs frozen_epochs + unfrozen_epochs >= 1")
    if config.head_init not in ("random", "probe"):
        raise ValueError(f"head_init must be random or probe, got {config.head_init!r}")
    if config.head_init == "probe" and (config.dense_units or not config.probe):
        raise ValueError("head_init: probe needs a linear head (dense_units: 0) and probe: true")
    previous_policy = keras.mixed_precision.global_policy().name
    mixed = use_mixed_precision(config)
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _train(store, attribute, version, config, classes, mixed)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(
    store: ObjectStore, attribute: str, version: str, config: TrainingConfig, classes: tuple[str, ...], mixed: bool
) -> dict[str, Any]:
    label = f"{attribute} {version}"
    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    timing: dict[str, float] = {}

    frame = labelled_items(store, attribute, classes)
    splits = {
        name: load_arrays(store, frame[frame["split"] == name], config.image_size, fit=config.image_fit)
        for name in SPLITS
    }
    timing["decode_seconds"] = round(time.perf_counter() - started, 2)
    check_trainable(attribute, splits, classes)
    train, validation, test = splits["train"], splits["validation"], splits["test"]
    logger.info(
        f"[{label}] images train/validation/test: {len(train)}/{len(validation)}/{len(test)}"
        f"{' (mixed_float16)' if mixed else ''}"
    )
    for name, arrays in splits.items():
        for rejected in arrays.rejected:
            logger.info(
                f"[{label}] {name}: left out {rejected['item_id']} ({rejected['image_key']}): {rejected['reason']}"
                f" ({rejected.get('detail', '')})"
            )

    model = build_attribute_network(
        len(classes),
        backbone=config.backbone,
        weights=config.weights,
        image_size=config.image_size,
        dense_units=config.dense_units,
        dropout=config.dropout,
        pooling=config.pooling,
        weight_decay=config.weight_decay,
        name=f"{attribute}_network",
    )
    class_weight = balanced_class_weights(train.labels, len(classes))
    best = BestWeights(model, config.selection_margin, len(validation))
    config_record = {k: getattr(config, k) for k in TrainingConfig.__dataclass_fields__}

    # The frozen part runs once: pooled features for phase 1 and the probe, and with a top-blocks phase 2
    # the activations entering the tail. The tail is cut only where the backbone will not change before
    # phase 2 (phase 1 never changes it), so one pass serves both phases.
    cut = backbone_cut(model, config.unfreeze_prefix()) if config.unfrozen_epochs > 0 else None
    pass_started = time.perf_counter()
    set_backbone_trainable(model, False)
    train_pass = frozen_pass(model, train, config, cut, config.mirror_augment)
    val_pass = frozen_pass(model, validation, config, cut, False)
    timing["frozen_pass_seconds"] = round(time.perf_counter() - pass_started, 2)
    timing["frozen_pass_images_per_second"] = round(
        (train_pass.images + val_pass.images) / max(timing["frozen_pass_seconds"], 1e-9), 1
    )

    probe, probe_model = None, None
    if config.probe:
        probe_started = time.perf_counter()
        probe = linear_probe(
            train_pass.pooled_features(), train.labels, val_pass.pooled_features(), validation.labels, len(classes)
        )
        probe_model = probe_network(
            model, probe, config, classes, model.get_layer(BACKBONE_LAYER).get_weights(), name=f"{attribute}_probe"
        )
        timing["probe_seconds"] = round(time.perf_counter() - probe_started, 2)
        logger.info(f"[{label}] linear probe: L2 {probe['l2']}, val_acc {probe['val_accuracy']:.3f}")
        if config.head_init == "probe":
            init_head_from_probe(model, probe)

    # A checkpoint is applied only now: the frozen pass and the probe need the backbone as it was built.
    checkpoints = Checkpoints(store, attribute, version)
    resumed = checkpoints.load(config_record)
    state, saved = (resumed[0], resumed[1]) if resumed else (TrainingState(config=config_record), {})
    if resumed:
        resume_weights(model, best, state, resumed[1], resumed[2], checkpoints.load_frozen_best())
        logger.info(f"[{label}] resuming from the checkpoint after {state.phase} epoch {state.epochs_done}")
    resumed_phase = state.phase if resumed else None
    history = state.history

    def callbacks(phase: str, epochs: int) -> list[keras.callbacks.Callback]:
        return [EpochLog(label, phase, epochs, history), best, EpochCheckpoint(checkpoints, state, model, phase, best)]

    frozen_done = state.epochs_done if resumed_phase == FROZEN else (config.frozen_epochs if resumed else 0)
    phase_started = time.perf_counter()
    if frozen_done < config.frozen_epochs:
        best.phase = FROZEN
        train_head_on_features(
            model,
            train_pass,
            val_pass,
            config,
            class_weight,
            callbacks(FROZEN, config.frozen_epochs),
            initial_epoch=frozen_done,
            optimizer_state=saved if resumed_phase == FROZEN else None,
        )
    elif config.head_init != "probe" and (not resumed or resumed_phase == FROZEN):
        model.get_layer("feature_norm").adapt_to(train_pass.pooled_features())
    timing["phase1_seconds"] = round(time.perf_counter() - phase_started, 2)
    if config.unfrozen_epochs > 0:
        if resumed_phase != UNFROZEN:
            best.restore(FROZEN)  # phase 2 starts from phase 1's kept epoch, not its last one
            checkpoints.save_frozen_best(best, model)
        best.phase = UNFROZEN
        phase_started = time.perf_counter()
        initial_epoch = state.epochs_done if resumed_phase == UNFROZEN else 0
        optimizer_state = saved if resumed_phase == UNFROZEN else None
        if cut is None:
            fine_tune(
                model,
                train,
                validation,
                config,
                class_weight,
                callbacks(UNFROZEN, config.unfrozen_epochs),
                initial_epoch=initial_epoch,
                optimizer_state=optimizer_state,
                history=history,
            )
            per_epoch = len(train)
        else:
            fine_tune_tail(
                model,
                cut,
                train_pass,
                val_pass,
                config,
                class_weight,
                callbacks(UNFROZEN, config.unfrozen_epochs),
                initial_epoch=initial_epoch,
                optimizer_state=optimizer_state,
                history=history,
            )
            per_epoch = len(train) * (2 if config.mirror_augment else 1)
        timing["phase2_seconds"] = round(time.perf_counter() - phase_started, 2)
        epochs_run = sum(1 for row in history if row.get("phase") == UNFROZEN)
        seconds = sum(row["seconds"] for row in history if row.get("phase") == UNFROZEN)
        timing["phase2_images_per_second"] = (
            round(per_epoch * epochs_run / max(seconds, 1e-9), 1) if epochs_run else 0.0
        )
    best.restore()

    network_test = classification_metrics(test.labels, predict_classes(model, test.images, config.batch_size), classes)
    published, published_model, test_metrics = "network", model, network_test
    probe_record = None
    if probe is not None:
        probe_test = classification_metrics(
            test.labels, predict_classes(probe_model, test.images, config.batch_size), classes
        )
        network_wins = beats(best.best_accuracy, probe["val_accuracy"], len(validation), config.selection_margin)
        if not network_wins:
            published, published_model, test_metrics = "probe", probe_model, probe_test
        probe_record = {
            "l2": probe["l2"],
            "val_accuracy": probe["val_accuracy"],
            "val_loss": round(probe["val_loss"], 4),
            "grid": probe["grid"],
            "test": probe_test,
        }
    train_seconds = round(time.perf_counter() - started, 1)
    logger.info(
        f"[{label}] network: best val_acc {best.best_accuracy:.3f} ({best.best_phase} epoch {best.best_epoch}), "
        f"test acc {network_test['accuracy']:.3f}"
        + (
            f"; probe: val_acc {probe['val_accuracy']:.3f}, test acc {probe_record['test']['accuracy']:.3f}"
            if probe and probe_record is not None  # the record exists whenever the probe does
            else ""
        )
        + f"; published: {published}; {train_seconds}s"
    )
    metrics = {
        "attribute": attribute,
        "version": version,
        "classes": list(classes),
        "image_size": config.image_size,
        "backbone": config.backbone,
        "weights": config.weights,
        "pooling": config.pooling,
        "config": config_record,
        "counts": {
            name: {"images": len(arrays), "skipped": arrays.skipped, "per_class": class_counts(arrays, classes)}
            for name, arrays in splits.items()
        },
        "rejected": rejection_record(splits),
        "class_weight": {classes[c]: round(w, 4) for c, w in class_weight.items()},
        "history": history,
        "best": best.record(),
        "published": published,
        # published is "probe" only when there is a probe
        "val_accuracy": best.best_accuracy if published == "network" or probe is None else probe["val_accuracy"],
        "test": test_metrics,
        "network": {"val_accuracy": best.best_accuracy, "test": network_test},
        "probe": probe_record,
        "test_split": {"images": len(test), "fingerprint": split_fingerprint(test)},
        "timing": timing,
        "mixed_precision": mixed,
        "train_seconds": train_seconds,
        "model_key": model_file_key(attribute, version),
    }
    save_model(store, model_file_key(attribute, version), published_model)
    metrics["artifacts"] = write_evaluation(store, metrics)
    store.write_json(model_metrics_key(attribute, version), metrics)  # last: its presence means "trained"
    checkpoints.clear()
    return metrics


def resume_weights(
    model: keras.Model,
    best: BestWeights,
    state: TrainingState,
    current: dict[str, np.ndarray],
    best_arrays: dict[str, np.ndarray],
    frozen_best: dict[str, np.ndarray] | None = None,
) -> None:
    """Put a checkpoint back into a freshly built ``model`` (same seed, so the same initial weights).

    Each phase candidate's snapshot is rebuilt first: its arrays hold only the layers its phase
    changed, the rest being the fresh model's. ``best_arrays`` is the checkpointed phase's candidate;
    ``frozen_best`` phase 1's, when the checkpoint is in phase 2.
    """
    fresh = model.get_weights()
    candidates = state.best.get("candidates", {})
    sources = {state.phase: best_arrays}
    if state.phase == UNFROZEN and frozen_best:
        sources[FROZEN] = frozen_best
    for phase, arrays in sources.items():
        if phase in candidates and arrays:
            apply_layer_weights(model, arrays)
            record = candidates[phase]
            best.candidates[phase] = Candidate(
                int(record["epoch"]),
                float(record["val_accuracy"]),
                record.get("val_loss"),
                [np.array(w, copy=True) for w in model.get_weights()],
            )
            model.set_weights(fresh)
    apply_layer_weights(model, current)
