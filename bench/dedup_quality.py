"""Near-duplicate quality on real photos: precision and recall per transform, false positives among
distinct photos, over a grid of thresholds (the shipped ones from config/settings.yaml marked ``*``).

Every photo of ../shared/data/clothing-dataset-small (up to ``--limit``) is hashed as it is and as
transformed copies (resize to half, JPEG quality 40, a 6 % border crop, a horizontal flip, +25 %
brightness). For transform T, a copy T(i) is a true positive when it is flagged as a near duplicate of
its own original i (recall = TP / photos), and every flag between T(i) and another original j is a
false positive (precision = TP / (TP + FP)). Distinct photos: the share of pairs of different originals
that are flagged (the dataset may hold a few real duplicates; those count against us here).

A pair is flagged when pHash <= p, dHash <= d and, with a MAD column, the 16x16 colour thumbnails'
mean absolute difference <= the configured ``thumbnail_max_mad`` (pipeline.dedup's three checks).

    python -m bench.dedup_quality [--limit 1500] [--processes 2]
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.dedup import colour_thumbnail  # noqa: E402
from pipeline.hash_index import MultiIndexHashing  # noqa: E402
from pipeline.hashing import hamming, perceptual_hashes  # noqa: E402
from pipeline.settings import REPO_ROOT, get_settings  # noqa: E402

DATASET = REPO_ROOT.parent / "shared" / "data" / "clothing-dataset-small"
# (pHash, dHash) thresholds swept; the configured pair is added when absent.
GRID = [(2, 6), (4, 8), (6, 10), (8, 12), (10, 14), (12, 16)]


def _resize(image: Image.Image) -> Image.Image:
    return image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BILINEAR)


def _jpeg(image: Image.Image) -> Image.Image:
    import io

    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=40)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _crop(image: Image.Image) -> Image.Image:
    dx, dy = int(image.width * 0.06), int(image.height * 0.06)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resize": _resize,
    "jpeg": _jpeg,
    "crop": _crop,
    "flip": ImageOps.mirror,
    "brightness": lambda image: ImageEnhance.Brightness(image).enhance(1.25),
}


@dataclass(frozen=True)
class Hashed:
    """pHash, dHash and thumbnails of the originals and of each transform's copies (row i = photo i)."""

    phash: dict[str, np.ndarray]
    dhash: dict[str, np.ndarray]
    thumbnails: dict[str, np.ndarray]


