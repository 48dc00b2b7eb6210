"""Resumable training: a checkpoint in the store after every epoch, so a killed task resumes there.

Under ``models/<attribute>/<version>/checkpoint/``:

* ``state.json``: the phase and how many of its epochs are done, the epoch history so far, the best
  epoch so far, and the training config the run was started with (a checkpoint of another config is
  ignored: resuming it would mix two recipes);
* ``current.npz``: the weights this phase changes (phase 1: the head layers only, a few MB even on
  VGG16; phase 2: every layer) and the optimizer's state (Adam's moments and step count);
* ``best.npz``: the weights of the phase's kept epoch so far (models.train.BestWeights), written when
  it moves (phase 1: head layers only; the frozen backbone is rebuilt identically from the same seed
  or weights file);
* ``frozen_best.npz``: phase 1's kept head, written when phase 2 starts from it (phase 2 may still
  fall back to it).

The checkpoint is deleted once the version's model and metrics are written.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np

from models.network import head_layer_names
from pipeline.storage import ObjectStore
from pipeline.store_layout import model_checkpoint_prefix

logger = logging.getLogger(__name__)

FROZEN, UNFROZEN = "frozen", "unfrozen"


@dataclass
class TrainingState:
    """Where a run stands: ``epochs_done`` epochs of ``phase`` are complete."""

    config: dict[str, Any]
    phase: str = FROZEN
    epochs_done: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)  # phase, epoch, val_accuracy, candidates (per phase)


def changing_layers(model: keras.Model, phase: str) -> list[str]:
    """The layers whose weights ``phase`` trains (phase 1: the head; phase 2: everything)."""
    if phase == FROZEN:
        return [name for name in head_layer_names(model) if model.get_layer(name).weights]
    return [layer.name for layer in model.layers if layer.weights]


def layer_weights(model: keras.Model, names: list[str]) -> dict[str, np.ndarray]:
    return {
        f"layer/{name}/{i}": np.asarray(w) for name in names for i, w in enumerate(model.get_layer(name).get_weights())
    }


def apply_layer_weights(model: keras.Model, arrays: dict[str, np.ndarray]) -> None:
    by_layer: dict[str, dict[int, np.ndarray]] = {}
    for key, value in arrays.items():
        kind, name, index = key.split("/")
        if kind == "layer":
            by_layer.setdefault(name, {})[int(index)] = value
    for name, weights in by_layer.items():
        model.get_layer(name).set_weights([weights[i] for i in range(len(weights))])


def optimizer_arrays(optimizer: keras.optimizers.Optimizer) -> dict[str, np.ndarray]:
    return {f"optimizer/-/{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)}


def restore_optimizer(optimizer: keras.optimizers.Optimizer, trainable: list, arrays: dict[str, np.ndarray]) -> None:
    """Give a freshly compiled optimizer the saved moments and step count."""
    saved = [arrays[f"optimizer/-/{i}"] for i in range(sum(k.startswith("optimizer/") for k in arrays))]
    if not saved:
        return
    optimizer.build(trainable)
    if len(optimizer.variables) != len(saved):
        raise ValueError(f"checkpoint optimizer has {len(saved)} variables, this one {len(optimizer.variables)}")
    for variable, value in zip(optimizer.variables, saved):
        variable.assign(value)


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    # allow_pickle is numpy's default, named so the type checker knows no key of arrays fills it
    np.savez(buffer, allow_pickle=True, **arrays)
    return buffer.getvalue()


def _arrays(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data)) as archive:
        return {key: archive[key] for key in archive.files}


class Checkpoints:
    """Reads and writes one version's checkpoint."""

    def __init__(self, store: ObjectStore, attribute: str, version: str) -> None:
        self.store, self.prefix = store, model_checkpoint_prefix(attribute, version)

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def load(self, config: dict[str, Any]) -> tuple[TrainingState, dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        """(state, current arrays, best arrays) of a run with this ``config``; None to start afresh."""
        if not self.store.exists(self.key("state.json")) or not self.store.exists(self.key("current.npz")):
            return None
        state = TrainingState(**self.store.read_json(self.key("state.json")))
        if json.dumps(state.config, sort_keys=True) != json.dumps(config, sort_keys=True):
            logger.info("[checkpoint] %s was made with another training config; starting afresh", self.prefix)
            return None
        best = _arrays(self.store.get_bytes(self.key("best.npz"))) if self.store.exists(self.key("best.npz")) else {}
        return state, _arrays(self.store.get_bytes(self.key("current.npz"))), best

    def save(self, state: TrainingState, current: dict[str, np.ndarray], best: dict[str, np.ndarray] | None) -> None:
        """Arrays first, state last: a kill between the writes leaves the previous state, which is
        still consistent with (an epoch behind) the arrays only if they are written in that order."""
        if best is not None:
            self.store.put_bytes(self.key("best.npz"), _npz(best))
        self.store.put_bytes(self.key("current.npz"), _npz(current))
        self.store.write_json(self.key("state.json"), asdict(state))

    def save_frozen_best(self, tracker: Any, network: keras.Model) -> None:
        """Phase 1's kept head (already restored into ``network``), for a phase 2 that resumes."""
        if FROZEN in getattr(tracker, "candidates", {}):
            self.store.put_bytes(
                self.key("frozen_best.npz"), _npz(layer_weights(network, changing_layers(network, FROZEN)))
            )

    def load_frozen_best(self) -> dict[str, np.ndarray]:
        key = self.key("frozen_best.npz")
        return _arrays(self.store.get_bytes(key)) if self.store.exists(key) else {}

    def clear(self) -> None:
        self.store.delete_prefix(self.prefix + "/")


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch of one phase: save the phase's weights, the optimizer and the bookkeeping.

    ``best_tracker`` is the run's BestWeights callback (listed before this one, so it has already
    seen the epoch); when this phase's candidate moved to this epoch the weights are also saved as
    ``best.npz``.
    """

    def __init__(
        self, checkpoints: Checkpoints, state: TrainingState, network: keras.Model, phase: str, best_tracker: Any
    ) -> None:
        super().__init__()
        self.checkpoints, self.state, self.network, self.phase = checkpoints, state, network, phase
        self.best_tracker = best_tracker

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        layers = changing_layers(self.network, self.phase)
        candidate = self.best_tracker.candidates.get(self.phase)
        improved = candidate is not None and candidate.epoch == epoch + 1
        self.state.phase, self.state.epochs_done = self.phase, epoch + 1
        self.state.best = self.best_tracker.record()
        current = {**layer_weights(self.network, layers), **optimizer_arrays(self.model.optimizer)}
        best = layer_weights(self.network, layers) if improved else None
        self.checkpoints.save(self.state, current, best)
