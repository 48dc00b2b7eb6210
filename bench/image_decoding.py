"""Issue 13: the one image decoder, before and after, on each nasty input through each path.

"Before" is the code at commit ``BEFORE`` (the last commit before pipeline/images.py), loaded from git
(``git show BEFORE:<file>``, at its path then) for curation (pipeline/curation/validate.py), training/inference (models/data.py),
review thumbnails (pipeline/recommend/report.py) and the crawl (scrapers/pipelines.py); the two user-photo
functions of pipeline/recommend/ (profile.py, exclusions.py) are five lines each and copied below. "After" is the working tree.

Inputs (generated, except that the photos are a real one from shared/data/clothing-dataset-small):
a phone JPEG stored sideways with EXIF orientation 6, a PNG of 12000x12000 real pixels, a 5184x3456
JPEG, a 16-bit grey PNG, an RGBA PNG, a CMYK JPEG, a palette PNG with a transparent colour, flat red and
flat navy. Each path gives the image "as seen" (the decoded image, the network's 224x224 input, the
160 px review thumbnail, the 16x16 colour thumbnail, the stored crawl JPEG) and it is measured against
what it should be. Peak RSS for the 12000x12000 PNG is measured in a fresh child process per path.

    python -m bench.image_decoding [--repeat 7] [--skip-rss]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import types
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.hashing import hamming, image_hashes  # noqa: E402

BEFORE = "20d4e6c"  # main just before issue 13's decoder
DATASET = REPO.parent / "shared" / "data" / "clothing-dataset-small"
NETWORK = 224
LIMIT = 40_000_000  # curation.max_image_pixels in config/settings.yaml
BLANK_STD = 2.0


# -- the code before, from git ---------------------------------------------------------------------
def old_module(path: str, name: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{BEFORE}:{path}"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType(name)
    module.__file__ = str(REPO / path)
    sys.modules[name] = module
    exec(compile(source, f"{BEFORE}:{path}", "exec"), module.__dict__)
    return module


def old_user_phash_image(data: bytes) -> Image.Image:
    """pipeline.recommend.profile._image_phashes before: Image.open + load, hashed as is (no other check)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        image_hashes(image)
        return image.copy()


def old_user_thumbnail(data: bytes) -> Image.Image:
    """pipeline.recommend.exclusions.thumbnail_check's loader before: colour_thumbnail(Image.open(...))."""
    from pipeline.curation.dedup import colour_thumbnail

    with Image.open(io.BytesIO(data)) as image:
        return Image.fromarray(colour_thumbnail(image))


def crawl_harness(pipeline_class: type, data: bytes, old: bool) -> Image.Image:
    """What the crawl stores for an image response, decoded again (the store's bytes)."""
    from scrapy.http import Request, Response
    from scrapy.utils.test import get_crawler

    crawler = get_crawler(settings_dict={"IMAGES_STORE": "unused", "IMAGES_MIN_WIDTH": 32, "IMAGES_MIN_HEIGHT": 32})
    pipeline = pipeline_class.from_crawler(crawler)
    pipeline.max_image_pixels = LIMIT
    request = Request("http://shop.test/img/a")
    response = Response(request.url, body=data, request=request)
    if old:
        pipeline.check_declared_pixels(response)
    ((_, _, buffer),) = list(pipeline.get_images(response, request, None))
    with Image.open(io.BytesIO(buffer.getvalue())) as stored:
        return stored.convert("RGB")