def hash_photo(path: str) -> dict[str, tuple[int, int, np.ndarray]]:
    """name ("original" or a transform) -> (pHash, dHash, thumbnail) of one photo."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    out = {}
    for name, transform in [("original", lambda im: im), *TRANSFORMS.items()]:
        copy = transform(image)
        phash, dhash = perceptual_hashes(copy)
        out[name] = (phash, dhash, colour_thumbnail(copy))
    return out


def hash_photos(paths: list[Path], processes: int) -> Hashed:
    if processes > 1:
        with Pool(processes) as pool:
            rows = pool.map(hash_photo, [str(p) for p in paths], chunksize=16)
    else:
        rows = [hash_photo(str(p)) for p in paths]
    names = ["original", *TRANSFORMS]
    return Hashed(
        phash={n: np.array([r[n][0] for r in rows], dtype=np.uint64) for n in names},
        dhash={n: np.array([r[n][1] for r in rows], dtype=np.uint64) for n in names},
        thumbnails={n: np.stack([r[n][2] for r in rows]).astype(np.int16) for n in names},
    )


@dataclass(frozen=True)
class Candidates:
    """Pairs within the largest pHash radius of the grid, with all three distances."""

    a: np.ndarray
    b: np.ndarray
    phash: np.ndarray
    dhash: np.ndarray
    mad: np.ndarray

    def flagged(self, p: int, d: int, mad: float | None) -> np.ndarray:
        keep = (self.phash <= p) & (self.dhash <= d)
        return keep & (self.mad <= mad) if mad is not None else keep


def _candidates(a: np.ndarray, b: np.ndarray, dist: np.ndarray, hashed: Hashed, left: str, right: str) -> Candidates:
    mad = np.abs(hashed.thumbnails[left][a] - hashed.thumbnails[right][b]).mean(axis=(1, 2, 3))
    return Candidates(a, b, dist, hamming(hashed.dhash[left][a], hashed.dhash[right][b]), mad)


def transform_candidates(hashed: Hashed, transform: str, radius: int) -> Candidates:
    """(copy row, original row) pairs: copies of ``transform`` queried against all originals."""
    q, i, d = MultiIndexHashing(hashed.phash["original"]).query(hashed.phash[transform], radius)
    return _candidates(q, i, d, hashed, transform, "original")


def distinct_candidates(hashed: Hashed, radius: int) -> Candidates:
    i, j, d = MultiIndexHashing(hashed.phash["original"]).pairs_within(radius)
    return _candidates(i, j, d, hashed, "original", "original")


@dataclass(frozen=True)
class Quality:
    recall: dict[str, float]
    precision: dict[str, float]
    false_positive_pairs: int
    false_positive_rate: float


def quality(hashed: Hashed, per_transform: dict[str, Candidates], distinct: Candidates, p: int, d: int,
            mad: float | None) -> Quality:
    n = len(hashed.phash["original"])
    recall, precision = {}, {}
    for name, cands in per_transform.items():
        flagged = cands.flagged(p, d, mad)
        true = flagged & (cands.a == cands.b)
        tp, fp = int(true.sum()), int((flagged & ~true).sum())
        recall[name] = tp / n
        precision[name] = tp / (tp + fp) if tp + fp else float("nan")
    fp_pairs = int(distinct.flagged(p, d, mad).sum())
    return Quality(recall, precision, fp_pairs, fp_pairs / max(1, n * (n - 1) // 2))


def photo_paths(limit: int | None) -> list[Path]:
    paths = sorted(DATASET.glob("*/*/*.jpg"))
    return paths[:limit] if limit else paths


def evaluate(paths: list[Path], grid: list[tuple[int, int]], mad: float, processes: int) -> list[tuple[int, int, float | None, Quality]]:
    hashed = hash_photos(paths, processes)
    radius = max(p for p, _ in grid)
    per_transform = {name: transform_candidates(hashed, name, radius) for name in TRANSFORMS}
    distinct = distinct_candidates(hashed, radius)
    return [(p, d, m, quality(hashed, per_transform, distinct, p, d, m)) for p, d in grid for m in (mad, None)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1500, help="photos to use (0: all 3,781)")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    if not DATASET.exists():
        print(f"{DATASET} is absent", file=sys.stderr)
        return 2
    curation = get_settings().curation
    shipped = (int(curation["phash_max_distance"]), int(curation["dhash_max_distance"]))
    mad = float(curation["thumbnail_max_mad"])
    grid = sorted(set(GRID) | {shipped})
    paths = photo_paths(args.limit or None)
    rows = evaluate(paths, grid, mad, args.processes)
    n = len(paths)
    print(f"{n} photos, {n * (n - 1) // 2:,} pairs of distinct photos; shipped thresholds marked *")
    header = "   p   d   mad  " + "  ".join(f"{t:>10}" for t in TRANSFORMS) + "   FP pairs  FP rate"
    print("recall (precision) per transform")
    print(header)
    for p, d, m, q in rows:
        mark = "*" if (p, d) == shipped and m is not None else " "
        cells = "  ".join(f"{q.recall[t]:.3f}({q.precision[t]:.2f})" for t in TRANSFORMS)
        print(f"{mark}{p:3d} {d:3d} {('%.1f' % m) if m is not None else '  - '}  {cells}  {q.false_positive_pairs:9d}  "
              f"{q.false_positive_rate:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
