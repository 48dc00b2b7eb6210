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
from pipeline.settings import TrainingSettings
from pipeline.storage import ObjectStore
from pipeline.store_layout import model_file_key, model_metrics_key

logger = logging.getLogger(__name__)


#: Keys of the training section that are the publish step's (models.registry.promote), not the run's
#: recipe: they stay out of the config a run records (metrics.json) and a checkpoint must match.
PUBLISH_KEYS = ("promotion_tolerance",)


def run_config(training: TrainingSettings) -> TrainingSettings:
    """The training section as one run uses it, refused when no run could train it.

    Shared-backbone mode keeps the backbone frozen (no phase 2), so every attribute's network keeps the
    same base and batch inference runs it once per image for all of them (models.inference).
    """
    config = training
    if config.shared_backbone and config.unfrozen_epochs:
        config = dataclasses.replace(config, unfrozen_epochs=0)
    if config.frozen_epochs + config.unfrozen_epochs < 1:
        raise ValueError("training needs frozen_epochs + unfrozen_epochs >= 1")
    if config.head_init not in ("random", "probe"):
        raise ValueError(f"head_init must be random or probe, got {config.head_init!r}")
    if config.head_init == "probe" and (config.dense_units or not config.probe):
        raise ValueError("head_init: probe needs a linear head (dense_units: 0) and probe: true")
    config.input_size()  # a per-backbone image_size that does not name this backbone fails here, not mid-run
    return config


def recipe_record(config: TrainingSettings) -> dict[str, Any]:
    """The run's recipe: the training section without its :data:`PUBLISH_KEYS`."""
    return {key: value for key, value in config.as_dict().items() if key not in PUBLISH_KEYS}


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
            "[%s] %s epoch %d/%d: loss %.3f acc %.3f val_acc %.3f (%.1fs)",
            self.label,
            self.phase,
            epoch + 1,
            self.epochs,
            row.get("loss", float("nan")),
            row.get("accuracy", float("nan")),
            row.get("val_accuracy", float("nan")),
            row["seconds"],
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
def learning_rate(peak: float, config: TrainingSettings, epochs: int, steps_per_epoch: int):
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


def compile_for(model: keras.Model, peak: float, config: TrainingSettings, epochs: int, examples: int) -> None:
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
    model: keras.Model, arrays: SplitArrays, config: TrainingSettings, cut: str | None, mirror: bool
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


@dataclass(frozen=True)
class PhaseFit:
    """How one phase fits, besides the network and its data: the recipe, the class weights, the
    callbacks, and where an interrupted phase resumes (``initial_epoch`` and the checkpoint's
    ``optimizer_state``, models.checkpoint). ``history`` (the run's epoch rows) lets a resumed phase 2
    keep counting its patience."""

    config: TrainingSettings
    class_weight: dict[int, float]
    callbacks: list[keras.callbacks.Callback]
    initial_epoch: int = 0
    optimizer_state: dict[str, np.ndarray] | None = None
    history: list[dict] = field(default_factory=list)


def train_head_on_features(
    model: keras.Model, train: SplitArrays | FrozenPass, validation: SplitArrays | FrozenPass, fit: PhaseFit
) -> None:
    """Phase 1: the backbone is frozen, so the head is fitted on features computed once.

    ``train``/``validation``: FrozenPass results (their pooled ``features``, train with mirrors when
    computed), or SplitArrays whose images are run through the frozen backbone here."""
    config = fit.config
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
    if fit.optimizer_state:
        restore_optimizer(head.optimizer, head.trainable_variables, fit.optimizer_state)
    head.fit(
        train_x,
        one_hot(train_y, num_classes),
        validation_data=(validation.pooled_features(), one_hot(validation.labels, num_classes)),
        initial_epoch=fit.initial_epoch,
        epochs=config.frozen_epochs,
        batch_size=config.batch_size,
        class_weight=fit.class_weight,
        shuffle=True,
        callbacks=fit.callbacks,
        verbose=0,
    )


def augmentation(config: TrainingSettings) -> keras.Sequential:
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


def augmented_dataset(arrays: SplitArrays, config: TrainingSettings, num_classes: int) -> tf.data.Dataset:
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


