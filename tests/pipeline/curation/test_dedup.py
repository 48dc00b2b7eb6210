import io
import random

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from pipeline.curation.dedup import (
    HashedImages,
    NearDuplicateIndex,
    PriorMatchQuery,
    UnionFind,
    colour_thumbnail,
    deduplicate,
    find_prior_matches,
    mirror_thumbnail,
    thumbnail_distance,
    thumbnail_mad,
)
from pipeline.hashing import hamming, image_hashes


def flip(value: int, bits: list[int]) -> int:
    for bit in bits:
        value ^= 1 << bit
    return value


def frame(rows):
    df = pd.DataFrame(rows, columns=["item_id", "content_sha256", "phash", "dhash", "width", "height", "crawled_at"])
    df["phash"] = df["phash"].astype("uint64")
    df["dhash"] = df["dhash"].astype("uint64")
    df["crawled_at"] = pd.to_datetime(df["crawled_at"], utc=True)
    return df


BASE_P, BASE_D = 0x0F0F_3C3C_A5A5_F00F, 0x1234_5678_9ABC_DEF0
OTHER_P, OTHER_D = 0xF0F0_C3C3_5A5A_0FF0, 0xEDCB_A987_6543_210F


def test_index_matches_a_plain_all_pairs_scan():
    rng = np.random.default_rng(7)
    base = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    # Each base hash gets a couple of noisy copies so that there are pairs to find.
    noisy = base ^ (np.uint64(1) << rng.integers(0, 63, size=40).astype(np.uint64))
    hashes = np.concatenate([base, noisy, base[:5]])
    index = NearDuplicateIndex(hashes)
    i, j, d = index.pairs_within(3)
    found = set(zip(i.tolist(), j.tolist(), d.tolist()))
    full = hamming(hashes[:, None], hashes[None, :])
    expected = {
        (a, b, int(full[a, b])) for a in range(len(hashes)) for b in range(a + 1, len(hashes)) if full[a, b] <= 3
    }
    assert found == expected and len(found) >= 45


def test_index_blocks_give_the_same_answer(monkeypatch):
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, size=50, dtype=np.uint64)
    hashes[30] = hashes[3]
    whole = NearDuplicateIndex(hashes).pairs_within(0)
    monkeypatch.setattr("pipeline.curation.hash_index._BLOCK_CELLS", 7)
    blocked = NearDuplicateIndex(hashes).pairs_within(0)
    assert [a.tolist() for a in whole] == [a.tolist() for a in blocked] == [[3], [30], [0]]
    q, r, _ = NearDuplicateIndex(hashes).query(hashes[[3]], 0)
    assert q.tolist() == [0, 0] and r.tolist() == [3, 30]


def test_union_find_joins_chains():
    sets = UnionFind(5)
    sets.union(0, 1)
    sets.union(1, 2)
    roots = sets.roots()
    assert roots[0] == roots[1] == roots[2] and len({roots[0], roots[3], roots[4]}) == 3


def test_exact_and_near_duplicates_collapse_to_the_largest_image():
    df = frame(
        [
            ("a-small", "sha-a", BASE_P, BASE_D, 64, 64, "2026-01-01"),
            ("b-big", "sha-b", flip(BASE_P, [1, 9]), flip(BASE_D, [4]), 256, 256, "2026-01-03"),
            ("c-copy", "sha-b", flip(BASE_P, [1, 9]), flip(BASE_D, [4]), 256, 256, "2026-01-02"),
            ("d-other", "sha-d", OTHER_P, OTHER_D, 128, 128, "2026-01-01"),
        ]
    )
    result = deduplicate(df, phash_max_distance=6, dhash_max_distance=10)
    # b and c are the same bytes and the same size: the earlier crawled (c) is kept.
    assert result.kept["item_id"].tolist() == ["c-copy", "d-other"]
    assert result.kept["cluster_id"].tolist() == ["sha-b", "sha-d"]
    dups = result.duplicates.set_index("item_id")[["kept_item_id", "kind", "distance"]]
    assert dups.loc["a-small"].tolist() == ["c-copy", "near", 2]
    assert dups.loc["b-big"].tolist() == ["c-copy", "exact", 0]
    assert dict(zip(result.clusters["item_id"], result.clusters["cluster_id"])) == {
        "a-small": "sha-b",
        "b-big": "sha-b",
        "c-copy": "sha-b",
        "d-other": "sha-d",
    }


