"""Backbone forward-pass throughput on CPU: VGG16 vs EfficientNet-Lite0, images per second, in one run.

Each backbone is built as the attribute networks use it (``models.network.build_backbone``: no top,
the 4-D feature map) with random weights (weights do not change the speed), and fed batches of random
RGB 0-255 images already preprocessed (the timing is the backbone alone). For every image size the
backbones take turns, ``--rounds`` times, so that load from other processes hits both alike; a round is
one warm-up batch (graph tracing) and ``--batches`` timed ``predict_on_batch`` calls. The reported rate
is the median over all timed batches (the fastest batch beside it); the analytic multiply-adds of the
convolutions and dense layers per image (GMACs; the "FLOPs" of the model papers: VGG16 15.5, Lite0 0.4)
are printed too.

    python -m bench.backbone_throughput [--sizes 128 224] [--batch 32] [--batches 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

BACKBONES = ("vgg16", "efficientnet_lite0")


def conv_macs(model) -> int:
    """Multiply-adds of every Conv2D, DepthwiseConv2D and Dense layer, per image (nested models too)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += conv_macs(layer)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c_out * kh * kw * layer.kernel.shape[2]
        elif isinstance(layer, keras.layers.Dense):
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from models.network import build_backbone, get_backbone

    print(
        f"TensorFlow {tf.__version__}, TF_ENABLE_ONEDNN_OPTS={os.environ['TF_ENABLE_ONEDNN_OPTS']}, "
        f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}, batch {args.batch}"
    )
    rng = np.random.default_rng(0)
    results: dict[tuple[int, str], float] = {}
    for size in args.sizes:
        raw = rng.integers(0, 256, size=(args.batch, size, size, 3)).astype("float32")
        models, inputs, times = {}, {}, {}
        for name in args.backbones:
            models[name] = build_backbone(name, None, size)
            inputs[name] = np.asarray(get_backbone(name).preprocess(raw.copy()), dtype="float32")
            times[name] = []
        for _ in range(args.rounds):
            for name in args.backbones:
                models[name].predict_on_batch(inputs[name])  # warm-up
                for _ in range(args.batches):
                    started = time.perf_counter()
                    models[name].predict_on_batch(inputs[name])
                    times[name].append(time.perf_counter() - started)
        for name in args.backbones:
            rate = args.batch / statistics.median(times[name])
            best = args.batch / min(times[name])
            results[(size, name)] = rate
            print(
                f"{size:4d} px  {name:<19} {rate:8.1f} images/s (best batch {best:7.1f})  "
                f"{conv_macs(models[name]) / 1e9:6.2f} GMACs/image  {models[name].count_params() / 1e6:5.2f}M weights"
            )
        if "vgg16" in args.backbones and "efficientnet_lite0" in args.backbones:
            ratio = results[(size, "efficientnet_lite0")] / results[(size, "vgg16")]
            macs = conv_macs(models["vgg16"]) / conv_macs(models["efficientnet_lite0"])
            print(
                f"{size:4d} px  efficientnet_lite0 / vgg16: {ratio:.1f}x the images/s ({macs:.0f}x fewer multiply-adds)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
