from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from pipeline.dataset.split import split_of, validate_ratios, write_split

RATIOS = {"train": 0.70, "validation": 0.15, "test": 0.15}
SALT = "fashionnet-split-v1"


def test_ratios_hold_on_10k_keys():
    counts = Counter(split_of(f"cluster-{n}", RATIOS, SALT) for n in range(10_000))
    assert set(counts) == set(RATIOS)
    for name, ratio in RATIOS.items():
        assert abs(counts[name] / 10_000 - ratio) < 0.02, counts


def test_split_is_deterministic_and_salted():
    keys = [f"k{n}" for n in range(200)]
    first = [split_of(k, RATIOS, SALT) for k in keys]
    assert first == [split_of(k, dict(RATIOS), SALT) for k in keys]
    assert first != [split_of(k, RATIOS, "another-salt") for k in keys]


def test_degenerate_ratios():
    assert {split_of(f"k{n}", {"train": 1.0, "validation": 0.0, "test": 0.0}, SALT) for n in range(100)} == {"train"}


@pytest.mark.parametrize(
    "ratios, message",
    [
        ({"train": 0.7, "validation": 0.2, "test": 0.2}, "sum to 1"),
        ({"train": 1.2, "validation": -0.2, "test": 0.0}, "non-negative"),
        ({}, "empty"),
    ],
)
def test_bad_ratios_are_refused(ratios, message):
    with pytest.raises(ValueError, match=message):
        validate_ratios(ratios)
    with pytest.raises(ValueError, match=message):
        split_of("k", ratios, SALT)


def items_table(rows):
    return pa.Table.from_pylist(
        [{"item_id": i, "cluster_id": c, "phash": p, "dhash": d} for i, c, p, d in rows],
        schema=pa.schema(
            [("item_id", pa.string()), ("cluster_id", pa.string()), ("phash", pa.uint64()), ("dhash", pa.uint64())]
        ),
    )


def random_items(n_clusters: int, per_cluster: int, seed: int, prefix: str):
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_clusters):
        for m in range(per_cluster):
            p, d = (int(x) for x in rng.integers(0, 2**63, size=2, dtype=np.uint64))
            rows.append((f"{prefix}{c:03d}-{m}", f"{prefix}cluster-{c}", p, d))
    return rows


def read_split(store):
    table = store.read_parquet("dataset/split.parquet")
    assert table.column_names == ["item_id", "split"]
    return dict(zip(table.column("item_id").to_pylist(), table.column("split").to_pylist()))


def test_cluster_members_share_a_split_and_rewrites_are_stable(any_store):
    rows = random_items(60, 3, seed=1, prefix="a")
    any_store.write_parquet("dataset/items.parquet", items_table(rows))
    counts = write_split(any_store)
    split = read_split(any_store)
    assert sum(counts.values()) == len(rows) == len(split) and set(counts) == {"train", "validation", "test"}
    by_cluster = {}
    for item_id, cluster_id, _, _ in rows:
        by_cluster.setdefault(cluster_id, set()).add(split[item_id])
    assert all(len(s) == 1 for s in by_cluster.values())
    assert len({next(iter(s)) for s in by_cluster.values()}) == 3
    first = any_store.get_bytes("dataset/split.parquet")
    write_split(any_store)
    assert any_store.get_bytes("dataset/split.parquet") == first


def key_with_split_other_than(split: str, prefix: str) -> str:
    return next(k for k in (f"{prefix}{n}" for n in range(1000)) if split_of(k, RATIOS, SALT) != split)