def test_ties_fall_back_to_item_id():
    df = frame(
        [
            ("y", "sha-y", BASE_P, BASE_D, 100, 100, "2026-01-01"),
            ("x", "sha-x", flip(BASE_P, [0]), BASE_D, 100, 100, "2026-01-01"),
        ]
    )
    assert deduplicate(df, 6, 10).kept["item_id"].tolist() == ["x"]


def test_phash_match_without_dhash_confirmation_is_not_a_duplicate():
    df = frame(
        [
            ("a", "sha-a", BASE_P, BASE_D, 100, 100, "2026-01-01"),
            ("b", "sha-b", flip(BASE_P, [3]), flip(BASE_D, list(range(20))), 100, 100, "2026-01-01"),
        ]
    )
    result = deduplicate(df, 6, 10)
    assert result.kept["item_id"].tolist() == ["a", "b"] and result.duplicates.empty


def test_chains_join_one_cluster():
    df = frame(
        [
            ("a", "sha-a", BASE_P, BASE_D, 100, 100, "2026-01-01"),
            ("b", "sha-b", flip(BASE_P, [0, 1, 2, 3, 4]), BASE_D, 100, 100, "2026-01-01"),
            ("c", "sha-c", flip(BASE_P, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), BASE_D, 120, 120, "2026-01-01"),
        ]
    )
    result = deduplicate(df, 6, 10)
    assert result.kept["item_id"].tolist() == ["c"]
    assert result.duplicates.set_index("item_id")["distance"].to_dict() == {"a": 10, "b": 5}


def test_empty_input_and_missing_columns():
    result = deduplicate(frame([]), 6, 10)
    assert result.kept.empty and result.duplicates.empty
    with pytest.raises(ValueError, match="needs columns"):
        deduplicate(pd.DataFrame({"item_id": ["a"]}), 6, 10)


def test_thumbnails_veto_hash_matches_of_different_colours():
    from PIL import Image

    red = colour_thumbnail(Image.new("RGB", (64, 64), (200, 30, 30)))
    red_copy = colour_thumbnail(Image.new("RGB", (48, 48), (201, 31, 29)))
    blue = colour_thumbnail(Image.new("RGB", (64, 64), (30, 30, 200)))
    assert red.shape == (16, 16, 3) and red.dtype == np.uint8
    assert thumbnail_mad(red, red_copy) < 1.5 and thumbnail_mad(red, blue) > 50
    df = frame(
        [
            ("a", "sha-a", BASE_P, BASE_D, 64, 64, "2026-01-01"),
            ("b", "sha-b", BASE_P, BASE_D, 48, 48, "2026-01-01"),
            ("c", "sha-c", BASE_P, BASE_D, 64, 64, "2026-01-02"),
        ]
    )
    df["thumbnail"] = [red, red_copy, blue]
    result = deduplicate(df, 6, 10, thumbnail_max_mad=4.0)
    assert result.kept["item_id"].tolist() == ["a", "c"]
    assert result.duplicates["item_id"].tolist() == ["b"] and "thumbnail" not in result.kept.columns
    # Without the thumbnail check the same hashes collapse all three.
    assert deduplicate(df, 6, 10).kept["item_id"].tolist() == ["a"]


def prior_frame(rows):
    """Items kept by earlier batches: frame rows plus (cluster_id, batch_id)."""
    df = frame([r[:7] for r in rows])
    df["cluster_id"] = [r[7] for r in rows]
    df["batch_id"] = [r[8] for r in rows]
    return df