def paths(version: str, speed: bool = False) -> dict[str, Callable[[bytes], Image.Image | None]]:
    """Path name -> bytes -> the image as that path sees it (raises when the path refuses the image).
    ``speed``: only what the path itself does (the user photo hashes path returns nothing)."""
    if version == "before":
        validate = old_module("pipeline/validate.py", "old_validate")  # moved to pipeline/curation/ since
        data_module = old_module("models/data.py", "old_data")
        report = old_module("pipeline/report.py", "old_report")  # moved to pipeline/recommend/ since
        crawl = old_module("scrapers/pipelines.py", "old_pipelines")

        def curation(data: bytes) -> Image.Image:
            check = validate.validate_image(data, 32, 4.0, max_pixels=LIMIT, blank_std=BLANK_STD)
            if not check.ok:
                raise ValueError(check.reason)
            image_hashes(check.image)
            return check.image

        network = data_module.decode_image
        thumbnail = report.thumbnail_data_uri
        user_hash, user_thumb = old_user_phash_image, old_user_thumbnail
        crawl_class = crawl.StoreImagesPipeline
    else:
        from models import data as data_module
        from pipeline import images
        from pipeline.curation.dedup import colour_thumbnail
        from pipeline.curation.validate import validate_image
        from pipeline.recommend import report
        from pipeline.recommend.profile import _image_phashes
        from scrapers.pipelines import StoreImagesPipeline as crawl_class

        def curation(data: bytes) -> Image.Image:
            check = validate_image(data, 32, 4.0, max_pixels=LIMIT, blank_std=BLANK_STD)
            if not check.ok:
                raise ValueError(check.reason)
            image_hashes(check.image)
            return check.image

        network = data_module.decode_image
        thumbnail = report.thumbnail_data_uri

        user_rules = images.rules_from_settings()  # what recommendations decode user photos by

        def user_hash(data: bytes) -> Image.Image | None:
            _image_phashes("users/bench/photo", data, user_rules)  # raises for what the rules refuse
            return None if speed else images.open_image(data, max_pixels=LIMIT)

        def user_thumb(data: bytes) -> Image.Image:
            return Image.fromarray(colour_thumbnail(images.open_image(data, max_pixels=LIMIT)))

    def from_uri(data: bytes) -> Image.Image:
        return Image.open(io.BytesIO(base64.b64decode(thumbnail(data).split(",", 1)[1]))).convert("RGB")

    return {
        "crawl (stored image)": lambda data: crawl_harness(crawl_class, data, version == "before"),
        "curation (validate + hashes)": curation,
        "training / inference / user vectorizer (224 px)": lambda data: Image.fromarray(network(data, NETWORK)),
        "review thumbnail": from_uri,
        "user photo hashes (own-item check)": user_hash,
        "user photo thumbnail check": user_thumb,
    }


# -- inputs -------------------------------------------------------------------------------------------
def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def real_photo() -> Image.Image:
    first = sorted((DATASET / "train").rglob("*.jpg"))[0]
    with Image.open(first) as image:
        return image.convert("RGB")


