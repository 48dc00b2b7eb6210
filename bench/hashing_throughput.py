"""Hashing throughput on real JPEGs: decode + pHash + dHash (+ their mirror-image hashes) + colour
thumbnail + content sha256 per image (what curation computes for every valid image), in images per
second with 1 and 2 processes.

Two variants run back to back on the same bytes: ``before`` is the computation before issue 4
(imagehash's phash and dhash, no mirror hashes), ``now`` is :func:`pipeline.hashing.image_hashes`
(the same two hashes bit for bit, plus the mirror image's, from one greyscale conversion). Their
pHash/dHash must agree, and must agree between process counts.

    python -m bench.hashing_throughput [--limit 600] [--processes 1 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from multiprocessing import Pool
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.curation.dedup import colour_thumbnail  # noqa: E402
from pipeline.hashing import content_sha256, image_hashes  # noqa: E402
from pipeline.settings import REPO_ROOT  # noqa: E402

DATASET = REPO_ROOT.parent / "shared" / "data" / "clothing-dataset-small"


def hash_one(data: bytes) -> tuple[str, int, int]:
    """The curation hashes of one encoded image (mirror hashes included; returned: sha, pHash, dHash)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        hashes = image_hashes(image)
        colour_thumbnail(image)
    return content_sha256(data), hashes.phash, hashes.dhash


def hash_one_before(data: bytes) -> tuple[str, int, int]:
    """The same before issue 4: imagehash's phash and dhash of the RGB image, no mirror hashes."""
    import imagehash

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        rgb = image.convert("RGB")
        phash = int(str(imagehash.phash(rgb, hash_size=8)), 16)
        dhash = int(str(imagehash.dhash(rgb, hash_size=8)), 16)
        colour_thumbnail(image)
    return content_sha256(data), phash, dhash


VARIANTS = {"before": hash_one_before, "now": hash_one}


def images_per_second(blobs: list[bytes], processes: int, variant: str) -> tuple[float, list[tuple[str, int, int]]]:
    function = VARIANTS[variant]
    start = time.perf_counter()
    if processes > 1:
        with Pool(processes) as pool:
            results = pool.map(function, blobs, chunksize=32)
    else:
        results = [function(b) for b in blobs]
    return len(blobs) / (time.perf_counter() - start), results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2, help="runs per variant and process count (best kept)")
    args = parser.parse_args(argv)
    paths = sorted(DATASET.glob("*/*/*.jpg"))[: args.limit]
    if not paths:
        print(f"no JPEGs under {DATASET}", file=sys.stderr)
        return 2
    blobs = [p.read_bytes() for p in paths]  # read once: the timing is decoding and hashing, not disk
    print(f"{len(blobs)} JPEGs ({sum(map(len, blobs)) / len(blobs) / 1024:.0f} KiB average), best of {args.rounds}")
    reference = None
    for processes in args.processes:
        best = {variant: 0.0 for variant in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:  # interleaved, so both see the same machine load
                rate, results = images_per_second(blobs, processes, variant)
                best[variant] = max(best[variant], rate)
                if reference is not None and results != reference:
                    print(f"FAILED: {variant} hashes differ from the reference", file=sys.stderr)
                    return 1
                reference = results
        print(
            f"{processes} process(es): before (no mirror hashes) {best['before']:.1f} images/s, "
            f"now (with mirror hashes) {best['now']:.1f} images/s ({best['now'] / best['before'] - 1:+.0%})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