def test_an_earlier_kept_item_stays_the_representative_even_when_smaller():
    prior = prior_frame(
        [
            ("old", "sha-old", BASE_P, BASE_D, 64, 64, "2026-01-01", "cluster-old", "ingest-20260101"),
            ("old-other", "sha-oo", OTHER_P, OTHER_D, 64, 64, "2026-01-01", "cluster-oo", "ingest-20260101"),
        ]
    )
    df = frame(
        [
            ("new-big", "sha-nb", flip(BASE_P, [2, 5]), flip(BASE_D, [1]), 512, 512, "2026-02-01"),
            ("new-exact", "sha-old", BASE_P, BASE_D, 64, 64, "2026-02-01"),
            ("new-alone", "sha-na", flip(OTHER_P, list(range(0, 64, 2))), BASE_D, 64, 64, "2026-02-01"),
        ]
    )
    result = deduplicate(df, 6, 10, prior=prior)
    assert result.kept["item_id"].tolist() == ["new-alone"]
    assert result.kept["cluster_id"].tolist() == ["sha-na"]
    dups = result.duplicates.set_index("item_id")
    assert dups.loc["new-big", ["kept_item_id", "kind", "distance", "kept_batch_id"]].tolist() == [
        "old",
        "near",
        2,
        "ingest-20260101",
    ]
    assert dups.loc["new-exact", ["kept_item_id", "kind"]].tolist() == ["old", "exact"]
    assert dict(zip(result.clusters["item_id"], result.clusters["cluster_id"])) == {
        "new-alone": "sha-na",
        "new-big": "cluster-old",
        "new-exact": "cluster-old",
    }
    # Without the earlier batch the larger new image is its own representative.
    alone = deduplicate(df, 6, 10)
    assert sorted(alone.kept["item_id"]) == ["new-alone", "new-big"] and alone.duplicates["kept_batch_id"].isna().all()


def test_prior_matches_need_the_thumbnail_confirmation_too():
    from PIL import Image

    red = colour_thumbnail(Image.new("RGB", (64, 64), (200, 30, 30)))
    blue = colour_thumbnail(Image.new("RGB", (64, 64), (30, 30, 200)))
    prior = prior_frame([("old", "sha-old", BASE_P, BASE_D, 64, 64, "2026-01-01", "c-old", "b1")])
    prior["thumbnail"] = [red]
    df = frame([("new", "sha-new", BASE_P, BASE_D, 64, 64, "2026-02-01")])
    df["thumbnail"] = [blue]
    assert deduplicate(df, 6, 10, 4.0, prior=prior).kept["item_id"].tolist() == ["new"]
    df["thumbnail"] = [red]
    assert deduplicate(df, 6, 10, 4.0, prior=prior).kept.empty


def test_a_bridge_between_two_earlier_clusters_joins_the_one_that_wins_the_rule():
    prior = prior_frame(
        [
            ("p-small", "sha-ps", BASE_P, BASE_D, 64, 64, "2026-01-01", "c-small", "b1"),
            ("p-large", "sha-pl", flip(BASE_P, list(range(10))), BASE_D, 128, 128, "2026-01-02", "c-large", "b1"),
        ]
    )
    df = frame([("bridge", "sha-br", flip(BASE_P, list(range(5))), BASE_D, 64, 64, "2026-02-01")])
    result = deduplicate(df, 6, 10, prior=prior)
    assert result.kept.empty
    assert result.duplicates[["kept_item_id", "kept_batch_id"]].values.tolist() == [["p-large", "b1"]]
    assert result.clusters["cluster_id"].tolist() == ["c-large"]