def phone_jpeg(upright: Image.Image) -> bytes:
    """Stored as the sensor saw it (turned 90 degrees counter-clockwise), EXIF orientation 6."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=92, exif=exif.tobytes())


def png_12000(path: Path, side: int = 12_000) -> None:
    """A real 12000x12000 RGB PNG (a horizontal gradient; every row after the first is an 'Up' filter
    of zeros), written row by row: the bench never holds its pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = np.repeat((np.arange(side) * 255 // side).astype(np.uint8), 3).tobytes()
    parts = [compressor.compress(b"\x00" + row)]
    zero_row = b"\x02" + bytes(len(row))
    for _ in range(side - 1):
        parts.append(compressor.compress(zero_row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )


def grey16(photo: Image.Image) -> tuple[bytes, Image.Image]:
    """A 16-bit grey PNG of the photo (full 0-65535 range) and its 8-bit reference."""
    grey = np.asarray(photo.convert("L"), dtype=np.float64)
    values = np.rint(grey / 255 * 65535).astype(np.uint16)
    return encode(Image.fromarray(values), "PNG"), Image.fromarray(np.rint(values / 257).astype(np.uint8), "L").convert(
        "RGB"
    )


def transparent_cutout(photo: Image.Image) -> tuple[Image.Image, np.ndarray]:
    """The photo with its outer border transparent (RGB there = black, as many exporters leave it)."""
    rgba = photo.convert("RGBA")
    alpha = np.full(photo.size[::-1], 255, np.uint8)
    border = photo.width // 5
    alpha[:, :border] = alpha[:, -border:] = 0
    pixels = np.asarray(rgba).copy()
    pixels[..., 3] = alpha
    pixels[alpha == 0, :3] = 0
    return Image.fromarray(pixels, "RGBA"), alpha == 0


# -- measures ----------------------------------------------------------------------------------------
def mean_difference(seen: Image.Image, reference: Image.Image) -> float:
    """Mean absolute difference (0-255) of what a path saw and the reference squashed to the same size
    (a sideways image compared with the upright reference, squashed, differs by tens of units)."""
    expected = reference.convert("RGB").resize(seen.size, Image.Resampling.BILINEAR)
    return float(np.abs(np.asarray(seen.convert("RGB"), np.float32) - np.asarray(expected, np.float32)).mean())


def attempt(function: Callable[[bytes], Image.Image], data: bytes) -> tuple[Image.Image | None, str]:
    try:
        return function(data), "accepted"
    except Exception as exc:  # noqa: BLE001 - the outcome is the measurement
        reason = getattr(exc, "reason", None) or str(exc).split(":")[0][:40]
        return None, f"refused ({reason})"


def border_colour(seen: Image.Image, border_fraction: float = 0.2) -> str:
    """Mean colour of the left band of the transparent border."""
    pixels = np.asarray(seen.convert("RGB"), dtype=np.float32)
    width = pixels.shape[1]
    band = max(1, int(width * border_fraction * 0.5))
    left = pixels[:, :band].reshape(-1, 3).mean(axis=0)
    return "(" + ", ".join(f"{v:.0f}" for v in left) + ")"


def quality_rows(version: str, photo: Image.Image) -> list[dict[str, str]]:
    functions = paths(version)
    upright = photo.resize((photo.width * 3, photo.height * 3))
    phone = phone_jpeg(upright)
    grey_png, grey_reference = grey16(photo)
    grey_hash = image_hashes(grey_reference).phash
    cutout, _ = transparent_cutout(photo)
    cutout_png = encode(cutout, "PNG")
    cmyk_jpeg = encode(photo.convert("CMYK"), "JPEG", quality=95)
    cmyk_reference = Image.open(io.BytesIO(encode(photo, "JPEG", quality=95))).convert("RGB")
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    palette_pixels = np.asarray(palette).copy()
    palette_pixels[:, : photo.width // 5] = 255  # index 255: the transparent colour (black in the palette)
    palette_image = Image.fromarray(palette_pixels, "P")
    palette_image.putpalette(palette.getpalette()[: 255 * 3] + [0, 0, 0])
    palette_png = encode(palette_image, "PNG", transparency=255)
    flats = {
        "flat red": encode(Image.new("RGB", (400, 400), (255, 0, 0)), "JPEG", quality=90),
        "flat navy": encode(Image.new("RGB", (400, 400), (0, 0, 128)), "JPEG", quality=90),
    }
    upright_hash = image_hashes(upright).phash
    rows = []
    for name, function in functions.items():
        row = {"path": name}
        seen, outcome = attempt(function, phone)
        row["rotated: diff to upright"] = f"{mean_difference(seen, upright):.1f}" if seen else outcome
        if seen is not None and ("hashes" in name or name.startswith("curation")):
            row["rotated: diff to upright"] += f", pHash {int(hamming(image_hashes(seen).phash, upright_hash))} bits"
        seen, outcome = attempt(function, grey_png)
        if seen is not None:
            share = float((np.asarray(seen.convert("L")) >= 255).mean()) * 100
            phash = image_hashes(seen).phash
            degenerate = " (degenerate)" if phash in (0, 2**64 - 1) else ""
            row["16-bit grey: % at 255, pHash bits off"] = f"{share:.1f}%, {int(hamming(phash, grey_hash))}{degenerate}"
        else:
            row["16-bit grey: % at 255, pHash bits off"] = outcome
        for label, data in (("RGBA: transparent area", cutout_png), ("palette+tRNS: transparent area", palette_png)):
            seen, outcome = attempt(function, data)
            row[label] = border_colour(seen) if seen else outcome
        seen, outcome = attempt(function, cmyk_jpeg)
        row["CMYK: diff to RGB"] = f"{mean_difference(seen, cmyk_reference):.1f}" if seen else outcome
        for label, data in flats.items():
            row[label] = attempt(function, data)[1]
        rows.append(row)
    return rows


def throughput(repeat: int, photo: Image.Image) -> dict[str, tuple[float, float]]:
    """Path -> (before, after) images/s on one 5184x3456 JPEG: median of ``repeat`` calls each, the
    before and after calls interleaved so that both see the same load on a shared machine."""
    big = encode(photo.resize((5184, 3456), Image.Resampling.BICUBIC), "JPEG", quality=90)
    before, after = paths("before", speed=True), paths("after", speed=True)
    speeds = {}
    for name in after:
        times: dict[str, list[float]] = {"before": [], "after": []}
        before[name](big), after[name](big)  # warm-up
        for _ in range(repeat):
            for version, function in (("before", before[name]), ("after", after[name])):
                start = time.perf_counter()
                function(big)
                times[version].append(time.perf_counter() - start)
        speeds[name] = (1 / statistics.median(times["before"]), 1 / statistics.median(times["after"]))
    return speeds


def child_rss(version: str, name: str, png: str) -> None:
    """(in a child process) peak RSS of one path on the 12000x12000 PNG."""
    function = paths(version)[name]
    data = Path(png).read_bytes()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    _, outcome = attempt(function, data)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024, "outcome": outcome, "s": seconds}))


def rss_rows(png: Path) -> dict[tuple[str, str], dict]:
    results = {}
    for version in ("before", "after"):
        for name in paths("after"):
            done = subprocess.run(
                [sys.executable, "-m", "bench.image_decoding", "--child", version, name, str(png)],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=300,
            )
            try:
                results[(version, name)] = json.loads(done.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                results[(version, name)] = {"outcome": f"child failed: {done.stderr[-300:]}"}
    return results


def markdown(rows: list[dict[str, str]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("VERSION", "PATH", "PNG"))
    args = parser.parse_args()
    if args.child:
        child_rss(*args.child)
        return
    photo = real_photo()
    for version in ("before", "after"):
        print(f"\n### {version}\n")
        print(markdown(quality_rows(version, photo)))
    print("\n### 5184x3456 JPEG, images/s (median of", args.repeat, "runs each, before and after interleaved)\n")
    speeds = throughput(args.repeat, photo)
    print(
        markdown(
            [
                {"path": name, "before": f"{old:.1f}", "after": f"{new:.1f}", "ratio": f"{new / old:.2f}x"}
                for name, (old, new) in speeds.items()
            ]
        )
    )
    if not args.skip_rss:
        with tempfile.TemporaryDirectory() as folder:
            png = Path(folder) / "12000.png"
            png_12000(png)
            print(
                f"\n### 12000x12000 PNG ({png.stat().st_size} bytes): RSS growth over the imports (peak RSS), "
                "time and outcome per path, each in a fresh process\n"
            )
            results = rss_rows(png)
        rows = []
        for name in paths("after"):
            cells = {"path": name}
            for version in ("before", "after"):
                r = results[(version, name)]
                cells[version] = (
                    (
                        f"+{r['peak_mb'] - r['base_mb']:.0f} MB ({r['peak_mb']:.0f} MB peak), "
                        f"{r['s']:.2f} s, {r['outcome']}"
                    )
                    if "peak_mb" in r
                    else r["outcome"]
                )
            rows.append(cells)
        print(markdown(rows))


if __name__ == "__main__":
    main()
