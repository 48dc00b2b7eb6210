"""Hashing throughput on real JPEGs: decode + pHash + dHash + colour thumbnail + content sha256 per image
(what curation computes for every valid image), in images per second with 1 and 2 processes.

    python -m bench.hashing_throughput [--limit 600] [--processes 1 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from multiprocessing import Pool
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.dedup import colour_thumbnail  # noqa: E402
from pipeline.hashing import content_sha256, perceptual_hashes  # noqa: E402
from pipeline.settings import REPO_ROOT  # noqa: E402

DATASET = REPO_ROOT.parent / "shared" / "data" / "clothing-dataset-small"


def hash_one(data: bytes) -> tuple[str, int, int]:
    """The curation hashes of one encoded image."""
    import io

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        phash, dhash = perceptual_hashes(image)
        colour_thumbnail(image)
    return content_sha256(data), phash, dhash


def images_per_second(blobs: list[bytes], processes: int) -> tuple[float, list[tuple[str, int, int]]]:
    start = time.perf_counter()
    if processes > 1:
        with Pool(processes) as pool:
            results = pool.map(hash_one, blobs, chunksize=32)
    else:
        results = [hash_one(b) for b in blobs]
    return len(blobs) / (time.perf_counter() - start), results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    paths = sorted(DATASET.glob("*/*/*.jpg"))[:args.limit]
    if not paths:
        print(f"no JPEGs under {DATASET}", file=sys.stderr)
        return 2
    blobs = [p.read_bytes() for p in paths]  # read once: the timing is decoding and hashing, not disk
    reference = None
    for processes in args.processes:
        rate, results = images_per_second(blobs, processes)
        print(f"{len(blobs)} JPEGs ({sum(map(len, blobs)) / len(blobs) / 1024:.0f} KiB average), "
              f"{processes} process(es): {rate:.1f} images/s")
        if reference is not None and results != reference:
            print("FAILED: hashes differ between process counts", file=sys.stderr)
            return 1
        reference = results
    return 0


if __name__ == "__main__":
    sys.exit(main())