def test_shipped_configuration_on_real_photos_finds_resized_recompressed_flipped_and_brightened_copies():
    """A 40-photo slice of bench/dedup_quality.py: the shipped configuration catches resized,
    recompressed and mirrored copies and most +25% brightness copies, flags no pair of distinct photos
    or of distinct demo products, and pipeline.curation.dedup flags the very pairs the benchmark counts."""
    from tests.conftest import require_shared

    require_shared("clothing-dataset-small")
    from bench.dedup_quality import BEFORE, evaluate, photo_paths, shipped_config

    shipped = shipped_config()
    rows, agrees = evaluate(photo_paths(40), [shipped, BEFORE], processes=1, demo_seeds=(7,), check=shipped)
    (_, now), (_, before) = rows
    assert agrees
    for transform in ("resize", "jpeg", "flip"):
        assert now.recall[transform] >= 0.95 and now.precision[transform] == 1.0
    assert now.recall["brightness"] >= 0.5 and now.precision["brightness"] == 1.0
    assert now.false_positive_pairs == 0 and now.demo_false_positives == {7: 0}
    # Before issue 4 (no mirror hashes, plain thumbnail difference) flips and brightness were all missed.
    assert before.recall["flip"] == 0.0 and before.recall["brightness"] == 0.0


# -- mirrored copies, brightness changes, colour variants (issue 4) ------------------------------------
def shipped_thresholds() -> tuple[int, int, float]:
    from pipeline.settings import get_settings

    curation = get_settings().curation
    return (
        int(curation.phash_max_distance),
        int(curation.dhash_max_distance),
        float(curation.thumbnail_max_mad),
    )


def reencoded(image: Image.Image, quality: int = 90) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    decoded = Image.open(io.BytesIO(buffer.getvalue()))
    decoded.load()
    return decoded


