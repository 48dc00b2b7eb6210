"""Resumable training: a process killed mid-epoch resumes from its last checkpoint, not from scratch."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from fashion_synthetic import write_dataset

from models.train import PatienceStop, train_attribute
from pipeline.store_layout import model_checkpoint_prefix
from tests.conftest import REPO_ROOT

CLASSES = ("checkered", "striped", "floral", "graphic", "solid")

# Runs train_attribute; once the first batch of the second unfrozen epoch has updated the weights (so the
# in-memory model is past its last checkpoint, and that epoch is neither validated nor checkpointed), it
# writes a marker and stalls like a long batch. The test kills it from outside with SIGKILL there, as an
# OOM kill or a lost worker would end it.
TRAINING_RUN = """
import os, sys, json, time, pathlib
sys.path.insert(0, {repo!r})
from fashionnet_tools.console import configure_logging
configure_logging()  # the progress lines on stdout, as a tool shows them
import models.train as train
from pipeline.settings import TrainingSettings, build_section
from pipeline.storage import ObjectStore

begin = train.EpochLog.on_epoch_begin
def on_epoch_begin(self, epoch, logs=None):
    self.current_epoch = epoch
    return begin(self, epoch, logs)
def on_train_batch_end(self, batch, logs=None):
    if self.phase == "unfrozen" and self.current_epoch == 1 and batch == 0:
        pathlib.Path({marker!r}).write_text(str(os.getpid()))
        time.sleep(600)
train.EpochLog.on_epoch_begin = on_epoch_begin
train.EpochLog.on_train_batch_end = on_train_batch_end
training = build_section(TrainingSettings, json.loads({config!r}), "training")
train.train_attribute(ObjectStore({store!r}), "pattern", "v1", training, tuple(json.loads({classes!r})))
"""


@pytest.fixture
def config(tiny_training):
    return dataclasses.replace(tiny_training, frozen_epochs=3, unfrozen_epochs=3, patience=5)


def test_a_training_killed_mid_epoch_resumes_from_its_last_epoch(file_store, config, capsys, tmp_path, console_logging):
    write_dataset(file_store, per_class=10, kinds=("striped", "solid"))
    marker = tmp_path / "mid-epoch"
    script = TRAINING_RUN.format(
        repo=str(REPO_ROOT),
        store=file_store.uri,
        config=json.dumps(config.as_dict()),
        classes=json.dumps(CLASSES),
        marker=str(marker),
    )
    log = tmp_path / "training.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=REPO_ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"training never reached the second unfrozen epoch:\n{log.read_text()[-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)  # mid-epoch, from outside
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert proc.returncode == -signal.SIGKILL, output[-3000:]
    assert "unfrozen epoch 1/3" in output and "unfrozen epoch 2/3" not in output  # killed inside epoch 2
    prefix = model_checkpoint_prefix("pattern", "v1")
    state = file_store.read_json(f"{prefix}/state.json")
    assert (state["phase"], state["epochs_done"]) == ("unfrozen", 1)  # the last complete epoch, nothing after
    assert not file_store.exists("models/pattern/v1/metrics.json") and not file_store.exists(
        "models/pattern/v1/model.keras"
    )

    metrics = train_attribute(file_store, "pattern", "v1", config, CLASSES)
    out = capsys.readouterr().out
    assert "resuming from the checkpoint after unfrozen epoch 1" in out
    assert "frozen epoch 1/3" not in out and "unfrozen epoch 1/3" not in out  # nothing done twice
    assert "unfrozen epoch 2/3" in out and "unfrozen epoch 3/3" in out
    assert [(r["phase"], r["epoch"]) for r in metrics["history"]] == [
        ("frozen", 1),
        ("frozen", 2),
        ("frozen", 3),
        ("unfrozen", 1),
        ("unfrozen", 2),
        ("unfrozen", 3),
    ]
    assert metrics["history"][:4] == state["history"]  # the killed run's epochs, kept exactly as they were
    assert file_store.list(prefix) == []  # the checkpoint goes once the model is saved
    assert file_store.exists("models/pattern/v1/model.keras")

    again = train_attribute(file_store, "pattern", "v1", config, CLASSES)  # idempotent rerun
    assert "already trained" in capsys.readouterr().out and again == metrics


def test_a_checkpoint_of_another_config_is_not_resumed(file_store, config, capsys, console_logging):
    from models.checkpoint import Checkpoints, TrainingState

    write_dataset(file_store, per_class=10, kinds=("striped", "solid"))
    other = TrainingState(config={"frozen_epochs": 99}, phase="unfrozen", epochs_done=2)
    Checkpoints(file_store, "pattern", "v1").save(other, {}, None)
    metrics = train_attribute(file_store, "pattern", "v1", dataclasses.replace(config, unfrozen_epochs=1), CLASSES)
    out = capsys.readouterr().out
    assert "another training config; starting afresh" in out and "frozen epoch 1/3" in out
    assert len(metrics["history"]) == 4


@pytest.mark.parametrize(
    "accuracies, patience, exhausted",
    [
        ([], 2, False),
        ([0.5], 1, False),
        ([0.5, 0.4], 1, True),
        ([0.5, 0.6, 0.6], 2, False),
        ([0.5, 0.6, 0.6, 0.55], 2, True),
        ([0.7, 0.7, 0.7], 3, False),
    ],
)
def test_patience_is_counted_from_the_history(accuracies, patience, exhausted):
    history = [{"phase": "frozen", "val_accuracy": 0.9}] + [
        {"phase": "unfrozen", "val_accuracy": a} for a in accuracies
    ]
    assert PatienceStop.exhausted(history, "unfrozen", patience) is exhausted
