import hashlib
import io
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from pipeline.curation.curate import curate_batch
from pipeline.hashing import hamming, perceptual_hashes


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def blocks(seed: int, size: int = 160) -> Image.Image:
    """A random 8x8 colour-block pattern: distinct seeds give perceptually distinct images."""
    cells = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize((size, size), Image.NEAREST)


def item_id(url: str) -> str:
    return hashlib.sha1(url.encode()).hexdigest()[:20]


def write_crawl(store, crawl_id: str, images: dict[str, bytes | None]) -> dict[str, str]:
    """Products named by ``images`` (name -> bytes; None = image never stored); returns name -> item_id."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    rows, ids = [], {}
    for n, (name, data) in enumerate(images.items()):
        url = f"http://shop.test/p/{name}"
        ids[name] = item_id(url)
        key = f"images/full/{hashlib.sha1(name.encode()).hexdigest()}.jpg"
        if data is not None:
            store.put_bytes(key, data)
        rows.append(
            {
                "item_id": ids[name],
                "retailer": "demo-store",
                "product_url": url,
                "sku": f"SKU{n}",
                "title": f"Product {name}",
                "price": 10.0 + n,
                "currency": "EUR",
                "category": "tops",
                "image_url": f"http://shop.test/img/{name}.jpg",
                "image_key": key,
                "crawled_at": start + timedelta(minutes=n),
            }
        )
    store.write_parquet(f"crawls/{crawl_id}/products.parquet", pa.Table.from_pylist(rows))
    return ids


def crawl_images() -> dict[str, bytes | None]:
    original = blocks(1, 256)
    return {
        "original": jpeg(original),
        "exact-copy": jpeg(original),
        "small-copy": jpeg(original.resize((128, 128)), quality=60),
        "distinct": jpeg(blocks(2)),
        "another": jpeg(blocks(3)),
        "truncated": jpeg(blocks(4, 256))[:2000],
        "random-bytes": np.random.default_rng(5).bytes(3000),
        "tiny": jpeg(blocks(6, 10)),
        "blank": jpeg(Image.new("RGB", (100, 100), "white")),
        "absent": None,
    }


def test_curate_writes_accepted_rejections_duplicates_and_summary(any_store):
    ids = write_crawl(any_store, "crawl-20261101", crawl_images())
    summary = curate_batch(any_store, "crawl-20261101")

    accepted = any_store.read_parquet("curation/crawl-20261101/accepted.parquet")
    kept = {name for name, i in ids.items() if i in accepted.column("item_id").to_pylist()}
    assert kept == {"original", "distinct", "another"}
    assert accepted.column("item_id").to_pylist() == sorted(accepted.column("item_id").to_pylist())
    assert accepted.schema.field("phash").type == pa.uint64() and accepted.schema.field("dhash").type == pa.uint64()
    for column in (
        "retailer",
        "product_url",
        "sku",
        "title",
        "price",
        "image_key",
        "crawled_at",
        "content_sha256",
        "width",
        "height",
        "cluster_id",
    ):
        assert column in accepted.column_names
    row = accepted.to_pandas().set_index("item_id").loc[ids["original"]]
    assert (row["width"], row["height"]) == (256, 256)
    assert row["cluster_id"] == row["content_sha256"] == hashlib.sha256(crawl_images()["original"]).hexdigest()

    rejections = any_store.read_parquet("curation/crawl-20261101/rejections.parquet").to_pandas()
    by_item = dict(zip(rejections["item_id"], rejections["reason"]))
    assert by_item == {
        ids["truncated"]: "undecodable",
        ids["random-bytes"]: "not_an_image",
        ids["tiny"]: "too_small",
        ids["blank"]: "blank",
        ids["absent"]: "missing",
    }

    duplicates = any_store.read_parquet("curation/crawl-20261101/duplicates.parquet").to_pandas().set_index("item_id")
    assert duplicates.loc[ids["exact-copy"], "kind"] == "exact"
    assert duplicates.loc[ids["small-copy"], "kind"] == "near"
    assert set(duplicates["kept_item_id"]) == {ids["original"]}

    assert summary == any_store.read_json("curation/crawl-20261101/summary.json")
    assert summary["accepted"] == 3 and summary["rejected"] == 5 and summary["duplicates"] == 2
    assert summary["rejections_by_reason"] == {
        "blank": 1,
        "missing": 1,
        "not_an_image": 1,
        "too_small": 1,
        "undecodable": 1,
    }
    assert summary["duplicates_by_kind"] == {"exact": 1, "near": 1}


def test_rerun_writes_identical_outputs(file_store):
    write_crawl(file_store, "c1", crawl_images())
    curate_batch(file_store, "c1", "batch-a")
    first = {k: file_store.get_bytes(k) for k in file_store.list("curation")}
    curate_batch(file_store, "c1", "batch-a")
    second = {k: file_store.get_bytes(k) for k in file_store.list("curation")}
    assert sorted(first) == [
        f"curation/batch-a/{n}"
        for n in ("accepted.parquet", "duplicates.parquet", "rejections.parquet", "summary.json")
    ]
    assert first == second


def test_a_crawl_of_only_bad_images_writes_empty_tables(file_store):
    write_crawl(file_store, "bad", {"x": b"nope", "y": None})
    summary = curate_batch(file_store, "bad")
    assert summary["accepted"] == 0 and summary["rejected"] == 2
    accepted = file_store.read_parquet("curation/bad/accepted.parquet")
    assert accepted.num_rows == 0 and accepted.schema.field("phash").type == pa.uint64()


def garment(fill: tuple[int, int, int], background: tuple[int, int, int]) -> Image.Image:
    """One silhouette, as a catalog draws every product: only the colour tells two products apart."""
    image = Image.new("RGB", (128, 128), background)
    ImageDraw.Draw(image).polygon([(40, 20), (88, 20), (96, 110), (32, 110)], fill=fill)
    return image


def test_different_products_with_one_silhouette_are_not_near_duplicates(file_store):
    brown, green = garment((120, 60, 30), (245, 235, 225)), garment((90, 140, 60), (235, 240, 235))
    (p1, d1), (p2, d2) = perceptual_hashes(brown), perceptual_hashes(green)
    assert int(hamming(p1, p2)) <= 6 and int(hamming(d1, d2)) <= 10  # both hashes are fooled
    ids = write_crawl(
        file_store,
        "same-shape",
        {"brown": jpeg(brown), "green": jpeg(green), "brown-small": jpeg(brown.resize((100, 100)), quality=70)},
    )
    summary = curate_batch(file_store, "same-shape")
    accepted = file_store.read_parquet("curation/same-shape/accepted.parquet").column("item_id").to_pylist()
    assert sorted(accepted) == sorted([ids["brown"], ids["green"]])
    assert summary["duplicates_by_kind"] == {"near": 1}


def duplicates_by_item(store, batch_id: str) -> dict[str, dict]:
    rows = store.read_parquet(f"curation/{batch_id}/duplicates.parquet").to_pylist()
    return {r["item_id"]: r for r in rows}


def accepted_ids(store, batch_id: str) -> list[str]:
    return sorted(store.read_parquet(f"curation/{batch_id}/accepted.parquet").column("item_id").to_pylist())


def two_nights():
    original = blocks(11, 200)
    night1 = {"original": jpeg(original), "distinct": jpeg(blocks(12))}
    night2 = {
        "bigger-copy": jpeg(original.resize((320, 320))),
        "same-bytes": jpeg(original),
        "new": jpeg(blocks(13)),
        "new-copy": jpeg(blocks(13).resize((120, 120)), quality=70),
    }
    return night1, night2


def test_a_later_batch_is_deduplicated_against_what_earlier_batches_kept(any_store):
    night1, night2 = two_nights()
    ids1 = write_crawl(any_store, "ingest-20261101", night1)
    curate_batch(any_store, "ingest-20261101")
    ids2 = write_crawl(any_store, "ingest-20261102", night2)
    summary = curate_batch(any_store, "ingest-20261102")

    assert accepted_ids(any_store, "ingest-20261102") == sorted([ids2["new"]])
    dups = duplicates_by_item(any_store, "ingest-20261102")
    # The earlier item stays the representative even though the new copy is larger (stability rule).
    assert dups[ids2["bigger-copy"]]["kept_item_id"] == ids1["original"]
    assert dups[ids2["bigger-copy"]]["kind"] == "near"
    assert dups[ids2["same-bytes"]]["kind"] == "exact"
    assert {dups[ids2[n]]["kept_batch_id"] for n in ("bigger-copy", "same-bytes")} == {"ingest-20261101"}
    assert dups[ids2["new-copy"]]["kept_item_id"] == ids2["new"]
    assert dups[ids2["new-copy"]]["kept_batch_id"] == "ingest-20261102"
    assert summary["duplicates_of_earlier_batches"] == 2 and summary["index_items_before"] == 2

    index = any_store.read_parquet("curation/hash_index/ingest/ingest-20261102.parquet")
    assert index.column("item_id").to_pylist() == [ids2["new"]]
    assert index.schema.field("phash").type == pa.uint64() and len(index.column("thumbnail")[0].as_py()) == 768


def test_reruns_replace_their_own_index_rows_and_never_match_themselves(file_store):
    night1, night2 = two_nights()
    ids1 = write_crawl(file_store, "ingest-20261101", night1)
    curate_batch(file_store, "ingest-20261101")
    first = {k: file_store.get_bytes(k) for k in file_store.list("curation")}
    summary = curate_batch(file_store, "ingest-20261101")
    assert summary["duplicates"] == 0 and accepted_ids(file_store, "ingest-20261101") == sorted(ids1.values())
    assert {k: file_store.get_bytes(k) for k in file_store.list("curation")} == first

    write_crawl(file_store, "ingest-20261102", night2)
    curate_batch(file_store, "ingest-20261102")
    second = {k: file_store.get_bytes(k) for k in file_store.list("curation")}
    curate_batch(file_store, "ingest-20261102")
    # Rerunning either batch afterwards writes the same tables as before (day 1's summary now also
    # counts the day-2 index rows it was checked against).
    curate_batch(file_store, "ingest-20261101")
    after = {k: file_store.get_bytes(k) for k in file_store.list("curation")}
    day1_summary = "curation/ingest-20261101/summary.json"
    assert {k: v for k, v in after.items() if k != day1_summary} == {
        k: v for k, v in second.items() if k != day1_summary
    }
    assert file_store.read_json(day1_summary)["index_items_before"] == 1
    assert sorted(file_store.list("curation/hash_index/")) == [
        "curation/hash_index/ingest/ingest-20261101.parquet",
        "curation/hash_index/ingest/ingest-20261102.parquet",
    ]


def test_catalog_snapshots_are_not_deduplicated_across_nights(file_store):
    night1, _ = two_nights()
    ids = write_crawl(file_store, "catalog-20261101", night1)
    curate_batch(file_store, "catalog-20261101")
    write_crawl(file_store, "catalog-20261102", night1)
    summary = curate_batch(file_store, "catalog-20261102")
    assert accepted_ids(file_store, "catalog-20261102") == sorted(ids.values()) and summary["duplicates"] == 0
    assert file_store.list("curation/hash_index/") == []


# -- issue 4: mirrored and brightened copies, old index files, the demo store ----------------------------
def mirrored(image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def brightened(image: Image.Image, factor: float = 1.2) -> Image.Image:
    from PIL import ImageEnhance

    return ImageEnhance.Brightness(image).enhance(factor)


def dim_blocks(seed: int, size: int = 200) -> Image.Image:
    """Colour blocks in 30..190: room for a brighter copy that does not clip (real photos that clip
    are measured by bench/dedup_quality.py)."""
    return Image.eval(blocks(seed, size), lambda v: 30 + v * 160 // 255)


def test_mirrored_and_brightened_copies_are_near_duplicates(file_store):
    original = dim_blocks(21)
    ids = write_crawl(
        file_store,
        "copies",
        {
            "original": jpeg(original),
            "mirrored": jpeg(mirrored(original).resize((150, 150))),
            "brighter": jpeg(brightened(original)),
            "distinct": jpeg(blocks(22)),
            "distinct-mirrored": jpeg(mirrored(blocks(23))),
        },
    )
    summary = curate_batch(file_store, "copies")
    assert accepted_ids(file_store, "copies") == sorted([ids["original"], ids["distinct"], ids["distinct-mirrored"]])
    dups = duplicates_by_item(file_store, "copies")
    assert {name: dups[ids[name]]["kind"] for name in ("mirrored", "brighter")} == {
        "mirrored": "near_mirror",
        "brighter": "near",
    }
    assert {dups[ids[name]]["kept_item_id"] for name in ("mirrored", "brighter")} == {ids["original"]}
    assert summary["duplicates_by_kind"] == {"near": 1, "near_mirror": 1}
    accepted = file_store.read_parquet("curation/copies/accepted.parquet")
    assert accepted.schema.field("phash_mirror").type == pa.uint64()


def test_index_files_written_before_mirror_hashes_still_work(any_store):
    """An index file without phash_mirror/dhash_mirror (as written before issue 4): read with nulls,
    its items still matched against a later batch's mirrored and brightened copies."""
    original = dim_blocks(31)
    ids1 = write_crawl(any_store, "ingest-20261101", {"original": jpeg(original), "other": jpeg(blocks(32))})
    curate_batch(any_store, "ingest-20261101")
    key = "curation/hash_index/ingest/ingest-20261101.parquet"
    index = any_store.read_parquet(key)
    assert index.schema.field("phash_mirror").type == pa.uint64() and index.column("phash_mirror").null_count == 0
    any_store.write_parquet(key, index.drop_columns(["phash_mirror", "dhash_mirror"]))

    ids2 = write_crawl(
        any_store,
        "ingest-20261102",
        {"mirrored": jpeg(mirrored(original)), "brighter": jpeg(brightened(original)), "new": jpeg(blocks(33))},
    )
    summary = curate_batch(any_store, "ingest-20261102")
    assert accepted_ids(any_store, "ingest-20261102") == [ids2["new"]]
    dups = duplicates_by_item(any_store, "ingest-20261102")
    assert {
        name: (dups[ids2[name]]["kind"], dups[ids2[name]]["kept_item_id"], dups[ids2[name]]["kept_batch_id"])
        for name in ("mirrored", "brighter")
    } == {
        "mirrored": ("near_mirror", ids1["original"], "ingest-20261101"),
        "brighter": ("near", ids1["original"], "ingest-20261101"),
    }
    assert summary["duplicates_of_earlier_batches"] == 2 and summary["index_items_before"] == 2

    from pipeline.curation.curate import read_prior_index

    prior = read_prior_index(any_store, "ingest", "ingest-20261103")
    assert len(prior) == 3 and int(prior["phash_mirror"].isna().sum()) == 2  # the old file's rows
    assert prior["phash"].dtype == np.uint64 and str(prior["phash_mirror"].dtype) == "UInt64"


