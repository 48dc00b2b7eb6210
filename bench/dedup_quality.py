"""Near-duplicate quality on real photos and on the demo store: recall and precision per transform,
false positives among distinct photos and among distinct demo products, over a grid of settings (the
shipped configuration from config/settings.yaml marked ``*``).

Every photo of ../shared/data/clothing-dataset-small (up to ``--limit``) is hashed as it is and as
transformed copies (resize to half, JPEG quality 40, a 6 % border crop, a horizontal flip, +25 %
brightness). For transform T, a copy T(i) is a true positive when it is flagged as a near duplicate of
its own original i (recall = TP / photos), and every flag between T(i) and another original j is a
false positive (precision = TP / (TP + FP)). Distinct photos: the pairs of different originals that are
flagged (the dataset may hold a few real duplicates; those count against us here). Demo store: the
catalog pictures of ``--demo-seeds`` (240 products each, drawn and JPEG-encoded as the demo site does;
seed 7 is the site ``make demo`` crawls), whose flagged pairs are all false: every product is distinct,
and many share a silhouette.

A pair is flagged as pipeline.curation.dedup flags it: pHash <= p and dHash <= d, either directly or with one
image's mirror hashes against the other's hashes (``mirror``), and the thumbnail rule: ``gain`` is
:func:`pipeline.curation.dedup.thumbnail_distance` (mean absolute difference after a global gain correction)
<= t, ``raw`` the plain mean absolute difference <= t (the rule before issue 4), ``-`` no thumbnail
check. The shipped configuration is also run through pipeline.curation.dedup itself (find_near_pairs and
find_prior_matches), which must flag exactly the same pairs.

``--crop-variant`` adds the experiment of issue 4 that was not shipped: each original also hashed as
centre crops (6 % and 12 % borders), and a copy's hashes matched against those too; copies cropped by
3 %, 6 % and 10 % measure it (6 % is the stored level itself, so that column is recall by construction).

    python -m bench.dedup_quality [--limit 1500] [--processes 2] [--crop-variant]
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.curation.dedup import (  # noqa: E402
    HashedImages,
    PriorMatchQuery,
    colour_thumbnail,
    find_near_pairs,
    find_prior_matches,
    mirror_thumbnail,
    thumbnail_distance,
)
from pipeline.curation.hash_index import MultiIndexHashing  # noqa: E402
from pipeline.hashing import hamming, image_hashes  # noqa: E402
from pipeline.settings import REPO_ROOT, get_settings  # noqa: E402

DATASET = REPO_ROOT.parent / "shared" / "data" / "clothing-dataset-small"
DEMO_PRODUCTS = 240
# (pHash, dHash) thresholds swept; the configured pair is added when absent.
GRID = [(2, 6), (4, 8), (6, 10), (8, 12), (10, 14), (12, 16)]
# Thumbnail thresholds swept at the shipped (pHash, dHash).
GAIN_SWEEP = [1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
BEFORE = (6, 10, "raw", 4.0, False)  # the configuration before issue 4: no mirror, plain MAD <= 4.0


def _resize(image: Image.Image) -> Image.Image:
    return image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BILINEAR)


def _jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=40)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _crop_by(share: float) -> Callable[[Image.Image], Image.Image]:
    def crop(image: Image.Image) -> Image.Image:
        dx, dy = int(image.width * share), int(image.height * share)
        return image.crop((dx, dy, image.width - dx, image.height - dy))

    return crop


TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resize": _resize,
    "jpeg": _jpeg,
    "crop": _crop_by(0.06),
    "flip": ImageOps.mirror,
    "brightness": lambda image: ImageEnhance.Brightness(image).enhance(1.25),
}
# --crop-variant: more crop copies, and the centre crops every original is also hashed as.
CROP_COPIES: dict[str, Callable[[Image.Image], Image.Image]] = {"crop3": _crop_by(0.03), "crop10": _crop_by(0.10)}
CROP_LEVELS: dict[str, Callable[[Image.Image], Image.Image]] = {"centre6": _crop_by(0.06), "centre12": _crop_by(0.12)}


@dataclass(frozen=True)
class Hashed:
    """Hashes, mirror hashes and thumbnails of a set of images (row i = photo i)."""

    phash: np.ndarray
    dhash: np.ndarray
    phash_mirror: np.ndarray
    dhash_mirror: np.ndarray
    thumbnails: np.ndarray

    @staticmethod
    def of(rows: list[tuple[int, int, int, int, np.ndarray]]) -> Hashed:
        columns = [np.array([r[k] for r in rows], dtype=np.uint64) for k in range(4)]
        return Hashed(*columns, np.stack([r[4] for r in rows]))

    def images(self) -> HashedImages:
        return HashedImages(self.phash, self.dhash, self.phash_mirror, self.dhash_mirror, self.thumbnails)


def hash_image(image: Image.Image) -> tuple[int, int, int, int, np.ndarray]:
    return (*image_hashes(image), colour_thumbnail(image))


def hash_photo(path: str, names: tuple[str, ...]) -> dict[str, tuple[int, int, int, int, np.ndarray]]:
    """name ("original", a transform, a crop copy or level) -> hashes and thumbnail of one photo."""
    every = {"original": lambda im: im, **TRANSFORMS, **CROP_COPIES, **CROP_LEVELS}
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    return {name: hash_image(every[name](image)) for name in names}


def _hash_photo_star(args: tuple[str, tuple[str, ...]]) -> dict:
    return hash_photo(*args)


def hash_photos(paths: list[Path], names: tuple[str, ...], processes: int) -> dict[str, Hashed]:
    jobs = [(str(p), names) for p in paths]
    if processes > 1:
        with Pool(processes) as pool:
            rows = pool.map(_hash_photo_star, jobs, chunksize=16)
    else:
        rows = [hash_photo(*job) for job in jobs]
    return {name: Hashed.of([r[name] for r in rows]) for name in names}


def demo_pictures(seed: int, n: int = DEMO_PRODUCTS) -> Hashed:
    """The demo site's product pictures for ``seed`` (as fashionnet_tools.demo_store.site.build_site draws and
    encodes them), hashed."""
    from fashionnet_tools.demo_store.catalog import generate_catalog
    from fashionnet_tools.demo_store.draw import draw_garment
    from fashionnet_tools.demo_store.site import JPEG_QUALITY

    rows = []
    for product in generate_catalog(n, seed):
        picture = draw_garment(
            product.pattern, product.fabric, product.style, product.shape, random.Random(f"{seed}:{product.sku}")
        )
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=JPEG_QUALITY)
        with Image.open(io.BytesIO(buffer.getvalue())) as image:
            image.load()
            rows.append(hash_image(image))
    return Hashed.of(rows)


@dataclass(frozen=True)
class Candidates:
    """Candidate pairs (a row of the left set, b row of the right set) within the largest pHash radius,
    in one orientation each (``mirror``: one side's mirror image), with all distances."""

    a: np.ndarray
    b: np.ndarray
    phash: np.ndarray
    dhash: np.ndarray
    gain: np.ndarray
    raw: np.ndarray
    mirror: np.ndarray

    def flagged(self, p: int, d: int, rule: str, t: float | None, mirror: bool) -> set[tuple[int, int]]:
        keep = (self.phash <= p) & (self.dhash <= d)
        if rule == "gain":
            keep &= self.gain <= t
        elif rule == "raw":
            keep &= self.raw <= t
        if not mirror:
            keep &= ~self.mirror
        return set(zip(self.a[keep].tolist(), self.b[keep].tolist()))


def _oriented(
    a: np.ndarray,
    b: np.ndarray,
    pdist: np.ndarray,
    dhash_a: np.ndarray,
    dhash_b: np.ndarray,
    thumbs_a: np.ndarray,
    thumbs_b: np.ndarray,
    mirror: bool,
) -> Candidates:
    left = thumbs_a[a]
    left = mirror_thumbnail(left) if mirror else left
    right = thumbs_b[b]
    raw = np.abs(left.astype(np.int16) - right.astype(np.int16)).mean(axis=(1, 2, 3))
    return Candidates(
        a, b, pdist, hamming(dhash_a[a], dhash_b[b]), thumbnail_distance(left, right), raw, np.full(len(a), mirror)
    )


def _join(parts: list[Candidates]) -> Candidates:
    return Candidates(*(np.concatenate([getattr(p, f) for p in parts]) for f in Candidates.__dataclass_fields__))


def cross_candidates(left: Hashed, right: Hashed, radius: int) -> Candidates:
    """(left row, right row): direct, left mirrored, right mirrored."""
    index = MultiIndexHashing(right.phash)
    q, i, d = index.query(left.phash, radius)
    parts = [_oriented(q, i, d, left.dhash, right.dhash, left.thumbnails, right.thumbnails, False)]
    q, i, d = index.query(left.phash_mirror, radius)
    parts.append(_oriented(q, i, d, left.dhash_mirror, right.dhash, left.thumbnails, right.thumbnails, True))
    q, i, d = MultiIndexHashing(left.phash).query(right.phash_mirror, radius)
    flipped = _oriented(q, i, d, right.dhash_mirror, left.dhash, right.thumbnails, left.thumbnails, True)
    parts.append(
        Candidates(flipped.b, flipped.a, *(getattr(flipped, f) for f in ("phash", "dhash", "gain", "raw", "mirror")))
    )
    return _join(parts)


def self_candidates(hashed: Hashed, radius: int) -> Candidates:
    """Pairs (a, b), a < b, of one set: direct, and either one mirrored."""
    index = MultiIndexHashing(hashed.phash)
    i, j, d = index.pairs_within(radius)
    parts = [_oriented(i, j, d, hashed.dhash, hashed.dhash, hashed.thumbnails, hashed.thumbnails, False)]
    q, i, d = index.query(hashed.phash_mirror, radius)
    other = q != i
    m = _oriented(
        q[other], i[other], d[other], hashed.dhash_mirror, hashed.dhash, hashed.thumbnails, hashed.thumbnails, True
    )
    parts.append(Candidates(np.minimum(m.a, m.b), np.maximum(m.a, m.b), m.phash, m.dhash, m.gain, m.raw, m.mirror))
    return _join(parts)


Config = tuple[int, int, str, float | None, bool]  # (p, d, thumbnail rule, its threshold, mirror)


@dataclass(frozen=True)
class Quality:
    recall: dict[str, float]
    precision: dict[str, float]
    false_positive_pairs: int
    demo_false_positives: dict[int, int]


def quality(
    n: int, per_transform: dict[str, Candidates], distinct: Candidates, demo: dict[int, Candidates], config: Config
) -> Quality:
    recall, precision = {}, {}
    for name, cands in per_transform.items():
        flagged = cands.flagged(*config)
        tp = sum(1 for a, b in flagged if a == b)
        recall[name] = tp / n
        precision[name] = tp / len(flagged) if flagged else float("nan")
    return Quality(
        recall, precision, len(distinct.flagged(*config)), {seed: len(c.flagged(*config)) for seed, c in demo.items()}
    )


def pipeline_agrees(
    originals: Hashed,
    copies: dict[str, Hashed],
    demo: dict[int, Hashed],
    per_transform: dict[str, Candidates],
    distinct: Candidates,
    demo_cands: dict[int, Candidates],
    config: Config,
) -> bool:
    """pipeline.curation.dedup's own search flags exactly the pairs the grid computation flags for ``config``."""
    p, d, rule, t, _ = config
    assert rule == "gain", "the pipeline's thumbnail rule is the gain-corrected one"

    def near(h: Hashed) -> set[tuple[int, int]]:
        return set(find_near_pairs(h.phash, h.dhash, p, d, h.thumbnails, t, h.phash_mirror, h.dhash_mirror))

    ok = near(originals) == distinct.flagged(*config)
    for seed, hashed in demo.items():
        ok &= near(hashed) == demo_cands[seed].flagged(*config)
    for name, copy in copies.items():
        found = find_prior_matches(PriorMatchQuery(copy.images(), originals.images(), p, d, t))
        ok &= set(found) == per_transform[name].flagged(*config)
    return ok


def photo_paths(limit: int | None) -> list[Path]:
    paths = sorted(DATASET.glob("*/*/*.jpg"))
    return paths[:limit] if limit else paths


def configs(shipped: Config) -> list[Config]:
    p0, d0, _, t0, _ = shipped
    rows: list[Config] = [BEFORE]
    for p, d in sorted(set(GRID) | {(p0, d0)}):
        rows += [(p, d, "-", None, True), (p, d, "gain", t0, True)]
    rows += [(p0, d0, "raw", 4.0, True), (p0, d0, "gain", t0, False)]
    rows += [(p0, d0, "gain", t, True) for t in GAIN_SWEEP if t != t0]
    return list(dict.fromkeys(rows))


def evaluate(
    paths: list[Path],
    rows: list[Config],
    processes: int,
    demo_seeds: tuple[int, ...] = (7,),
    check: Config | None = None,
) -> tuple[list[tuple[Config, Quality]], bool | None]:
    """Quality of every configuration in ``rows``; with ``check``, whether pipeline.curation.dedup agrees on it."""
    hashed = hash_photos(paths, ("original", *TRANSFORMS), processes)
    demo = {seed: demo_pictures(seed) for seed in demo_seeds}
    radius = max(c[0] for c in rows)
    per_transform = {name: cross_candidates(hashed[name], hashed["original"], radius) for name in TRANSFORMS}
    distinct = self_candidates(hashed["original"], radius)
    demo_cands = {seed: self_candidates(h, radius) for seed, h in demo.items()}
    results = [(c, quality(len(paths), per_transform, distinct, demo_cands, c)) for c in rows]
    agrees = None
    if check is not None:
        agrees = pipeline_agrees(
            hashed["original"], {n: hashed[n] for n in TRANSFORMS}, demo, per_transform, distinct, demo_cands, check
        )
    return results, agrees


def crop_variant(paths: list[Path], config: Config, processes: int, demo_seeds: tuple[int, ...]) -> None:
    """The centre-crop experiment: recall for crop copies, false positives it adds."""
    p, d, rule, t, mirror = config
    names = ("original", "crop", *CROP_COPIES, *CROP_LEVELS)
    hashed = hash_photos(paths, names, processes)
    n = len(paths)
    print(f"\ncentre-crop variant (not shipped), at p={p} d={d} {rule} {t}: recall of crop copies")
    print(
        f"{'stored':>26}  "
        + "  ".join(f"{c:>7}" for c in ("crop3", "crop", "crop10"))
        + "   FP pairs (distinct photos, demo)"
    )
    demo_levels = {}
    for seed in demo_seeds:
        demo_levels[seed] = _demo_levels(seed)
    levels_seen: list[str] = []
    for level in (None, *CROP_LEVELS):
        if level is not None:
            levels_seen.append(level)
        cells = []
        for copy in ("crop3", "crop", "crop10"):
            hit: set[int] = set()
            for stored in ("original", *levels_seen):
                cands = cross_candidates(hashed[copy], hashed[stored], p)
                hit |= {a for a, b in cands.flagged(*config) if a == b}
            cells.append(f"{len(hit) / n:7.3f}")
        # New false positives: an original's full image against another original's stored centre crops.
        fp_photos = sum(
            len({(a, b) for a, b in cross_candidates(hashed["original"], hashed[lv], p).flagged(*config) if a != b})
            for lv in levels_seen
        )
        fp_demo = sum(
            len({(a, b) for a, b in cross_candidates(full, crops[lv], p).flagged(*config) if a != b})
            for full, crops in demo_levels.values()
            for lv in levels_seen
        )
        label = "full image only" if level is None else "+ centre " + "/".join(lv[6:] for lv in levels_seen) + "%"
        print(f"{label:>26}  " + "  ".join(cells) + f"   +{fp_photos} photos, +{fp_demo} demo")


def _demo_levels(seed: int) -> tuple[Hashed, dict[str, Hashed]]:
    from fashionnet_tools.demo_store.catalog import generate_catalog
    from fashionnet_tools.demo_store.draw import draw_garment
    from fashionnet_tools.demo_store.site import JPEG_QUALITY

    full, levels = [], {name: [] for name in CROP_LEVELS}
    for product in generate_catalog(DEMO_PRODUCTS, seed):
        picture = draw_garment(
            product.pattern, product.fabric, product.style, product.shape, random.Random(f"{seed}:{product.sku}")
        )
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=JPEG_QUALITY)
        with Image.open(io.BytesIO(buffer.getvalue())) as image:
            image = image.convert("RGB")
        full.append(hash_image(image))
        for name, crop in CROP_LEVELS.items():
            levels[name].append(hash_image(crop(image)))
    return Hashed.of(full), {name: Hashed.of(rows) for name, rows in levels.items()}


