"""Resumable training: a process killed mid-epoch resumes from its last checkpoint, not from scratch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from fashion_synthetic import write_dataset
from models.checkpoint import checkpoint_prefix
from models.train import PatienceStop, train_attribute
from tests.conftest import REPO_ROOT

CLASSES = ("checkered", "striped", "floral", "graphic", "solid")

# Runs train_attribute and SIGKILLs itself when the second unfrozen epoch begins (after the first
# unfrozen epoch's checkpoint was written): the process dies in the middle of training, as an OOM
# kill or a lost worker would end it.
KILLED_RUN = """
import os, signal, sys, json
sys.path.insert(0, {repo!r})
import models.train as train
from pipeline.storage import ObjectStore

original = train.EpochLog.on_epoch_begin
def dying(self, epoch, logs=None):
    if self.phase == "unfrozen" and epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, epoch, logs)
train.EpochLog.on_epoch_begin = dying
train.train_attribute(ObjectStore({store!r}), "pattern", "v1", json.loads({config!r}), tuple(json.loads({classes!r})))
"""


@pytest.fixture
def config(tiny_training) -> dict:
    return {**tiny_training, "frozen_epochs": 3, "unfrozen_epochs": 3, "patience": 5}


def test_a_killed_training_resumes_from_its_last_epoch(file_store, config, capsys):
    write_dataset(file_store, per_class=10, kinds=("striped", "solid"))
    script = KILLED_RUN.format(repo=str(REPO_ROOT), store=file_store.uri, config=json.dumps(config),
                               classes=json.dumps(CLASSES))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    prefix = checkpoint_prefix("pattern", "v1")
    state = file_store.read_json(f"{prefix}/state.json")
    assert (state["phase"], state["epochs_done"]) == ("unfrozen", 1)
    assert not file_store.exists("models/pattern/v1/metrics.json")

    metrics = train_attribute(file_store, "pattern", "v1", config, CLASSES)
    out = capsys.readouterr().out
    assert "resuming from the checkpoint after unfrozen epoch 1" in out
    assert "frozen epoch 1/3" not in out and "unfrozen epoch 1/3" not in out  # nothing done twice
    assert "unfrozen epoch 2/3" in out and "unfrozen epoch 3/3" in out
    assert [(r["phase"], r["epoch"]) for r in metrics["history"]] == [
        ("frozen", 1), ("frozen", 2), ("frozen", 3), ("unfrozen", 1), ("unfrozen", 2), ("unfrozen", 3)]
    assert file_store.list(prefix) == []  # the checkpoint goes once the model is saved
    assert file_store.exists("models/pattern/v1/model.keras")

    again = train_attribute(file_store, "pattern", "v1", config, CLASSES)  # idempotent rerun
    assert "already trained" in capsys.readouterr().out and again == metrics


def test_a_checkpoint_of_another_config_is_not_resumed(file_store, config, capsys):
    from models.checkpoint import Checkpoints, TrainingState

    write_dataset(file_store, per_class=10, kinds=("striped", "solid"))
    other = TrainingState(config={"frozen_epochs": 99}, phase="unfrozen", epochs_done=2)
    Checkpoints(file_store, "pattern", "v1").save(other, {}, None)
    metrics = train_attribute(file_store, "pattern", "v1", {**config, "unfrozen_epochs": 1}, CLASSES)
    out = capsys.readouterr().out
    assert "another training config; starting afresh" in out and "frozen epoch 1/3" in out
    assert len(metrics["history"]) == 4


@pytest.mark.parametrize("accuracies, patience, exhausted", [
    ([], 2, False), ([0.5], 1, False), ([0.5, 0.4], 1, True), ([0.5, 0.6, 0.6], 2, False),
    ([0.5, 0.6, 0.6, 0.55], 2, True), ([0.7, 0.7, 0.7], 3, False),
])
def test_patience_is_counted_from_the_history(accuracies, patience, exhausted):
    history = [{"phase": "frozen", "val_accuracy": 0.9}] + [{"phase": "unfrozen", "val_accuracy": a} for a in accuracies]
    assert PatienceStop.exhausted(history, "unfrozen", patience) is exhausted
