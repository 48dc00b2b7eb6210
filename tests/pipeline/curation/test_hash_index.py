import numpy as np
import pytest

from pipeline.curation.hash_index import (
    HashIndex,
    MultiIndexHashing,
    choose_substrings,
    flip_masks,
    query_with_mirrors,
    substring_radii,
    substring_widths,
)


def planted(n: int, radius: int, seed: int) -> np.ndarray:
    """Random hashes, a fifth of them copies of others with up to ``radius + 2`` bits flipped."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    for target in range(0, n, 5):
        source = int(rng.integers(1, n // 5)) * 5 + 1  # never a target, so never overwritten
        mask = sum(1 << int(b) for b in rng.choice(64, size=int(rng.integers(0, radius + 3)), replace=False))
        hashes[target] = hashes[min(source, n - 1)] ^ np.uint64(mask)
    return hashes


def as_list(triplet):
    return [a.tolist() for a in triplet]


@pytest.mark.parametrize("radius", [0, 1, 3, 6, 8, 10])
@pytest.mark.parametrize("substrings", [3, 4, 5])
def test_mih_pairs_equal_brute_force(radius, substrings, monkeypatch):
    monkeypatch.setattr("pipeline.curation.hash_index.MIN_INDEXED_FOR_MIH", 0)
    hashes = planted(3_000, radius, seed=radius * 10 + substrings)
    hashes[7] = hashes[8] = hashes[9]  # a bucket shared by three rows
    expected = as_list(HashIndex(hashes).pairs_within(radius))
    assert as_list(MultiIndexHashing(hashes, substrings=substrings).pairs_within(radius)) == expected
    assert len(expected[0]) >= 3


@pytest.mark.parametrize("radius", [0, 2, 8])
def test_mih_queries_equal_brute_force(radius, monkeypatch):
    monkeypatch.setattr("pipeline.curation.hash_index.MIN_INDEXED_FOR_MIH", 0)
    hashes = planted(4_000, radius, seed=radius)
    rng = np.random.default_rng(radius + 100)
    flips = (np.uint64(1) << rng.integers(0, 64, size=300).astype(np.uint64)) * (np.arange(300) % 2 == 1)
    queries = hashes[rng.integers(0, len(hashes), size=300)] ^ flips.astype(np.uint64)
    expected = as_list(HashIndex(hashes).query(queries, radius))
    for m in (3, 4):
        assert as_list(MultiIndexHashing(hashes, substrings=m).query(queries, radius)) == expected
    assert len(expected[0]) >= 150


def test_a_pair_at_exactly_the_radius_spread_over_all_substrings_is_found(monkeypatch):
    """The pigeonhole worst case: 8 differing bits split 3/3/2 over three substrings."""
    monkeypatch.setattr("pipeline.curation.hash_index.MIN_INDEXED_FOR_MIH", 0)
    rng = np.random.default_rng(3)
    hashes = rng.integers(0, np.iinfo(np.uint64).max, size=500, dtype=np.uint64, endpoint=True)
    mask = sum(1 << b for b in (63, 60, 50, 40, 35, 30, 10, 3))
    hashes[1] = hashes[0] ^ np.uint64(mask)
    i, j, d = MultiIndexHashing(hashes, substrings=3).pairs_within(8)
    assert (0, 1, 8) in set(zip(i.tolist(), j.tolist(), d.tolist()))
    i, _, _ = MultiIndexHashing(hashes, substrings=3).pairs_within(7)
    assert 0 not in i.tolist()


def test_workers_give_the_same_answer(monkeypatch):
    monkeypatch.setattr("pipeline.curation.hash_index.MIN_INDEXED_FOR_MIH", 0)
    hashes = planted(2_000, 6, seed=9)
    assert as_list(MultiIndexHashing(hashes, workers=2).pairs_within(6)) == as_list(HashIndex(hashes).pairs_within(6))


def test_substring_plan():
    assert substring_widths(3) == [22, 21, 21] and sum(substring_widths(5)) == 64
    assert substring_radii(8, 3) == [2, 2, 2]
    assert substring_radii(8, 4) == [2, 1, 1, 1]
    assert substring_radii(6, 3) == [2, 1, 1]
    assert substring_radii(2, 4) == [0, 0, 0, -1]  # the fourth substring need not be probed
    masks = flip_masks(5, 2)
    assert len(masks) == 1 + 5 + 10 == len(set(masks.tolist()))
    assert choose_substrings(1_000_000, 1_000_000, 8) == 3


def test_empty_inputs():
    empty = np.zeros(0, dtype=np.uint64)
    assert as_list(MultiIndexHashing(empty).pairs_within(4)) == [[], [], []]
    assert as_list(MultiIndexHashing(np.arange(5, dtype=np.uint64)).query(empty, 4)) == [[], [], []]


@pytest.mark.parametrize("mih", [False, True])
def test_query_with_mirrors_answers_both_query_sets_exactly(mih, monkeypatch):
    """Own and mirror hashes in one search: each set's answer equals a brute-force query of it alone."""
    monkeypatch.setattr("pipeline.curation.hash_index.MIN_INDEXED_FOR_MIH", 0 if mih else 10**9)
    hashes = planted(3_000, 6, seed=21)
    rng = np.random.default_rng(22)
    own = hashes[rng.integers(0, len(hashes), size=200)] ^ np.uint64(0b1011)
    mirrors = hashes[rng.integers(0, len(hashes), size=150)] ^ np.uint64(0b11 << 40)
    mirrors[:50] = rng.integers(0, np.iinfo(np.uint64).max, size=50, dtype=np.uint64, endpoint=True)
    found_own, found_mirror = query_with_mirrors(MultiIndexHashing(hashes), own, mirrors, 6)
    assert as_list(found_own) == as_list(HashIndex(hashes).query(own, 6))
    assert as_list(found_mirror) == as_list(HashIndex(hashes).query(mirrors, 6))
    assert len(found_own[0]) >= 200 and set(found_mirror[0].tolist()) >= set(range(50, 150))
    empty = np.zeros(0, dtype=np.uint64)
    assert as_list(query_with_mirrors(MultiIndexHashing(hashes), empty, mirrors, 6)[1]) == as_list(found_mirror)
