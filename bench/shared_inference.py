"""Shared-backbone vs stacked inference over m attribute networks, with achieved GFLOP/s next to a
measured matmul peak (same run, same machine).

m VGG16 attribute networks built from the same frozen base (as phase-1 training leaves them, or
``unfrozen_epochs: 0``) are applied to the same images two ways through models.inference:
``FashionVectorizer(shared=False)`` runs every network whole (m backbone passes per image), the
default groups them and runs the backbone once, then the m heads. Both give the same vectors
(tests/models/test_inference.py checks that).

GFLOP/s: the networks' multiply-adds counted per image from their Conv2D and Dense layers (2 FLOPs
each), times images/s; the peak is the best float32 ``tf.matmul`` rate (2048 and 4096 square, best of 3).

    python -m bench.shared_inference [--networks 5] [--size 128] [--images 96] [--batch 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import models  # noqa: E402,F401  (oneDNN on before TensorFlow loads)


def network_flops(model) -> float:
    """FLOPs of one forward pass of one image: 2 x multiply-adds of every Conv2D and Dense layer."""
    import keras

    total = 0.0

    def visit(layer) -> None:
        nonlocal total
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                visit(inner)
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2.0 * height * width * kh * kw * layer.input.shape[-1] * channels_out
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * layer.input.shape[-1] * layer.units

    visit(model)
    return total


def matmul_peak_gflops(sizes: tuple[int, ...] = (2048, 4096), repeats: int = 5, trials: int = 3) -> float:
    """The best float32 ``tf.matmul`` rate over a few sizes and trials (the machine's practical peak)."""
    import tensorflow as tf

    best = 0.0
    for n in sizes:
        a = tf.random.uniform((n, n), dtype=tf.float32)
        b = tf.random.uniform((n, n), dtype=tf.float32)
        tf.matmul(a, b).numpy()  # warm-up
        for _ in range(trials):
            started = time.perf_counter()
            for _ in range(repeats):
                c = tf.matmul(a, b)
            c.numpy()
            best = max(best, 2.0 * n**3 * repeats / (time.perf_counter() - started) / 1e9)
    return best


def build_networks(count: int, size: int):
    import keras

    from models.network import build_attribute_network
    from models.registry import LoadedModel

    networks = {}
    for index in range(count):
        keras.utils.set_random_seed(0)  # the same frozen base for every attribute
        model = build_attribute_network(5, image_size=size)
        head = model.get_layer("predictions")
        rng = np.random.default_rng(index)
        head.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in head.get_weights()])
        networks[f"attribute{index}"] = LoadedModel(model, tuple(f"c{i}" for i in range(5)), size, "bench")
    return networks


def images_per_second(vectorizer, decoded: list, rounds: int) -> float:
    vectorizer.probabilities(decoded[: vectorizer.batch_size])  # warm-up: graph tracing, allocations
    started = time.perf_counter()
    for _ in range(rounds):
        vectorizer.probabilities(decoded)
    return rounds * len(decoded) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)

    from models.inference import FashionVectorizer

    networks = build_networks(args.networks, args.size)
    rng = np.random.default_rng(0)
    decoded = [{args.size: rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)} for _ in range(args.images)]
    shared = FashionVectorizer(networks, batch_size=args.batch)
    stacked = FashionVectorizer(networks, batch_size=args.batch, shared=False)
    assert len(shared.groups) == 1 and len(stacked.groups) == args.networks

    one = next(iter(networks.values())).model
    flops_network = network_flops(one)
    head_flops = flops_network - network_flops(one.get_layer("backbone"))
    flops_stacked = args.networks * flops_network
    flops_shared = flops_network + (args.networks - 1) * head_flops

    peak = matmul_peak_gflops()
    rate_stacked = images_per_second(stacked, decoded, args.rounds)
    rate_shared = images_per_second(shared, decoded, args.rounds)
    print(f"{args.networks} VGG16 attribute networks, {args.size} px, {args.images} images, batch {args.batch}")
    print(f"matmul peak (float32, best of 2048^2 and 4096^2): {peak:.1f} GFLOP/s")
    print(f"{'mode':8s} {'img/s':>8s} {'GFLOP/img':>10s} {'GFLOP/s':>9s} {'of peak':>8s}")
    for mode, rate, flops in (("stacked", rate_stacked, flops_stacked), ("shared", rate_shared, flops_shared)):
        achieved = rate * flops / 1e9
        print(f"{mode:8s} {rate:8.2f} {flops / 1e9:10.2f} {achieved:9.1f} {achieved / peak:8.2f}")
    print(f"shared / stacked: {rate_shared / rate_stacked:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