def fine_tune(model: keras.Model, train: SplitArrays, validation: SplitArrays, fit: PhaseFit) -> None:
    """Phase 2 with ``unfreeze_from: all``: the whole backbone trainable on augmented images, the low
    learning rate, early stopping on validation loss."""
    config = fit.config
    set_backbone_trainable(model, True)
    num_classes = int(model.output.shape[-1])
    compile_for(model, config.finetune_learning_rate, config, config.unfrozen_epochs, len(train))
    if fit.optimizer_state:
        restore_optimizer(model.optimizer, model.trainable_variables, fit.optimizer_state)
    if fit.initial_epoch >= config.unfrozen_epochs or PatienceStop.exhausted(fit.history, UNFROZEN, config.patience):
        return
    stop = PatienceStop(fit.history, UNFROZEN, config.patience)
    model.fit(
        augmented_dataset(train, config, num_classes),
        validation_data=labelled_batches(validation.images, one_hot(validation.labels, num_classes), config.batch_size),
        initial_epoch=fit.initial_epoch,
        epochs=config.unfrozen_epochs,
        class_weight=fit.class_weight,
        callbacks=[*fit.callbacks, stop],
        shuffle=False,  # the dataset shuffles itself
        verbose=0,
    )


def fine_tune_tail(model: keras.Model, cut: str, train: FrozenPass, validation: FrozenPass, fit: PhaseFit) -> None:
    """Phase 2 with ``unfreeze_from`` naming a block: only the backbone's layers from ``cut`` on (and
    the head) train, on the activations entering them, computed once per image and mirror image
    (``train.inputs`` / ``train.mirrored``). Early stopping on validation loss as in :func:`fine_tune`."""
    config = fit.config
    set_tail_trainable(model, cut)
    _, tail, _ = split_at(model, cut)
    num_classes = int(model.output.shape[-1])
    train_x, train_y = with_mirrors(train)
    compile_for(tail, config.finetune_learning_rate, config, config.unfrozen_epochs, len(train_x))
    if fit.optimizer_state:
        restore_optimizer(tail.optimizer, tail.trainable_variables, fit.optimizer_state)
    if fit.initial_epoch >= config.unfrozen_epochs or PatienceStop.exhausted(fit.history, UNFROZEN, config.patience):
        return
    stop = PatienceStop(fit.history, UNFROZEN, config.patience)
    tail.fit(
        train_x,
        one_hot(train_y, num_classes),
        validation_data=(validation.inputs, one_hot(validation.labels, num_classes)),
        initial_epoch=fit.initial_epoch,
        epochs=config.unfrozen_epochs,
        batch_size=config.batch_size,
        class_weight=fit.class_weight,
        shuffle=True,
        callbacks=[*fit.callbacks, stop],
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


def use_mixed_precision(config: TrainingSettings) -> bool:
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
    config: TrainingSettings,
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
        image_size=config.input_size(),
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
    store: ObjectStore, attribute: str, version: str, training: TrainingSettings, classes: tuple[str, ...]
) -> dict[str, Any]:
    """Train, evaluate and save the network of one attribute by the ``training`` section; returns (and
    writes) its metrics.

    Resumable and idempotent: an interrupted run of the same version continues from its last
    checkpointed epoch (models.checkpoint); a version that already has its model and metrics is not
    trained again (its metrics are returned).
    """
    if store.exists(model_file_key(attribute, version)) and store.exists(model_metrics_key(attribute, version)):
        logger.info("[%s %s] already trained; keeping %s", attribute, version, model_file_key(attribute, version))
        return store.read_json(model_metrics_key(attribute, version))
    config = run_config(training)
    previous_policy = keras.mixed_precision.global_policy().name
    mixed = use_mixed_precision(config)
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _train(AttributeRun(store, attribute, version, config, classes, mixed))
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


# -- one attribute's run, phase by phase --------------------------------------------------------------
@dataclass(frozen=True)
class AttributeRun:
    """One attribute's training run as its phases share it: what is trained by which recipe, and the
    seconds and rates each phase adds to ``timing``."""

    store: ObjectStore
    attribute: str
    version: str
    config: TrainingSettings
    classes: tuple[str, ...]
    mixed: bool  # mixed_float16 (use_mixed_precision)
    started: float = field(default_factory=time.perf_counter)
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.attribute} {self.version}"

    def seconds_since(self, started: float) -> float:
        return round(time.perf_counter() - started, 2)


@dataclass(frozen=True)
class CachedPasses:
    """The frozen part's output, computed once per image for phase 1, the probe and a top-blocks
    phase 2: ``cut`` is where that phase's tail starts (None: phase 2, if any, trains the whole
    backbone)."""

    cut: str | None
    train: FrozenPass
    validation: FrozenPass


@dataclass(frozen=True)
class FittedProbe:
    """The linear probe (models.evaluation.linear_probe's result) and its attribute network."""

    fit: dict[str, Any]
    network: keras.Model