def shipped_config() -> Config:
    curation = get_settings().curation
    return (
        curation.phash_max_distance,
        curation.dhash_max_distance,
        "gain",
        float(curation.thumbnail_max_mad),
        True,
    )


def _describe(config: Config) -> str:
    p, d, rule, t, mirror = config
    return f"{p:3d} {d:3d} {'yes' if mirror else ' no'}  {rule:>4} {(f'{t:.1f}') if t is not None else '  - '}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1500, help="photos to use (0: all 3,781)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--demo-seeds",
        type=int,
        nargs="+",
        default=[7, 1, 3],
        help="demo catalogs of 240 products (7: the one make demo crawls)",
    )
    parser.add_argument("--crop-variant", action="store_true", help="also run the centre-crop experiment")
    args = parser.parse_args(argv)
    if not DATASET.exists():
        print(f"{DATASET} is absent", file=sys.stderr)
        return 2
    shipped = shipped_config()
    paths = photo_paths(args.limit or None)
    seeds = tuple(args.demo_seeds)
    start = time.perf_counter()
    rows, agrees = evaluate(paths, configs(shipped), args.processes, seeds, check=shipped)
    n = len(paths)
    print(
        f"{n} photos, {n * (n - 1) // 2:,} pairs of distinct photos; demo seeds {list(seeds)} "
        f"({DEMO_PRODUCTS} products, {DEMO_PRODUCTS * (DEMO_PRODUCTS - 1) // 2:,} pairs each); "
        f"shipped configuration marked *, the one before issue 4 marked b"
    )
    print("recall (precision) per transform; flagged pairs of distinct photos and of distinct demo products")
    print(
        "   p   d mirror thumb  "
        + "  ".join(f"{t:>11}" for t in TRANSFORMS)
        + "  FP photos  "
        + "  ".join(f"demo{s}" for s in seeds)
    )
    for config, q in rows:
        mark = "*" if config == shipped else "b" if config == BEFORE else " "
        cells = "  ".join(f"{q.recall[t]:.3f}({q.precision[t]:.2f})" for t in TRANSFORMS)
        demo = "  ".join(f"{q.demo_false_positives[s]:>{len(f'demo{s}')}d}" for s in seeds)
        print(f"{mark}{_describe(config)}  {cells}  {q.false_positive_pairs:9d}  {demo}")
    print(f"pipeline.curation.dedup flags the same pairs at the shipped configuration: {agrees}")
    if args.crop_variant:
        crop_variant(paths, shipped, args.processes, seeds)
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0 if agrees else 1


if __name__ == "__main__":
    sys.exit(main())