def test_new_items_never_move_old_ones_and_join_their_cluster(file_store):
    old_rows = random_items(40, 2, seed=2, prefix="old")
    file_store.write_parquet("dataset/items.parquet", items_table(old_rows))
    write_split(file_store)
    before = read_split(file_store)

    # Item old000-0 comes back from a later batch in a new cluster, with a new near copy beside it;
    # the new cluster's own hash points elsewhere, yet both stay with the old item's split.
    anchor = old_rows[0][0]
    later_cluster = key_with_split_other_than(before[anchor], "later-cluster-")
    changed = [(anchor, later_cluster, 0, 0)] + old_rows[1:]
    new_rows = random_items(30, 2, seed=3, prefix="new") + [("znear", later_cluster, 0, 0)]
    file_store.write_parquet("dataset/items.parquet", items_table(changed + new_rows))
    write_split(file_store)
    after = read_split(file_store)

    assert {k: after[k] for k in before} == before
    assert after["znear"] == before[anchor] != split_of(later_cluster, RATIOS, SALT)
    assert len(after) == len(old_rows) + len(new_rows)
    for item_id, cluster_id, _, _ in new_rows[:-1]:
        assert after[item_id] == split_of(cluster_id, RATIOS, SALT)


def test_items_that_leave_the_dataset_leave_the_split(file_store):
    rows = random_items(5, 1, seed=4, prefix="i")
    file_store.write_parquet("dataset/items.parquet", items_table(rows))
    write_split(file_store)
    file_store.write_parquet("dataset/items.parquet", items_table(rows[1:]))
    write_split(file_store)
    assert sorted(read_split(file_store)) == [r[0] for r in rows[1:]]


def labelled_items(n: int, seed: int, prefix: str = "s") -> pa.Table:
    """``n`` single-item clusters with skewed random pattern and shape labels (some unlabelled)."""
    rng = np.random.default_rng(seed)
    patterns = rng.choice(["solid", "striped", "floral", None], size=n, p=[0.6, 0.25, 0.1, 0.05])
    shapes = rng.choice(["sleeveless", "half-sleeve", "full-sleeve"], size=n, p=[0.5, 0.3, 0.2])
    return pa.Table.from_pylist(
        [
            {"item_id": f"{prefix}{k:05d}", "cluster_id": f"{prefix}cluster-{k}", "pattern": p, "shape": s}
            for k, (p, s) in enumerate(zip(patterns.tolist(), shapes.tolist()))
        ]
    )


def test_every_class_of_every_attribute_gets_the_ratios(file_store):
    n = 6_000
    file_store.write_parquet("dataset/items.parquet", labelled_items(n, seed=5))
    write_split(file_store)
    split = read_split(file_store)
    items = file_store.read_parquet("dataset/items.parquet").to_pandas()
    report = file_store.read_json("dataset/split_report.json")["strata"]
    assert set(report) == {"pattern", "shape"} and set(report["pattern"]) == {"solid", "striped", "floral"}
    for attribute in ("pattern", "shape"):
        for label, members in items.groupby(attribute):
            counts = Counter(split[i] for i in members["item_id"])
            size = len(members)
            assert report[attribute][label]["counts"] == {name: counts[name] for name in RATIOS}
            for name, ratio in RATIOS.items():
                # Four binomial standard deviations: fails for a split that ignores a stratum.
                assert abs(counts[name] / size - ratio) < 4 * (ratio * (1 - ratio) / size) ** 0.5, (attribute, label)
    assert sum(report["pattern"][c]["items"] for c in report["pattern"]) == (items["pattern"].notna()).sum()


def test_an_items_split_depends_on_its_cluster_only_not_on_labels_or_the_rest(file_store):
    table = labelled_items(400, seed=6)
    file_store.write_parquet("dataset/items.parquet", table)
    write_split(file_store)
    first = read_split(file_store)
    # A fresh store, the labels changed and three times the items: the same items get the same splits.
    relabelled = table.set_column(2, "pattern", pa.array(["solid"] * table.num_rows))
    grown = pa.concat_tables([relabelled, labelled_items(800, seed=7, prefix="t")])
    fresh = type(file_store)(file_store.uri + "-fresh")
    fresh.write_parquet("dataset/items.parquet", grown)
    write_split(fresh)
    again = read_split(fresh)
    assert {k: again[k] for k in first} == first
    assert all(
        first[i] == split_of(c, RATIOS, SALT)
        for i, c in zip(table.column("item_id").to_pylist(), table.column("cluster_id").to_pylist())
    )