@dataclass(frozen=True)
class Trainee:
    """The network in training and what its epochs report to: the selection rule (``best``), the
    checkpoint, and the run's state (phase, epochs done, the epoch history). ``resumed``: the state and
    ``saved`` (the checkpoint's arrays: the phase's weights and the optimizer's) came from a checkpoint."""

    network: keras.Model
    best: BestWeights
    class_weight: dict[int, float]
    checkpoints: Checkpoints
    state: TrainingState
    saved: dict[str, np.ndarray]
    resumed: bool

    @property
    def resumed_phase(self) -> str | None:
        return self.state.phase if self.resumed else None

    @property
    def history(self) -> list[dict]:
        return self.state.history

    def frozen_epochs_done(self, config: TrainingSettings) -> int:
        """Phase 1's epochs already done: the checkpoint's count inside phase 1, all of them after it."""
        if self.resumed_phase == FROZEN:
            return self.state.epochs_done
        return config.frozen_epochs if self.resumed else 0

    def phase_fit(self, run: AttributeRun, phase: str, epochs: int) -> PhaseFit:
        """``phase``'s fit: its callbacks (log line and history row, selection, checkpoint), continued
        from the checkpoint when the run resumes inside that phase."""
        inside = self.resumed_phase == phase
        return PhaseFit(
            run.config,
            self.class_weight,
            [
                EpochLog(run.label, phase, epochs, self.history),
                self.best,
                EpochCheckpoint(self.checkpoints, self.state, self.network, phase, self.best),
            ],
            initial_epoch=self.state.epochs_done if inside else 0,
            optimizer_state=self.saved if inside else None,
            history=self.history,
        )


@dataclass(frozen=True)
class Selection:
    """What is published (the network, or the probe when the network does not beat it on validation),
    with the test metrics of both candidates."""

    published: str  # "network" | "probe"
    model: keras.Model
    val_accuracy: float
    test: dict[str, Any]
    network_test: dict[str, Any]
    probe_record: dict[str, Any] | None


def _train(run: AttributeRun) -> dict[str, Any]:
    """The run's phases in order (see the module docstring); returns the metrics it wrote."""
    keras.utils.set_random_seed(run.config.seed)
    splits = load_splits(run)
    network = build_network(run)
    passes = frozen_passes(run, network, splits)
    probe = fit_probe(run, network, passes) if run.config.probe else None
    trainee = start_or_resume(run, network, splits)
    train_head_phase(run, trainee, passes)
    fine_tune_phase(run, trainee, splits, passes)
    trainee.best.restore()
    selection = select_published(run, trainee, probe, splits)
    train_seconds = round(time.perf_counter() - run.started, 1)
    log_outcome(run, trainee.best, selection, train_seconds)
    metrics = metrics_record(run, splits, trainee, selection, train_seconds)
    save_run(run, selection.model, metrics)
    trainee.checkpoints.clear()
    return metrics


def load_splits(run: AttributeRun) -> dict[str, SplitArrays]:
    """The attribute's train/validation/test images, decoded; refused when they cannot train (the
    images left out are logged one by one)."""
    frame = labelled_items(run.store, run.attribute, run.classes)
    splits = {
        name: load_arrays(run.store, frame[frame["split"] == name], run.config.input_size(), fit=run.config.image_fit)
        for name in SPLITS
    }
    run.timing["decode_seconds"] = run.seconds_since(run.started)
    check_trainable(run.attribute, splits, run.classes)
    train, validation, test = splits["train"], splits["validation"], splits["test"]
    logger.info(
        "[%s] images train/validation/test: %d/%d/%d%s",
        run.label,
        len(train),
        len(validation),
        len(test),
        " (mixed_float16)" if run.mixed else "",
    )
    for name, arrays in splits.items():
        for rejected in arrays.rejected:
            logger.info(
                "[%s] %s: left out %s (%s): %s (%s)",
                run.label,
                name,
                rejected["item_id"],
                rejected["image_key"],
                rejected["reason"],
                rejected.get("detail", ""),
            )
    return splits


def build_network(run: AttributeRun) -> keras.Model:
    config = run.config
    return build_attribute_network(
        len(run.classes),
        backbone=config.backbone,
        weights=config.weights,
        image_size=config.input_size(),
        dense_units=config.dense_units,
        dropout=config.dropout,
        pooling=config.pooling,
        weight_decay=config.weight_decay,
        name=f"{run.attribute}_network",
    )


