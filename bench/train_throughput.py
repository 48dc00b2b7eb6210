"""Training and inference throughput on whatever device TensorFlow finds (a GPU when there is one):
images/s of phase 1 (the frozen pass, then the head's epochs on cached features), phase 2 (top blocks
on cached activations, and the whole backbone on images) and batch inference, through models.train's
own functions, with the precision training would use (mixed_float16 on a GPU, float32 on CPUs).

    python -m bench.train_throughput [--images 256] [--size 224] [--batch 32] [--unfreeze-from block11]

Random pixels (throughput does not depend on the content); weights: random init unless --weights
imagenet. The first epoch of each phase includes graph tracing and is reported apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import models  # noqa: E402,F401  (oneDNN on before TensorFlow loads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="none", help="none or imagenet")
    parser.add_argument("--images", type=int, default=256, help="train images (validation: a quarter as many)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per phase (the first includes tracing)")
    parser.add_argument("--unfreeze-from", default="block11", help="the top-blocks phase 2's first block")
    parser.add_argument("--skip-full", action="store_true", help="leave out phase 2 on the whole backbone")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from models.data import SplitArrays
    from models.network import backbone_cut, build_attribute_network, predict_classes
    from models.train import (
        PhaseFit,
        fine_tune,
        fine_tune_tail,
        frozen_pass,
        train_head_on_features,
        use_mixed_precision,
    )
    from pipeline.settings import get_settings

    gpus = tf.config.list_physical_devices("GPU")
    # The settings' training section with this run's shape: no warm-up, so every epoch trains at rate.
    config = dataclasses.replace(
        get_settings().training,
        backbone=args.backbone,
        weights=None if args.weights == "none" else args.weights,
        image_size=args.size,
        batch_size=args.batch,
        dense_units=0,
        dropout=0.0,
        frozen_epochs=args.epochs,
        unfrozen_epochs=args.epochs,
        patience=args.epochs,
        lr_schedule="cosine",
        warmup_epochs=0,
        mirror_augment=True,
        finetune_learning_rate=1e-4,
        unfreeze_from=args.unfreeze_from,
    )
    mixed = use_mixed_precision(config)
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    device = ", ".join(d.name for d in gpus) or "CPU only"
    print(
        f"device: {device}; TensorFlow {tf.__version__}; precision {'mixed_float16' if mixed else 'float32'}; "
        f"{args.backbone} at {args.size} px, batch {args.batch}, {args.images} train images",
        flush=True,
    )

    rng = np.random.default_rng(0)
    n_val = max(args.batch, args.images // 4)
    images = rng.integers(0, 256, (args.images + n_val, args.size, args.size, 3), dtype=np.uint8)
    labels = (np.arange(len(images)) % 2).astype("int32")
    train = SplitArrays(images[: args.images], labels[: args.images], [str(i) for i in range(args.images)])
    validation = SplitArrays(images[args.images :], labels[args.images :], [str(i) for i in range(n_val)])
    weights = {0: 1.0, 1: 1.0}

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.seconds.append(time.perf_counter() - self._started)

    def rate(count: int, seconds: list[float]) -> str:
        steady = seconds[1:] or seconds
        return f"{count / float(np.median(steady)):8.1f} images/s (first epoch {seconds[0]:.1f} s, with tracing)"

    keras.utils.set_random_seed(0)
    model = build_attribute_network(
        2, backbone=config.backbone, weights=config.weights, image_size=args.size, dense_units=0, dropout=0.0
    )
    cut = backbone_cut(model, args.unfreeze_from)
    frozen_pass(model, validation, config, cut, False)  # warm-up: tracing of the frozen part
    started = time.perf_counter()
    train_pass = frozen_pass(model, train, config, cut, True)
    seconds = time.perf_counter() - started
    val_pass = frozen_pass(model, validation, config, cut, False)
    print(
        f"frozen pass (images + mirrors to {cut} and pooled): {train_pass.images / seconds:8.1f} images/s", flush=True
    )

    timer = Timer()
    train_head_on_features(model, train_pass, val_pass, PhaseFit(config, weights, [timer]))
    print(f"phase 1 head epochs (cached features):   {rate(2 * len(train), timer.seconds)}", flush=True)

    timer = Timer()
    fine_tune_tail(model, cut, train_pass, val_pass, PhaseFit(config, weights, [timer]))
    print(f"phase 2 from {cut} (cached activations): {rate(2 * len(train), timer.seconds)}", flush=True)

    if not args.skip_full:
        timer = Timer()
        fine_tune(model, train, validation, PhaseFit(config, weights, [timer]))
        print(f"phase 2 whole backbone (augmented images): {rate(len(train), timer.seconds)}", flush=True)

    predict_classes(model, validation.images, args.batch)  # tracing
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        predict_classes(model, train.images, args.batch)
        runs.append(time.perf_counter() - started)
    print(
        f"batch inference (whole network):        {len(train) / float(np.median(runs)):8.1f} images/s (median of 3)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