def demo_catalog_images(n: int = 240, seed: int = 7) -> dict[str, bytes]:
    """The demo site's product pictures (``make demo`` builds seed 7 with 240 products), by sku."""
    import random

    from fashionnet_tools.demo_store.catalog import generate_catalog
    from fashionnet_tools.demo_store.draw import draw_garment
    from fashionnet_tools.demo_store.site import JPEG_QUALITY

    return {
        p.sku: jpeg(draw_garment(p.pattern, p.fabric, p.style, p.shape, random.Random(f"{seed}:{p.sku}")), JPEG_QUALITY)
        for p in generate_catalog(n, seed)
    }


def test_a_demo_crawl_keeps_every_one_of_its_distinct_products(file_store):
    """240 products, many sharing a silhouette and differing in colour only: none is a duplicate,
    mirrored and brightness-tolerant matching included."""
    write_crawl(file_store, "catalog-20261101", demo_catalog_images())
    summary = curate_batch(file_store, "catalog-20261101")
    assert summary["valid_images"] == summary["accepted"] == 240
    assert summary["duplicates"] == 0 and summary["clusters"] == 240


def test_curation_decodes_by_the_shared_rules(file_store):
    """16-bit greys are scaled (their hashes are the 8-bit image's), a phone JPEG is hashed and sized
    upright, and a flat colour is blank whatever the colour (pipeline.images)."""
    y, x = np.mgrid[0:96, 0:128]
    grey16 = ((x + y) / 222 * 65535).astype(np.uint16)
    grey16[:32, :40] = 1000
    grey8 = Image.fromarray(np.rint(grey16 / 257).astype(np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(grey16).save(buffer, "PNG")
    upright = blocks(11, 160).resize((120, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to view": the stored pixels are sideways
    phone = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(phone, "JPEG", quality=92, exif=exif.tobytes())
    ids = write_crawl(
        file_store,
        "modes",
        {
            "grey16": buffer.getvalue(),
            "phone": phone.getvalue(),
            "flat-red": jpeg(Image.new("RGB", (100, 100), (255, 0, 0))),
            "flat-navy": jpeg(Image.new("RGB", (100, 100), (0, 0, 128))),
        },
    )
    curate_batch(file_store, "modes")
    accepted = file_store.read_parquet("curation/modes/accepted.parquet").to_pandas().set_index("item_id")
    phash, _ = perceptual_hashes(grey8)
    assert int(hamming(int(accepted.loc[ids["grey16"], "phash"]), phash)) <= 2
    row = accepted.loc[ids["phone"]]
    assert (row["width"], row["height"]) == (120, 200)
    assert int(hamming(int(row["phash"]), perceptual_hashes(upright)[0])) <= 4
    rejections = file_store.read_parquet("curation/modes/rejections.parquet").to_pandas()
    assert dict(zip(rejections["item_id"], rejections["reason"])) == {
        ids["flat-red"]: "blank",
        ids["flat-navy"]: "blank",
    }