def frozen_passes(run: AttributeRun, network: keras.Model, splits: dict[str, SplitArrays]) -> CachedPasses:
    """The frozen part run once over train (with mirrors when ``mirror_augment``) and validation: pooled
    features for phase 1 and the probe, and with a top-blocks phase 2 the activations entering the tail.
    The tail is cut only where the backbone will not change before phase 2 (phase 1 never changes it),
    so one pass serves both phases."""
    config = run.config
    cut = backbone_cut(network, config.unfreeze_prefix()) if config.unfrozen_epochs > 0 else None
    started = time.perf_counter()
    set_backbone_trainable(network, False)
    train_pass = frozen_pass(network, splits["train"], config, cut, config.mirror_augment)
    val_pass = frozen_pass(network, splits["validation"], config, cut, False)
    run.timing["frozen_pass_seconds"] = run.seconds_since(started)
    run.timing["frozen_pass_images_per_second"] = round(
        (train_pass.images + val_pass.images) / max(run.timing["frozen_pass_seconds"], 1e-9), 1
    )
    return CachedPasses(cut, train_pass, val_pass)


def fit_probe(run: AttributeRun, network: keras.Model, passes: CachedPasses) -> FittedProbe:
    """The linear probe on the cached pooled features, as a network of its own; with ``head_init:
    probe`` the network's head starts as it."""
    started = time.perf_counter()
    fitted = linear_probe(
        passes.train.pooled_features(),
        passes.train.labels,
        passes.validation.pooled_features(),
        passes.validation.labels,
        len(run.classes),
    )
    backbone_weights = network.get_layer(BACKBONE_LAYER).get_weights()
    probe_model = probe_network(network, fitted, run.config, run.classes, backbone_weights, f"{run.attribute}_probe")
    run.timing["probe_seconds"] = run.seconds_since(started)
    logger.info("[%s] linear probe: L2 %s, val_acc %.3f", run.label, fitted["l2"], fitted["val_accuracy"])
    if run.config.head_init == "probe":
        init_head_from_probe(network, fitted)
    return FittedProbe(fitted, probe_model)


def start_or_resume(run: AttributeRun, network: keras.Model, splits: dict[str, SplitArrays]) -> Trainee:
    """The trainee, from the run's checkpoint when it has one of the same recipe. Applied only now: the
    frozen pass and the probe need the backbone as it was built."""
    record = recipe_record(run.config)
    best = BestWeights(network, run.config.selection_margin, len(splits["validation"]))
    checkpoints = Checkpoints(run.store, run.attribute, run.version)
    resumed = checkpoints.load(record)
    state, saved = (resumed[0], resumed[1]) if resumed else (TrainingState(config=record), {})
    if resumed:
        resume_weights(network, best, state, resumed[1], resumed[2], checkpoints.load_frozen_best())
        logger.info("[%s] resuming from the checkpoint after %s epoch %s", run.label, state.phase, state.epochs_done)
    class_weight = balanced_class_weights(splits["train"].labels, len(run.classes))
    return Trainee(network, best, class_weight, checkpoints, state, saved, resumed is not None)


def train_head_phase(run: AttributeRun, trainee: Trainee, passes: CachedPasses) -> None:
    """Phase 1 on the cached pooled features, unless the checkpoint has it done. Without its epochs a
    random head still gets its feature standardisation (a head started as the probe has the probe's)."""
    config = run.config
    started = time.perf_counter()
    if trainee.frozen_epochs_done(config) < config.frozen_epochs:
        trainee.best.phase = FROZEN
        train_head_on_features(
            trainee.network, passes.train, passes.validation, trainee.phase_fit(run, FROZEN, config.frozen_epochs)
        )
    elif config.head_init != "probe" and trainee.resumed_phase in (None, FROZEN):
        trainee.network.get_layer("feature_norm").adapt_to(passes.train.pooled_features())
    run.timing["phase1_seconds"] = run.seconds_since(started)


def fine_tune_phase(run: AttributeRun, trainee: Trainee, splits: dict[str, SplitArrays], passes: CachedPasses) -> None:
    """Phase 2 (when it has epochs), from phase 1's kept epoch, not its last one: the top blocks on the
    cached activations, or the whole backbone on augmented images."""
    config = run.config
    if config.unfrozen_epochs <= 0:
        return
    if trainee.resumed_phase != UNFROZEN:
        trainee.best.restore(FROZEN)
        trainee.checkpoints.save_frozen_best(trainee.best, trainee.network)
    trainee.best.phase = UNFROZEN
    started = time.perf_counter()
    fit = trainee.phase_fit(run, UNFROZEN, config.unfrozen_epochs)
    train = splits["train"]
    if passes.cut is None:
        fine_tune(trainee.network, train, splits["validation"], fit)
        per_epoch = len(train)
    else:
        fine_tune_tail(trainee.network, passes.cut, passes.train, passes.validation, fit)
        per_epoch = len(train) * (2 if config.mirror_augment else 1)
    run.timing["phase2_seconds"] = run.seconds_since(started)
    rows = [row for row in trainee.history if row.get("phase") == UNFROZEN]
    seconds = sum(row["seconds"] for row in rows)
    run.timing["phase2_images_per_second"] = round(per_epoch * len(rows) / max(seconds, 1e-9), 1) if rows else 0.0


