"""Phase 1 (base frozen) with cached features vs running the frozen base every epoch: same data,
same network, same run.

* cached (what models.train does): the frozen backbone runs once per train/validation image, then the
  head trains on those features for E epochs (models.train.train_head_on_features);
* uncached (the seed's way): ``model.fit`` on the images with the backbone frozen, E epochs, the
  frozen backbone running forward on every image every epoch.

Reported: seconds for the feature pass, seconds per epoch both ways, and the total for E epochs.
Images: real photos from ../shared/data/clothing-dataset-small when present, else random pixels.

    python -m bench.phase1_caching [--images 256] [--size 128] [--epochs 5] [--backbone vgg16]
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

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "clothing-dataset-small"


def load_images(count: int, size: int) -> np.ndarray:
    from models.data import decode_image

    paths = sorted(PHOTOS.glob("train/*/*.jpg"))[:count] if PHOTOS.exists() else []
    if len(paths) < count:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return np.stack([decode_image(p.read_bytes(), size) for p in paths])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="train images (validation: a quarter as many)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)

    import keras

    from models.data import SplitArrays
    from models.network import build_attribute_network, set_backbone_trainable
    from models.train import PhaseFit, train_head_on_features
    from pipeline.settings import get_settings

    images = load_images(args.images + args.images // 4, args.size)
    labels = (np.arange(len(images)) % 5).astype("int32")
    train = SplitArrays(images[: args.images], labels[: args.images], [str(i) for i in range(args.images)])
    validation = SplitArrays(
        images[args.images :], labels[args.images :], [str(i) for i in range(len(images) - args.images)]
    )
    # The uncached run below fits at a constant 1e-3 on the images as they are: the cached one likewise.
    config = dataclasses.replace(
        get_settings().training,
        backbone=args.backbone,
        image_size=args.size,
        batch_size=args.batch,
        frozen_epochs=args.epochs,
        head_learning_rate=1e-3,
        lr_schedule="constant",
        label_smoothing=0.0,
        mirror_augment=False,
    )
    class_weight = {c: 1.0 for c in range(5)}

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[float] = []

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.epochs.append(time.perf_counter() - self._started)

    keras.utils.set_random_seed(0)
    model = build_attribute_network(5, backbone=args.backbone, image_size=args.size)
    cached_timer = Timer()
    started = time.perf_counter()
    train_head_on_features(model, train, validation, PhaseFit(config, class_weight, [cached_timer]))
    cached_total = time.perf_counter() - started
    feature_pass = cached_total - sum(cached_timer.epochs)

    keras.utils.set_random_seed(0)
    model = build_attribute_network(5, backbone=args.backbone, image_size=args.size)
    set_backbone_trainable(model, False)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    uncached_timer = Timer()
    started = time.perf_counter()
    model.fit(
        train.images.astype("float32"),
        train.labels,
        validation_data=(validation.images.astype("float32"), validation.labels),
        epochs=args.epochs,
        batch_size=args.batch,
        callbacks=[uncached_timer],
        verbose=0,
    )
    uncached_total = time.perf_counter() - started

    source = "real photos" if PHOTOS.exists() else "random pixels"
    print(
        f"{args.backbone} at {args.size} px, {len(train)} train + {len(validation)} validation images ({source}), "
        f"{args.epochs} epochs, batch {args.batch}"
    )
    print(
        f"cached:   feature pass {feature_pass:6.1f} s, then {np.mean(cached_timer.epochs):7.3f} s/epoch; "
        f"total {cached_total:6.1f} s"
    )
    print(
        f"uncached: {np.mean(uncached_timer.epochs):6.1f} s/epoch (first {uncached_timer.epochs[0]:.1f} s); "
        f"total {uncached_total:6.1f} s"
    )
    print(f"uncached / cached total: {uncached_total / cached_total:.1f}x for {args.epochs} epochs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
