import numpy as np
import pandas as pd
import pytest

from pipeline.dedup import NearDuplicateIndex, UnionFind, colour_thumbnail, deduplicate, thumbnail_mad
from pipeline.hashing import hamming


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
    expected = {(a, b, int(full[a, b])) for a in range(len(hashes)) for b in range(a + 1, len(hashes)) if full[a, b] <= 3}
    assert found == expected and len(found) >= 45


def test_index_blocks_give_the_same_answer(monkeypatch):
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, size=50, dtype=np.uint64)
    hashes[30] = hashes[3]
    whole = NearDuplicateIndex(hashes).pairs_within(0)
    monkeypatch.setattr("pipeline.hash_index._BLOCK_CELLS", 7)
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
    df = frame([
        ("a-small", "sha-a", BASE_P, BASE_D, 64, 64, "2026-01-01"),
        ("b-big", "sha-b", flip(BASE_P, [1, 9]), flip(BASE_D, [4]), 256, 256, "2026-01-03"),
        ("c-copy", "sha-b", flip(BASE_P, [1, 9]), flip(BASE_D, [4]), 256, 256, "2026-01-02"),
        ("d-other", "sha-d", OTHER_P, OTHER_D, 128, 128, "2026-01-01"),
    ])
    result = deduplicate(df, phash_max_distance=6, dhash_max_distance=10)
    # b and c are the same bytes and the same size: the earlier crawled (c) is kept.
    assert result.kept["item_id"].tolist() == ["c-copy", "d-other"]
    assert result.kept["cluster_id"].tolist() == ["sha-b", "sha-d"]
    dups = result.duplicates.set_index("item_id")[["kept_item_id", "kind", "distance"]]
    assert dups.loc["a-small"].tolist() == ["c-copy", "near", 2]
    assert dups.loc["b-big"].tolist() == ["c-copy", "exact", 0]
    assert dict(zip(result.clusters["item_id"], result.clusters["cluster_id"])) == {
        "a-small": "sha-b", "b-big": "sha-b", "c-copy": "sha-b", "d-other": "sha-d"}


def test_ties_fall_back_to_item_id():
    df = frame([
        ("y", "sha-y", BASE_P, BASE_D, 100, 100, "2026-01-01"),
        ("x", "sha-x", flip(BASE_P, [0]), BASE_D, 100, 100, "2026-01-01"),
    ])
    assert deduplicate(df, 6, 10).kept["item_id"].tolist() == ["x"]


def test_phash_match_without_dhash_confirmation_is_not_a_duplicate():
    df = frame([
        ("a", "sha-a", BASE_P, BASE_D, 100, 100, "2026-01-01"),
        ("b", "sha-b", flip(BASE_P, [3]), flip(BASE_D, list(range(20))), 100, 100, "2026-01-01"),
    ])
    result = deduplicate(df, 6, 10)
    assert result.kept["item_id"].tolist() == ["a", "b"] and result.duplicates.empty


def test_chains_join_one_cluster():
    df = frame([
        ("a", "sha-a", BASE_P, BASE_D, 100, 100, "2026-01-01"),
        ("b", "sha-b", flip(BASE_P, [0, 1, 2, 3, 4]), BASE_D, 100, 100, "2026-01-01"),
        ("c", "sha-c", flip(BASE_P, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), BASE_D, 120, 120, "2026-01-01"),
    ])
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
    df = frame([
        ("a", "sha-a", BASE_P, BASE_D, 64, 64, "2026-01-01"),
        ("b", "sha-b", BASE_P, BASE_D, 48, 48, "2026-01-01"),
        ("c", "sha-c", BASE_P, BASE_D, 64, 64, "2026-01-02"),
    ])
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
    prior = prior_frame([
        ("old", "sha-old", BASE_P, BASE_D, 64, 64, "2026-01-01", "cluster-old", "ingest-20260101"),
        ("old-other", "sha-oo", OTHER_P, OTHER_D, 64, 64, "2026-01-01", "cluster-oo", "ingest-20260101"),
    ])
    df = frame([
        ("new-big", "sha-nb", flip(BASE_P, [2, 5]), flip(BASE_D, [1]), 512, 512, "2026-02-01"),
        ("new-exact", "sha-old", BASE_P, BASE_D, 64, 64, "2026-02-01"),
        ("new-alone", "sha-na", flip(OTHER_P, list(range(0, 64, 2))), BASE_D, 64, 64, "2026-02-01"),
    ])
    result = deduplicate(df, 6, 10, prior=prior)
    assert result.kept["item_id"].tolist() == ["new-alone"]
    assert result.kept["cluster_id"].tolist() == ["sha-na"]
    dups = result.duplicates.set_index("item_id")
    assert dups.loc["new-big", ["kept_item_id", "kind", "distance", "kept_batch_id"]].tolist() == [
        "old", "near", 2, "ingest-20260101"]
    assert dups.loc["new-exact", ["kept_item_id", "kind"]].tolist() == ["old", "exact"]
    assert dict(zip(result.clusters["item_id"], result.clusters["cluster_id"])) == {
        "new-alone": "sha-na", "new-big": "cluster-old", "new-exact": "cluster-old"}
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
    prior = prior_frame([
        ("p-small", "sha-ps", BASE_P, BASE_D, 64, 64, "2026-01-01", "c-small", "b1"),
        ("p-large", "sha-pl", flip(BASE_P, list(range(10))), BASE_D, 128, 128, "2026-01-02", "c-large", "b1"),
    ])
    df = frame([("bridge", "sha-br", flip(BASE_P, list(range(5))), BASE_D, 64, 64, "2026-02-01")])
    result = deduplicate(df, 6, 10, prior=prior)
    assert result.kept.empty
    assert result.duplicates[["kept_item_id", "kept_batch_id"]].values.tolist() == [["p-large", "b1"]]
    assert result.clusters["cluster_id"].tolist() == ["c-large"]


def test_shipped_thresholds_on_real_photos_find_resized_and_recompressed_copies_only():
    """A 40-photo slice of bench/dedup_quality.py: the shipped thresholds catch resized and
    recompressed copies and flag no pair of distinct photos (flips are knowingly missed)."""
    from tests.conftest import require_shared

    require_shared("clothing-dataset-small")
    from bench.dedup_quality import evaluate, photo_paths
    from pipeline.settings import get_settings

    curation = get_settings().curation
    shipped = (int(curation["phash_max_distance"]), int(curation["dhash_max_distance"]))
    rows = evaluate(photo_paths(40), [shipped], float(curation["thumbnail_max_mad"]), processes=1)
    confirmed = next(q for _, _, mad, q in rows if mad is not None)
    for transform in ("resize", "jpeg"):
        assert confirmed.recall[transform] >= 0.95 and confirmed.precision[transform] == 1.0
    assert confirmed.false_positive_pairs == 0
    assert confirmed.recall["flip"] < 0.2