def select_published(
    run: AttributeRun, trainee: Trainee, probe: FittedProbe | None, splits: dict[str, SplitArrays]
) -> Selection:
    """The network (its kept weights already restored), unless the probe is at least as good on
    validation by :func:`~models.evaluation.beats`; the test split is read once for each candidate."""
    test, batch_size, best = splits["test"], run.config.batch_size, trainee.best
    network_test = classification_metrics(
        test.labels, predict_classes(trainee.network, test.images, batch_size), run.classes
    )
    network = Selection("network", trainee.network, best.best_accuracy, network_test, network_test, None)
    if probe is None:
        return network
    probe_test = classification_metrics(
        test.labels, predict_classes(probe.network, test.images, batch_size), run.classes
    )
    probe_record = {
        "l2": probe.fit["l2"],
        "val_accuracy": probe.fit["val_accuracy"],
        "val_loss": round(probe.fit["val_loss"], 4),
        "grid": probe.fit["grid"],
        "test": probe_test,
    }
    validation_images = len(splits["validation"])
    if beats(best.best_accuracy, probe.fit["val_accuracy"], validation_images, run.config.selection_margin):
        return dataclasses.replace(network, probe_record=probe_record)
    return Selection("probe", probe.network, probe.fit["val_accuracy"], probe_test, network_test, probe_record)


def log_outcome(run: AttributeRun, best: BestWeights, selection: Selection, train_seconds: float) -> None:
    probe = selection.probe_record
    probe_line = (
        f"; probe: val_acc {probe['val_accuracy']:.3f}, test acc {probe['test']['accuracy']:.3f}"
        if probe is not None
        else ""
    )
    logger.info(
        "[%s] network: best val_acc %.3f (%s epoch %s), test acc %.3f%s; published: %s; %ss",
        run.label,
        best.best_accuracy,
        best.best_phase,
        best.best_epoch,
        selection.network_test["accuracy"],
        probe_line,
        selection.published,
        train_seconds,
    )


def metrics_record(
    run: AttributeRun, splits: dict[str, SplitArrays], trainee: Trainee, selection: Selection, train_seconds: float
) -> dict[str, Any]:
    """The run's metrics.json (without ``artifacts``, which :func:`save_run` adds)."""
    config, classes, best, test = run.config, run.classes, trainee.best, splits["test"]
    return {
        "attribute": run.attribute,
        "version": run.version,
        "classes": list(classes),
        "image_size": config.input_size(),
        "backbone": config.backbone,
        "weights": config.weights,
        "pooling": config.pooling,
        "config": recipe_record(config),
        "counts": {
            name: {"images": len(arrays), "skipped": arrays.skipped, "per_class": class_counts(arrays, classes)}
            for name, arrays in splits.items()
        },
        "rejected": rejection_record(splits),
        "class_weight": {classes[c]: round(w, 4) for c, w in trainee.class_weight.items()},
        "history": trainee.history,
        "best": best.record(),
        "published": selection.published,
        "val_accuracy": selection.val_accuracy,
        "test": selection.test,
        "network": {"val_accuracy": best.best_accuracy, "test": selection.network_test},
        "probe": selection.probe_record,
        "test_split": {"images": len(test), "fingerprint": split_fingerprint(test)},
        "timing": run.timing,
        "mixed_precision": run.mixed,
        "train_seconds": train_seconds,
        "model_key": model_file_key(run.attribute, run.version),
    }


def save_run(run: AttributeRun, published_model: keras.Model, metrics: dict[str, Any]) -> None:
    """The published model, its evaluation pictures and model card, then metrics.json: last, as its
    presence means "trained"."""
    save_model(run.store, model_file_key(run.attribute, run.version), published_model)
    metrics["artifacts"] = write_evaluation(run.store, metrics)
    run.store.write_json(model_metrics_key(run.attribute, run.version), metrics)


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