def scene(seed: int = 0, size: int = 160) -> Image.Image:
    """An asymmetric photo-like picture: soft shapes on a mid-grey ground, lit from the left."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(170, 110, size, dtype=np.float32)[None, :, None] * np.ones((size, 1, 3), np.float32)
    image = Image.fromarray(ramp.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.integers(0, size - 50, 2)
        w, h = rng.integers(20, 60, 2)
        draw.ellipse([int(x), int(y), int(x + w), int(y + h)], fill=tuple(int(c) for c in rng.integers(30, 200, 3)))
    return reencoded(image)


def image_rows(images: dict[str, Image.Image], mirror: bool = True) -> pd.DataFrame:
    """A dedup input frame of real hashes and thumbnails (sizes and dates equal: ties by item_id)."""
    rows = []
    for name, image in images.items():
        hashes = image_hashes(image)
        row = {
            "item_id": name,
            "content_sha256": f"sha-{name}",
            "phash": hashes.phash,
            "dhash": hashes.dhash,
            "width": 100,
            "height": 100,
            "crawled_at": "2026-01-01",
            "thumbnail": colour_thumbnail(image),
        }
        if mirror:
            row.update(phash_mirror=hashes.phash_mirror, dhash_mirror=hashes.dhash_mirror)
        rows.append(row)
    df = pd.DataFrame(rows)
    for column in ("phash", "dhash", "phash_mirror", "dhash_mirror"):
        if column in df.columns:
            df[column] = df[column].astype("uint64")
    df["crawled_at"] = pd.to_datetime(df["crawled_at"], utc=True)
    return df


def test_thumbnail_distance_forgives_a_gain_but_not_a_colour_change():
    original = scene(1)
    brighter = reencoded(ImageEnhance.Brightness(original).enhance(1.25))
    darker = reencoded(ImageEnhance.Brightness(original).enhance(0.8))
    a, b, c = colour_thumbnail(original), colour_thumbnail(brighter), colour_thumbnail(darker)
    assert thumbnail_mad(a, b) > 20 and thumbnail_mad(a, c) > 20  # the plain difference sees a new picture
    assert float(thumbnail_distance(a, b)) < 2.0 and float(thumbnail_distance(a, c)) < 2.0
    assert float(thumbnail_distance(a, a)) == 0.0
    assert float(thumbnail_distance(a, b)) == pytest.approx(float(thumbnail_distance(b, a)))
    red = colour_thumbnail(Image.new("RGB", (64, 64), (200, 30, 30)))
    blue = colour_thumbnail(Image.new("RGB", (64, 64), (30, 30, 200)))
    assert float(thumbnail_distance(red, blue)) > 50
    # Stacks of pairs give one distance per pair.
    stacked = thumbnail_distance(np.stack([a, red]), np.stack([b, blue]))
    assert stacked.shape == (2,) and stacked[0] < 2.0 < 50 < stacked[1]
    assert (mirror_thumbnail(a) == np.asarray(original.resize((16, 16), Image.Resampling.BILINEAR))[:, ::-1]).all()


def test_a_flipped_copy_is_a_near_mirror_duplicate():
    p, d, mad = shipped_thresholds()
    original = scene(2)
    flipped = reencoded(ImageOps.mirror(original).resize((120, 120)), quality=80)
    df = image_rows({"a-original": original, "b-flipped": flipped, "c-other": scene(3)})
    assert int(hamming(df["phash"][0], df["phash"][1])) > p  # the plain hashes do not see it
    result = deduplicate(df, p, d, mad)
    assert result.kept["item_id"].tolist() == ["a-original", "c-other"]
    dup = result.duplicates.set_index("item_id").loc["b-flipped"]
    assert (dup["kept_item_id"], dup["kind"]) == ("a-original", "near_mirror") and dup["distance"] <= p
    # Without mirror hashes (frames as before issue 4) the flip is not found.
    assert len(deduplicate(image_rows({"a": original, "b": flipped}, mirror=False), p, d, mad).kept) == 2


def test_a_brightened_copy_is_a_near_duplicate():
    p, d, mad = shipped_thresholds()
    original = scene(4)
    brighter = reencoded(ImageEnhance.Brightness(original).enhance(1.25))
    df = image_rows({"a": original, "b-brighter": brighter, "c-other": scene(5)})
    result = deduplicate(df, p, d, mad)
    assert result.duplicates[["item_id", "kept_item_id", "kind"]].values.tolist() == [["b-brighter", "a", "near"]]
    # The plain thumbnail difference (the rule before issue 4) rejected it.
    assert thumbnail_mad(df["thumbnail"][0], df["thumbnail"][1]) > 4.0


def demo_pictures(seed: int = 7, n: int = 240) -> list[tuple[object, Image.Image]]:
    """The demo site's catalog pictures, drawn and JPEG-encoded as fashionnet_tools.demo_store.site does."""
    from fashionnet_tools.demo_store.catalog import generate_catalog
    from fashionnet_tools.demo_store.draw import draw_garment
    from fashionnet_tools.demo_store.site import JPEG_QUALITY

    return [
        (
            product,
            reencoded(
                draw_garment(
                    product.pattern,
                    product.fabric,
                    product.style,
                    product.shape,
                    random.Random(f"{seed}:{product.sku}"),
                ),
                JPEG_QUALITY,
            ),
        )
        for product in generate_catalog(n, seed)
    ]


def test_no_two_products_of_the_demo_store_are_merged_and_copies_of_them_are():
    """All 240 demo products are distinct, many with one silhouette; their flipped and darkened copies
    are still found. (Brightening a demo picture clips its light, nearly flat background to white, which
    moves the dHash of some pictures beyond its threshold: the hashes, not the thumbnail check, miss
    those.)"""
    p, d, mad = shipped_thresholds()
    pictures = demo_pictures()
    df = image_rows({product.sku: picture for product, picture in pictures})
    i, j, _ = NearDuplicateIndex(df["phash"].to_numpy()).pairs_within(p)
    fooled = (hamming(df["dhash"].to_numpy()[i], df["dhash"].to_numpy()[j]) <= d).sum()
    assert fooled > 150  # the hashes alone would merge hundreds of pairs of different products
    result = deduplicate(df, p, d, mad)
    assert result.duplicates.empty and len(result.kept) == 240

    copies = {}
    for product, picture in pictures[:20]:
        copies[f"{product.sku}-flip"] = reencoded(ImageOps.mirror(picture))
        copies[f"{product.sku}-darker"] = reencoded(ImageEnhance.Brightness(picture).enhance(0.8))
    with_copies = deduplicate(pd.concat([df, image_rows(copies)], ignore_index=True), p, d, mad)
    assert len(with_copies.kept) == 240
    kept_of = dict(zip(with_copies.duplicates["item_id"], with_copies.duplicates["kept_item_id"]))
    assert all(kept_of[name] == name.rsplit("-", 1)[0] for name in copies)


