"""Attribute-network throughput under any Keras backend, on whatever device that backend finds.

``bench/train_throughput.py`` measures the production training path (``models.train``: tf.data input,
cached features, TensorFlow's mixed precision) and so needs TensorFlow. This script measures the same
network, built by ``models.network.build_attribute_network`` (the layers training and batch inference
use), through plain Keras 3 calls that every backend runs: ``KERAS_BACKEND=tensorflow`` (the default),
``jax`` or ``torch``. It is what can be timed on a GPU machine whose image has no TensorFlow (the one
lent to this project holds JAX and PyTorch with CUDA 13; TensorFlow with its CUDA 12 libraries is
gigabytes and cannot be carried there).

Per precision policy it prints images/s of:

- the frozen pass: the backbone forward, batch after batch (what phase 1 caches once);
- phase 1: the head's epochs on cached pooled features;
- phase 2 (top blocks): the network trained on images with the backbone trainable from ``--unfreeze-from``;
- phase 2 (whole backbone): the same with every backbone layer trainable (BatchNormalization frozen);
- batch inference: the whole network on images.

Random pixels (speed does not depend on the content), random weights. The first epoch (or predict call)
of each measurement includes compilation and is reported apart; the rate is the median of the others.

    python -m bench.backend_throughput [--images 2048] [--size 224] [--batch 128] [--epochs 3]
        [--precision float32 mixed_bfloat16]
    KERAS_BACKEND=jax python -m bench.backend_throughput ...
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def device_description() -> str:
    """The accelerator the configured Keras backend will use, in words ("CPU only" when there is none)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        devices = [str(d.device_kind) for d in jax.devices() if d.platform != "cpu"]
        return f"JAX {jax.__version__}: " + (", ".join(devices) or "CPU only")
    if backend == "torch":
        import torch

        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
        return f"PyTorch {torch.__version__}: {name}"
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return f"TensorFlow {tf.__version__}: " + (", ".join(gpus) or "CPU only")


def median_rate(count: int, seconds: list[float]) -> str:
    """``count`` images per timed call: the median over all but the first call (compilation), and the first."""
    steady = seconds[1:] or seconds
    return f"{count / float(np.median(steady)):9.1f} images/s (first {seconds[0]:.1f} s, with compilation)"


def timed_calls(call: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``call`` (which must return host values, so it is synchronous)."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def epoch_seconds(model, x: np.ndarray, y: np.ndarray, batch: int, epochs: int) -> list[float]:
    """Seconds of each epoch of ``model.fit`` (Keras turns the logs into floats at each epoch's end,
    which waits for the device)."""
    import keras

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.seconds.append(time.perf_counter() - self._started)

    timer = Timer()
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[timer], shuffle=False)
    return timer.seconds


def measure(args: argparse.Namespace, precision: str, images: np.ndarray, targets: np.ndarray) -> None:
    """Print the five rates of one precision policy."""
    import keras

    from models.network import (
        backbone_cut,
        build_attribute_network,
        feature_extractor,
        head_model,
        set_backbone_trainable,
        set_tail_trainable,
    )

    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    model = build_attribute_network(
        2, backbone=args.backbone, weights=None, image_size=args.size, dense_units=0, dropout=0.0
    )
    count = len(images)
    print(f"-- {precision}", flush=True)

    features = feature_extractor(model)
    pooled: list[np.ndarray] = []
    seconds = timed_calls(lambda: pooled.append(features.predict(images, batch_size=args.batch, verbose=0)), 3)
    print(f"frozen pass (backbone forward):       {median_rate(count, seconds)}", flush=True)

    head = head_model(model)
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    seconds = epoch_seconds(head, pooled[-1].astype("float32"), targets, args.batch, args.epochs)
    print(f"phase 1 head epochs (cached features): {median_rate(count, seconds)}", flush=True)

    for label, cut in (
        (f"from {args.unfreeze_from}", backbone_cut(model, args.unfreeze_from)),
        ("whole backbone", None),
    ):
        set_tail_trainable(model, cut)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")
        seconds = epoch_seconds(model, images, targets, args.batch, args.epochs)
        print(f"phase 2 {label + ' (images):':29s} {median_rate(count, seconds)}", flush=True)

    set_backbone_trainable(model, False)
    seconds = timed_calls(lambda: model.predict(images, batch_size=args.batch, verbose=0), 3)
    print(f"batch inference (whole network):      {median_rate(count, seconds)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per training measurement (first compiles)")
    parser.add_argument("--unfreeze-from", default="block11", help="the first block phase 2 (top blocks) trains")
    parser.add_argument("--precision", nargs="+", default=["float32"], choices=PRECISIONS)
    args = parser.parse_args(argv)

    import keras

    print(
        f"Keras {keras.__version__}, backend {keras.backend.backend()}; device: {device_description()}; "
        f"{args.backbone} at {args.size} px, batch {args.batch}, {args.images} images",
        flush=True,
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    targets = np.eye(2, dtype="float32")[np.arange(args.images) % 2]
    for precision in args.precision:
        measure(args, precision, images, targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
