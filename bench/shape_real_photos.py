"""The Shape network on real photos: ../shared/data/clothing-dataset-small's sleeve labels
(full-sleeve: longsleeve, half-sleeve: t-shirt) with the dataset's published train / validation /
test splits, trained by the production recipe (models.train.train_attribute) on a temporary store:
config/settings.yaml's training section, with only the flags given overriding it.

    python -m bench.shape_real_photos --backbone efficientnet_lite0 --weights imagenet --size 224
    python -m bench.shape_real_photos --backbone vgg16 --weights none --size 96 --frozen 20 --unfrozen 4

Prints the network's and the linear probe's validation and test accuracy and which one was published.

Prints the test accuracy, macro-F1 and confusion matrix and writes metrics.json (and the model card
and pictures) into --out when given. The classes are the taxonomy's (the photos have no sleeveless).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402,F401  (oneDNN on before TensorFlow loads)

DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "clothing-dataset-small"


def write_store(store, limit_per_split: int | None) -> dict[str, int]:
    """dataset/items.parquet and dataset/split.parquet from labels.csv rows with a sleeve label."""
    import pyarrow as pa

    rows, splits, counts = [], [], {}
    with open(DATASET / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if not row["sleeve"]:
                continue
            if limit_per_split and counts.get(row["split"], 0) >= limit_per_split:
                continue
            counts[row["split"]] = counts.get(row["split"], 0) + 1
            item_id = Path(row["path"]).stem
            key = store.put_bytes(f"images/full/{item_id}.jpg", (DATASET / row["path"]).read_bytes())
            rows.append({"item_id": item_id, "image_key": key, "shape": row["sleeve"]})
            splits.append({"item_id": item_id, "split": row["split"]})
    store.write_parquet("dataset/items.parquet", pa.Table.from_pylist(rows))
    store.write_parquet("dataset/split.parquet", pa.Table.from_pylist(splits))
    return counts


def write_errors(store, classes: tuple[str, ...], path: Path) -> None:
    """The misclassified test photos (path in the dataset, true and predicted class, confidence)."""
    from models.data import load_split
    from models.registry import load_model

    network = load_model(store, "shape", "real-photos")
    test = load_split(store, "shape", "test", classes, network.image_size)
    probabilities = network.model.predict(test.images.astype("float32"), verbose=0)
    by_stem = {}
    with open(DATASET / "labels.csv", newline="") as handle:
        by_stem = {Path(row["path"]).stem: row["path"] for row in csv.DictReader(handle)}
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", "confidence"])
        for item_id, label, row in zip(test.item_ids, test.labels, probabilities):
            if int(row.argmax()) != int(label):
                writer.writerow([by_stem[item_id], classes[label], classes[int(row.argmax())], f"{row.max():.3f}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet", help="imagenet, none, or a weights file path")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--frozen", type=int, help="frozen_epochs (default: config/settings.yaml's)")
    parser.add_argument("--unfrozen", type=int, help="unfrozen_epochs")
    parser.add_argument("--head-lr", type=float, help="head_learning_rate")
    parser.add_argument("--finetune-lr", type=float, help="finetune_learning_rate")
    parser.add_argument("--batch", type=int, help="batch_size")
    parser.add_argument("--fit", choices=("squash", "crop"), help="image_fit")
    parser.add_argument("--limit", type=int, default=0, help="at most this many photos per split (0: all)")
    parser.add_argument("--out", type=Path, help="copy metrics.json, the model card and pictures here")
    args = parser.parse_args(argv)
    if not DATASET.exists():
        print(f"{DATASET} is absent", file=sys.stderr)
        return 2

    from models.train import train_attribute
    from pipeline.settings import get_settings
    from pipeline.storage import ObjectStore

    classes = get_settings().taxonomy.classes("shape")
    overrides = {
        "frozen_epochs": args.frozen,
        "unfrozen_epochs": args.unfrozen,
        "head_learning_rate": args.head_lr,
        "finetune_learning_rate": args.finetune_lr,
        "batch_size": args.batch,
        "image_fit": args.fit,
    }
    training = dataclasses.replace(
        get_settings().training,
        backbone=args.backbone,
        weights=None if args.weights.lower() == "none" else args.weights,
        image_size=args.size,
        **{key: value for key, value in overrides.items() if value is not None},
    )
    with tempfile.TemporaryDirectory() as folder:
        store = ObjectStore(f"file://{folder}/store")
        counts = write_store(store, args.limit or None)
        print(f"photos per split: {counts}", flush=True)
        started = time.perf_counter()
        metrics = train_attribute(store, "shape", "real-photos", training, classes)
        elapsed = time.perf_counter() - started
        test = metrics["test"]
        print(
            f"\n{args.backbone} (weights {args.weights}) at {args.size} px: test accuracy {test['accuracy']:.4f}, "
            f"macro-F1 {test['macro_f1']:.4f} on {metrics['counts']['test']['images']} photos; "
            f"best {metrics['best']}; {elapsed:.0f} s"
        )
        if metrics.get("probe"):
            print(
                f"network: val {metrics['network']['val_accuracy']:.4f} test {metrics['network']['test']['accuracy']:.4f}; "
                f"probe: val {metrics['probe']['val_accuracy']:.4f} test {metrics['probe']['test']['accuracy']:.4f}; "
                f"published: {metrics['published']}; timing {metrics['timing']}"
            )
        print("confusion matrix (rows true, columns predicted):", classes)
        for name, row in zip(classes, test["confusion_matrix"]):
            print(f"  {name:12s} {row}")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            write_errors(store, classes, args.out / "test_errors.csv")
            (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
            for name in ("model_card.md", "training_curves.png", "confusion_matrix.png"):
                source = store.local_path(f"models/shape/real-photos/{name}")
                if source:
                    shutil.copy(source, args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