def test_a_colour_variant_of_a_demo_silhouette_is_not_merged_even_mirrored():
    """The same drawing (one random state: silhouette, pattern, fabric, background) in another style's
    colours is another product, also when one of them is mirrored."""
    from fashionnet_tools.demo_store.draw import draw_garment

    p, d, mad = shipped_thresholds()
    for k in range(8):
        variants = {
            style: reencoded(draw_garment("solid", "cotton", style, "half-sleeve", random.Random(k)), 92)
            for style in ("casual", "formal", "winter")
        }
        variants.update(
            {f"{style}-flipped": reencoded(ImageOps.mirror(image), 92) for style, image in list(variants.items())}
        )
        df = image_rows(variants)
        assert len(deduplicate(df, p, d, None).kept) < 3  # the hashes alone merge colour variants
        result = deduplicate(df, p, d, mad)
        # Only each style's own mirrored copy merges with it.
        assert result.kept["item_id"].tolist() == ["casual", "formal", "winter"]
        assert dict(zip(result.duplicates["item_id"], result.duplicates["kept_item_id"])) == {
            "casual-flipped": "casual",
            "formal-flipped": "formal",
            "winter-flipped": "winter",
        }


def test_prior_rows_without_mirror_hashes_still_match_mirrored_copies():
    """Hash index files written before mirror hashes existed: missing columns or nulls."""
    p, d, mad = shipped_thresholds()
    old, other = scene(6), scene(7)
    prior = image_rows({"old": old, "old-other": other}, mirror=False)
    prior["cluster_id"] = ["c-old", "c-other"]
    prior["batch_id"] = "ingest-20260101"
    new = image_rows({"new-flipped": reencoded(ImageOps.mirror(old)), "new-other": scene(8)})
    result = deduplicate(new, p, d, mad, prior=prior)
    assert result.kept["item_id"].tolist() == ["new-other"]
    assert result.duplicates[["item_id", "kept_item_id", "kind", "kept_batch_id"]].values.tolist() == [
        ["new-flipped", "old", "near_mirror", "ingest-20260101"]
    ]
    # Nullable mirror columns with nulls read the same; a new row without mirror hashes still finds the
    # flipped copy through the prior row's mirror hashes.
    prior["phash_mirror"] = pd.array([None, None], dtype="UInt64")
    prior["dhash_mirror"] = pd.array([None, None], dtype="UInt64")
    assert deduplicate(new, p, d, mad, prior=prior).duplicates["item_id"].tolist() == ["new-flipped"]
    prior = image_rows({"old": old}).assign(cluster_id="c-old", batch_id="b1")
    bare = image_rows({"new-flipped": reencoded(ImageOps.mirror(old))}, mirror=False)
    assert deduplicate(bare, p, d, mad, prior=prior).kept.empty
    matches = find_prior_matches(
        PriorMatchQuery(
            HashedImages(bare["phash"], bare["dhash"], thumbnails=bare["thumbnail"].tolist()),
            HashedImages(
                prior["phash"],
                prior["dhash"],
                prior["phash_mirror"],
                prior["dhash_mirror"],
                thumbnails=prior["thumbnail"].tolist(),
            ),
            p,
            d,
            mad,
        )
    )
    assert matches == [(0, 0)]
