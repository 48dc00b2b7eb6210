"""The fashion-vector repository without the networks: schema, plan, shards, atomic commit, reads.

Inference is replaced by a deterministic fake (``fake_infer``) that stages vectors the way
``pipeline.repository.infer.infer_shard`` does; tests/models/test_inference.py runs the real networks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline import store_layout
from pipeline.repository import commit as RC
from pipeline.repository import dataset as R
from pipeline.repository import infer as RI
from pipeline.repository import plan as RP
from pipeline.settings import RepositorySettings, get_settings
from tests.conftest import REPO_ROOT

ATTRIBUTES = ["pattern", "shape"]
CLASSES = {"pattern": ["checkered", "striped", "solid"], "shape": ["full-sleeve", "half-sleeve", "sleeveless"]}
NIGHT1, NIGHT2 = date(2026, 11, 1), date(2026, 11, 2)
T1 = datetime(2026, 11, 1, 2, 5, tzinfo=UTC)
T2 = datetime(2026, 11, 2, 2, 5, tzinfo=UTC)


def item_id(n: int) -> str:
    return hashlib.sha1(f"https://shop.example/p/{n}".encode()).hexdigest()[:20]


def publish(store, version: str, attributes=ATTRIBUTES, classes=CLASSES) -> None:
    for attribute in attributes:
        store.write_json(f"models/{attribute}/current.json", {"version": version, "classes": list(classes[attribute])})


def write_batch(
    store, batch_id: str, numbers, *, crawled_at=T1, retailer="demo-store", price=None, image=None
) -> list[str]:
    """``curation/<batch_id>/accepted.parquet`` with items ``numbers`` (no image bytes: inference is faked).
    ``price`` / ``image``: {n: value} overrides of the price and of the image content."""
    rows = []
    for n in numbers:
        rows.append(
            {
                "item_id": item_id(n),
                "retailer": retailer,
                "product_url": f"https://shop.example/p/{n}",
                "sku": f"S{n}",
                "title": f"shirt {n}",
                "price": (price or {}).get(n, 10.0 + n),
                "currency": "EUR",
                "category": "shirts",
                "image_url": f"https://shop.example/i/{n}.jpg",
                "image_key": f"images/full/{n}.jpg",
                "crawled_at": crawled_at,
                "content_sha256": hashlib.sha256(f"{n}:{(image or {}).get(n, 0)}".encode()).hexdigest(),
                "phash": 2**63 + n,
                "dhash": n,
                "phash_mirror": None,
                "width": 48,
                "height": 48,
            }
        )
    types = {"phash": pa.uint64(), "dhash": pa.uint64(), "phash_mirror": pa.uint64()}
    table = pa.table({k: pa.array([r[k] for r in rows], types.get(k)) for k in rows[0]})
    store.write_parquet(f"curation/{batch_id}/accepted.parquet", table)
    return [r["item_id"] for r in rows]


def sized(config: dict | None) -> RepositorySettings | None:
    """``settings.repository`` with ``config`` (some of its keys) replacing its values; None (the
    settings' own) without ``config``."""
    return None if config is None else dataclasses.replace(get_settings().repository, **config)


def fake_infer(store, commit_id: str, inferred_at: datetime, skip=()) -> int:
    """Stage every shard's vectors: classes and embeddings derived from item id and model version."""
    info, _ = RP.read_plan(store, commit_id)
    total = 0
    for shard in range(info["shards"]):
        _, items = RP.shard_items(store, commit_id, shard)
        ids = [i for i in items["item_id"].to_pylist() if i not in skip]
        columns: dict[str, list] = {"item_id": ids}
        for attribute in info["attributes"]:
            version, classes = info["versions"][attribute], info["classes"][attribute]
            picks = [int(hashlib.sha1(f"{i}{version}".encode()).hexdigest(), 16) % len(classes) for i in ids]
            columns[attribute] = [classes[p] for p in picks]
            columns[f"{attribute}_prob"] = [0.8] * len(ids)
            columns[f"{attribute}_probs"] = [
                [0.8 if c == p else 0.2 / (len(classes) - 1) for c in range(len(classes))] for p in picks
            ]
            columns[f"{attribute}_model_version"] = [version] * len(ids)
        columns["embedding"] = [[0.6, 0.8, 0.0] for _ in ids]
        columns["embedding_source"] = ["fake"] * len(ids)
        columns["inferred_at"] = [inferred_at] * len(ids)
        skipped = [i for i in items["item_id"].to_pylist() if i in skip]
        RI.write_shard(
            store, commit_id, shard, pa.table(columns), {"versions": info["versions"], "skipped_item_ids": skipped}
        )
        total += len(ids)
    return total


def refresh(
    store,
    commit_id: str,
    batch_id: str | None,
    inferred_at: datetime,
    *,
    config=None,
    skip=(),
    crawl_date=None,
    on_publish=None,
    attributes=ATTRIBUTES,
) -> tuple[dict, dict]:
    request = RP.RefreshPlanRequest(commit_id, attributes, batch_id=batch_id, crawl_date=crawl_date)
    plan = RP.plan_refresh(store, request, sized(config))
    fake_infer(store, commit_id, inferred_at, skip)
    return plan, RC.commit_refresh(store, commit_id, repository=sized(config), on_publish=on_publish)


def file_bytes(store) -> dict[str, bytes]:
    return {k: store.get_bytes(k) for k in R.data_keys(store)}


# -- schema --------------------------------------------------------------------------------------------
def test_the_schema_file_defines_the_columns_in_documented_order():
    schema = R.repository_schema(ATTRIBUTES)
    assert schema.names == [
        "item_id",
        "retailer",
        "product_url",
        "title",
        "price",
        "currency",
        "category",
        "image_key",
        "phash",
        "phash_mirror",
        "dhash",
        "content_sha256",
        "crawled_at",
        "crawl_date",
        "pattern",
        "pattern_prob",
        "pattern_probs",
        "pattern_model_version",
        "shape",
        "shape_prob",
        "shape_probs",
        "shape_model_version",
        "embedding",
        "embedding_source",
        "inferred_at",
    ]
    types = {f.name: f.type for f in schema}
    assert types["price"] == pa.float64() and types["phash"] == types["dhash"] == types["phash_mirror"] == pa.uint64()
    assert types["crawled_at"] == types["inferred_at"] == pa.timestamp("us", tz="UTC")
    assert types["crawl_date"] == pa.date32() and types["pattern_prob"] == pa.float32()
    assert types["pattern_probs"] == types["embedding"] == pa.list_(pa.float32())
    assert R.file_schema(ATTRIBUTES).names == [n for n in schema.names if n not in ("retailer", "crawl_date")]
    assert schema.metadata[b"fashionnet.schema_version"] == str(R.SCHEMA_VERSION).encode()


def test_the_readme_documents_the_repository_and_its_schema_version():
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## The fashion-vector repository", 1)[1].split("\n## ", 1)[0]
    assert f"schema version {R.SCHEMA_VERSION}" in section
    assert "pipeline/repository/schema.json" in section and "docs/analysts.md" in section
    spec = json.loads(R.SCHEMA_FILE.read_text())
    for column in [c["name"] for c in spec["columns"]] + ["<attr>_probs", "<attr>_model_version"]:
        assert f"`{column}`" in section, column


def test_an_empty_repository_reads_as_an_empty_table_with_the_taxonomy_columns(any_store):
    table = R.read_repository(any_store)
    assert table.num_rows == 0
    assert {"item_id", "crawl_date", "retailer", "pattern_probs", "embedding"} <= set(table.column_names)


# -- refresh: plan, shards, commit ---------------------------------------------------------------------
def test_a_first_night_writes_one_partition_with_one_row_per_item(any_store):
    publish(any_store, "v1")
    ids = write_batch(any_store, "catalog-20261101", range(6))
    plan, record = refresh(any_store, "catalog-20261101", "catalog-20261101", T1)
    assert plan["actions"] == {"new": 6, "image": 0, "model": 0, "catalog": 0} and plan["shards"] == 1
    assert R.data_keys(any_store) == [
        "repository/fashion_vectors/crawl_date=2026-11-01/retailer=demo-store/part-00000-of-00001.parquet"
    ]
    table = R.read_repository(any_store)
    assert table.column_names == R.repository_schema(ATTRIBUTES).names
    assert table["item_id"].to_pylist() == sorted(ids)
    assert set(table["crawl_date"].to_pylist()) == {NIGHT1} and set(table["retailer"].to_pylist()) == {"demo-store"}
    assert table.schema.field("crawl_date").type == pa.date32()
    assert table["phash"].to_pylist()[0] >= 2**63  # uint64 survives
    assert record["repository_rows"] == 6 and any_store.exists("repository/commits/catalog-20261101.json")
    assert any_store.list(store_layout.REPOSITORY_STAGING_PREFIX) == []  # the staging is gone after the commit


def test_rerunning_a_night_infers_nothing_and_rewrites_nothing(any_store):
    publish(any_store, "v1")
    write_batch(any_store, "catalog-20261101", range(5))
    refresh(any_store, "catalog-20261101", "catalog-20261101", T1)
    before, table = file_bytes(any_store), R.read_repository(any_store)
    plan, record = refresh(any_store, "catalog-20261101", "catalog-20261101", T2)
    assert plan["to_infer"] == 0 and plan["actions"] == {"new": 0, "image": 0, "model": 0, "catalog": 0}
    assert record["files_written"] == [] and file_bytes(any_store) == before
    assert R.read_repository(any_store).equals(table)


def test_a_night_run_twice_leaves_every_repository_object_identical(any_store):
    """The nightly refresh rerun for the same date (plan -> every shard -> commit, on the same store):
    every object under ``repository/`` (data files, _common_metadata, the commit records) keeps its
    bytes and row count, nothing is added or left in staging. inferred_at and committed_at are run
    timestamps, but a rerun infers and commits nothing, so they do not change either: the commit
    record of the run that did the work is kept, not replaced by one that says nothing happened."""
    publish(any_store, "v1")
    write_batch(any_store, "catalog-20261101", range(5))
    refresh(any_store, "catalog-20261101", "catalog-20261101", T1, config={"max_file_rows": 2})
    publish(any_store, "v2", ["shape"])
    write_batch(any_store, "catalog-20261102", range(8), crawled_at=T2, price={1: 42.0})
    _, first = refresh(
        any_store, "catalog-20261102", "catalog-20261102", T2, config={"max_file_rows": 2, "shard_size": 3}
    )

    def objects() -> dict[str, tuple[bytes, int | None]]:
        return {
            k: (any_store.get_bytes(k), any_store.read_parquet(k).num_rows if k.endswith(".parquet") else None)
            for k in any_store.list("repository")
        }

    before = objects()
    assert len(R.data_keys(any_store)) == 5 and sum(n or 0 for _, n in before.values()) == 8
    plan, again = refresh(
        any_store,
        "catalog-20261102",
        "catalog-20261102",
        T2 + timedelta(hours=3),
        config={"max_file_rows": 2, "shard_size": 3},
    )
    assert plan["to_infer"] == 0 and again["files_written"] == [] and again["repository_rows"] == 8
    assert objects() == before
    assert any_store.read_json("repository/commits/catalog-20261102.json") == first


def test_a_commit_retried_after_it_completed_returns_its_record_and_changes_nothing(any_store):
    """Airflow may run the commit task again after it succeeded (a cleared task): that is no error."""
    publish(any_store, "v1")
    write_batch(any_store, "catalog-20261101", range(3))
    _, record = refresh(any_store, "catalog-20261101", "catalog-20261101", T1)
    before = file_bytes(any_store)
    assert RC.commit_refresh(any_store, "catalog-20261101") == record
    assert file_bytes(any_store) == before and any_store.list(store_layout.REPOSITORY_STAGING_PREFIX) == []


def test_a_commit_that_fails_before_its_moves_changes_nothing_readers_see(file_store, monkeypatch):
    """Every new file is staged before the first one is moved into the dataset: a commit that dies
    while it merges or uploads (here the third file's upload fails) leaves the last commit intact."""
    publish(file_store, "v1")
    write_batch(file_store, "catalog-20261101", range(8))
    config = {"max_file_rows": 2}
    refresh(file_store, "catalog-20261101", "catalog-20261101", T1, config=config)
    before, table = file_bytes(file_store), R.read_repository(file_store)
    publish(file_store, "v2")
    RP.plan_refresh(file_store, RP.RefreshPlanRequest("rescore-b", ATTRIBUTES), sized(config))
    fake_infer(file_store, "rescore-b", T2)
    real_put, uploads = file_store.put_bytes, []

    def put_bytes(key: str, data: bytes) -> str:
        if "/publish/" in key:
            uploads.append(key)
            if len(uploads) == 3:
                raise OSError("No space left on device")
        return real_put(key, data)

    monkeypatch.setattr(file_store, "put_bytes", put_bytes)
    with pytest.raises(OSError, match="No space"):
        RC.commit_refresh(file_store, "rescore-b", repository=sized(config))
    assert file_bytes(file_store) == before and R.read_repository(file_store).equals(table)
    monkeypatch.undo()
    RC.commit_refresh(file_store, "rescore-b", repository=sized(config))  # the retry
    assert set(R.read_repository(file_store)["pattern_model_version"].to_pylist()) == {"v2"}


def test_a_second_night_adds_new_items_and_updates_changed_ones_in_place(file_store):
    publish(file_store, "v1")
    first = write_batch(file_store, "catalog-20261101", range(5))
    refresh(file_store, "catalog-20261101", "catalog-20261101", T1)
    # Night 2: items 0-2 unchanged, item 3 has a new price, item 4 a new image, items 5-6 are new.
    second = write_batch(file_store, "catalog-20261102", range(7), crawled_at=T2, price={3: 99.0}, image={4: 1})
    plan, _ = refresh(file_store, "catalog-20261102", "catalog-20261102", T2)
    assert plan["actions"] == {"new": 2, "image": 1, "model": 0, "catalog": 1} and plan["to_infer"] == 3

    rows = {r["item_id"]: r for r in R.read_repository(file_store).to_pylist()}
    assert len(rows) == 7 and set(rows) == set(first) | set(second)
    assert [rows[i]["crawl_date"] for i in second] == [NIGHT1] * 5 + [NIGHT2] * 2  # items keep their partition
    assert rows[first[3]]["price"] == 99.0 and rows[first[3]]["inferred_at"] == T1  # stored vectors kept
    assert rows[first[3]]["crawled_at"] == T2
    assert rows[first[4]]["inferred_at"] == T2 and rows[first[0]]["inferred_at"] == T1
    assert rows[first[0]]["crawled_at"] == T1  # an unchanged row is not rewritten
    assert sorted(k.split("/")[2] for k in R.data_keys(file_store)) == [
        "crawl_date=2026-11-01",
        "crawl_date=2026-11-02",
    ]
    night2 = R.read_repository(file_store, columns=["item_id"], filter=[("crawl_date", "=", NIGHT2)])
    assert night2["item_id"].to_pylist() == sorted(second[5:])


def test_an_older_batch_never_overwrites_a_newer_row(file_store):
    publish(file_store, "v1")
    write_batch(file_store, "catalog-20261102", range(3), crawled_at=T2, price={1: 50.0})
    refresh(file_store, "catalog-20261102", "catalog-20261102", T2)
    write_batch(file_store, "catalog-20261101", range(3), crawled_at=T1)  # a late rerun of the night before
    plan, _ = refresh(file_store, "catalog-20261101", "catalog-20261101", T2)
    assert plan["actions"] == {"new": 0, "image": 0, "model": 0, "catalog": 0}
    rows = {r["item_id"]: r for r in R.read_repository(file_store).to_pylist()}
    assert rows[item_id(1)]["price"] == 50.0 and rows[item_id(1)]["crawled_at"] == T2


def test_new_models_rescore_every_row_where_it_is(any_store):
    publish(any_store, "v1")
    write_batch(any_store, "catalog-20261101", range(4))
    refresh(any_store, "catalog-20261101", "catalog-20261101", T1)
    write_batch(any_store, "catalog-20261102", range(4, 7), crawled_at=T2, retailer="other-shop")
    refresh(any_store, "catalog-20261102", "catalog-20261102", T2)
    keys_before = R.data_keys(any_store)

    publish(any_store, "v2", ["shape"])  # only shape has a new version
    plan, record = refresh(any_store, "rescore-20261102T120000", None, T2 + timedelta(hours=10))
    assert plan["actions"] == {"new": 0, "image": 0, "model": 7, "catalog": 0} and plan["batch_items"] == 0
    table = R.read_repository(any_store)
    assert table.num_rows == 7 and pc.count_distinct(table["item_id"]).as_py() == 7
    assert set(table["shape_model_version"].to_pylist()) == {"v2"} and set(
        table["pattern_model_version"].to_pylist()
    ) == {"v1"}
    assert R.data_keys(any_store) == keys_before  # the same files, rewritten: no row moved
    assert sorted(set(zip(table["retailer"].to_pylist(), table["crawl_date"].to_pylist()))) == [
        ("demo-store", NIGHT1),
        ("other-shop", NIGHT2),
    ]
    # Once re-scored, nothing is left to do.
    again, _ = refresh(any_store, "rescore-20261102T130000", None, T2)
    assert again["to_infer"] == 0 and record["inferred"] == 7


def test_a_nightly_run_rescores_items_missing_from_its_batch(file_store):
    publish(file_store, "v1")
    write_batch(file_store, "catalog-20261101", range(4))
    refresh(file_store, "catalog-20261101", "catalog-20261101", T1)
    publish(file_store, "v2")
    write_batch(file_store, "catalog-20261102", [0, 1, 9], crawled_at=T2)
    plan, _ = refresh(file_store, "catalog-20261102", "catalog-20261102", T2)
    assert plan["actions"] == {"new": 1, "image": 0, "model": 4, "catalog": 0}
    table = R.read_repository(file_store)
    assert table.num_rows == 5 and set(table["pattern_model_version"].to_pylist()) == {"v2"}


def test_items_whose_image_cannot_be_read_are_left_out_or_kept_as_they_were(file_store):
    publish(file_store, "v1")
    ids = write_batch(file_store, "catalog-20261101", range(4))
    refresh(file_store, "catalog-20261101", "catalog-20261101", T1, skip={item_id(3)})
    assert R.read_repository(file_store)["item_id"].to_pylist() == sorted(ids[:3])
    publish(file_store, "v2")
    _, record = refresh(file_store, "rescore-x", None, T2, skip={ids[0]})
    rows = {r["item_id"]: r for r in R.read_repository(file_store).to_pylist()}
    assert rows[ids[0]]["pattern_model_version"] == "v1" and rows[ids[1]]["pattern_model_version"] == "v2"
    assert record["skipped_item_ids"] == [ids[0]]


def test_shards_are_sized_from_the_settings_and_capped(file_store):
    publish(file_store, "v1")
    write_batch(file_store, "catalog-20261101", range(10))
    request = RP.RefreshPlanRequest("catalog-20261101", ATTRIBUTES, batch_id="catalog-20261101")
    plan = RP.plan_refresh(file_store, request, sized({"shard_size": 3, "max_shards": 256}))
    assert plan["shards"] == 4
    _, rows = RP.read_plan(file_store, "catalog-20261101")
    sizes = [pc.sum(pc.equal(rows["shard"], s)).as_py() for s in range(4)]
    assert sum(sizes) == 10 and max(sizes) - min(sizes) <= 1
    capped = RP.plan_refresh(file_store, request, sized({"shard_size": 1, "max_shards": 3}))
    assert capped["shards"] == 3
    with pytest.raises(R.RepositoryError, match="shard 0 has no output"):
        RC.commit_refresh(file_store, "catalog-20261101")


def test_nothing_to_infer_still_plans_one_shard(file_store):
    """An empty list would skip the mapped task and the commit after it in Airflow."""
    publish(file_store, "v1")
    plan, record = refresh(file_store, "rescore-empty", None, T1)
    assert plan["shards"] == 1 and plan["to_infer"] == 0
    assert record["files_written"] == [] and record["repository_rows"] == 0


def test_large_partitions_spread_over_files_by_item_hash(file_store):
    publish(file_store, "v1")
    write_batch(file_store, "catalog-20261101", range(7))
    config = {"max_file_rows": 3, "row_group_rows": 2}
    refresh(file_store, "catalog-20261101", "catalog-20261101", T1, config=config)
    keys = R.data_keys(file_store)
    assert [k.rsplit("/", 1)[1] for k in keys] == [f"part-{i:05d}-of-00003.parquet" for i in range(3)][: len(keys)]
    for key in keys:
        parquet = pq.ParquetFile(file_store.local_path(key))
        ids = parquet.read(columns=["item_id"])["item_id"].to_pylist()
        assert ids == sorted(ids) and {R.bucket(i, 3) for i in ids} == {int(key.rsplit("part-", 1)[1][:5])}
        assert all(parquet.metadata.row_group(g).num_rows <= 2 for g in range(parquet.metadata.num_row_groups))
        assert parquet.metadata.row_group(0).sorting_columns == (pq.SortingColumn(0),)
        assert parquet.schema_arrow.metadata[b"fashionnet.schema_version"] == str(R.SCHEMA_VERSION).encode()
        assert json.loads(parquet.schema_arrow.metadata[b"fashionnet.classes"]) == CLASSES
    # More items on the same night (a rerun that found more): the partition keeps its three files.
    write_batch(file_store, "catalog-20261101", range(12))
    refresh(file_store, "catalog-20261101", "catalog-20261101", T1, config=config)
    assert all(k.endswith("-of-00003.parquet") for k in R.data_keys(file_store))
    ids = R.read_repository(file_store)["item_id"].to_pylist()
    assert len(ids) == 12 and ids == sorted(ids)
    unsorted = R.read_repository(file_store, columns=["item_id"], sort=False)["item_id"].to_pylist()
    assert sorted(unsorted) == ids and unsorted != ids  # file order: by file, then item_id


def test_readers_during_a_commit_see_whole_files_and_every_item_once(any_store):
    """After every file the commit publishes, a reader listing the dataset sees complete files, every
    item exactly once and nothing temporary (staging lives outside the dataset prefix)."""
    publish(any_store, "v1")
    write_batch(any_store, "catalog-20261101", range(9))
    config = {"max_file_rows": 3}
    refresh(any_store, "catalog-20261101", "catalog-20261101", T1, config=config)
    publish(any_store, "v2")
    write_batch(any_store, "catalog-20261102", range(12), crawled_at=T2)
    seen: list[tuple[int, int, set[str]]] = []

    def look(key: str) -> None:
        table = R.read_repository(any_store, columns=["item_id", "pattern_model_version"])
        versions = table["pattern_model_version"].to_pylist()
        listed = [k for k in any_store.list(store_layout.FASHION_VECTORS_PREFIX) if not k.endswith("_common_metadata")]
        assert all(k.endswith(".parquet") and "/part-" in k for k in listed), listed
        seen.append((table.num_rows, pc.count_distinct(table["item_id"]).as_py(), set(versions)))

    _, record = refresh(any_store, "catalog-20261102", "catalog-20261102", T2, config=config, on_publish=look)
    assert len(seen) == len(record["files_written"]) >= 4
    assert all(rows == distinct for rows, distinct, _ in seen)
    assert seen[0][2] == {"v1", "v2"} and seen[-1][2] == {"v2"}  # old and new rows side by side mid-commit
    assert seen[-1][0] == 12


def test_a_commit_that_fails_midway_completes_when_rerun(file_store):
    publish(file_store, "v1")
    write_batch(file_store, "catalog-20261101", range(8))
    config = {"max_file_rows": 2}
    refresh(file_store, "catalog-20261101", "catalog-20261101", T1, config=config)
    publish(file_store, "v2")
    RP.plan_refresh(file_store, RP.RefreshPlanRequest("rescore-a", ATTRIBUTES), sized(config))
    fake_infer(file_store, "rescore-a", T2)

    def crash(key: str) -> None:
        raise OSError("killed")

    with pytest.raises(OSError):
        RC.commit_refresh(file_store, "rescore-a", repository=sized(config), on_publish=crash)
    partial = R.read_repository(file_store)
    assert partial.num_rows == 8 and set(partial["pattern_model_version"].to_pylist()) == {"v1", "v2"}
    RC.commit_refresh(file_store, "rescore-a", repository=sized(config))  # the task retried
    done = R.read_repository(file_store)
    assert done.num_rows == 8 and set(done["pattern_model_version"].to_pylist()) == {"v2"}


def test_read_repository_projects_filters_and_refuses_duplicates(file_store):
    publish(file_store, "v1")
    write_batch(file_store, "catalog-20261101", range(4))
    refresh(file_store, "catalog-20261101", "catalog-20261101", T1)
    table = R.read_repository(file_store, columns=["title", "price"], filter=pc.field("price") >= 12.0)
    assert table.column_names == ["title", "price"] and sorted(table["price"].to_pylist()) == [12.0, 13.0]
    # A stray copy of a file in another partition breaks the one-row-per-item contract: it is an error.
    key = R.data_keys(file_store)[0]
    file_store.put_bytes(key.replace("crawl_date=2026-11-01", "crawl_date=2026-11-05"), file_store.get_bytes(key))
    with pytest.raises(R.RepositoryError, match="more than one row"):
        R.read_repository(file_store)


def test_a_reader_without_fashionnet_reads_the_same_dataset(file_store):
    """Plain pyarrow on the prefix (what analysts do) finds the same rows and typed partitions."""
    import pyarrow.dataset as ds

    publish(file_store, "v1")
    write_batch(file_store, "catalog-20261101", range(3))
    refresh(file_store, "catalog-20261101", "catalog-20261101", T1)
    plain = ds.dataset(
        file_store.local_path(store_layout.FASHION_VECTORS_PREFIX), format="parquet", partitioning="hive"
    )
    assert plain.count_rows() == 3
    assert (
        sorted(plain.to_table(columns=["item_id"])["item_id"].to_pylist())
        == R.read_repository(file_store, columns=["item_id"])["item_id"].to_pylist()
    )


def test_read_repository_rereads_when_a_file_changed_under_it(file_store, monkeypatch):
    """On S3 a read overlapping the replacement of its file fails (s3fs pins the ETag); it is retried."""
    publish(file_store, "v1")
    write_batch(file_store, "catalog-20261101", range(3))
    refresh(file_store, "catalog-20261101", "catalog-20261101", T1)
    real, failures = R.repository_dataset, []

    class ReplacedWhileRead:
        def __init__(self, dataset):
            self.schema = dataset.schema
            self.dataset = dataset

        def to_table(self, **kwargs):
            if not failures:
                failures.append(1)
                raise OSError("At least one of the pre-conditions you specified did not hold")
            return self.dataset.to_table(**kwargs)

    monkeypatch.setattr(R, "repository_dataset", lambda store, **kwargs: ReplacedWhileRead(real(store, **kwargs)))
    monkeypatch.setattr(R.time, "sleep", lambda seconds: None)
    assert R.read_repository(file_store).num_rows == 3 and failures == [1]


def test_a_commit_leaves_no_staging_folder(file_store):
    publish(file_store, "v1")
    write_batch(file_store, "catalog-20261101", range(2))
    refresh(file_store, "catalog-20261101", "catalog-20261101", T1)
    assert R.read_repository(file_store).num_rows == 2
    assert not os.path.exists(file_store.local_path("repository/_staging/catalog-20261101"))  # no empty folders left


# -- several retailers in one night (issue 11) ---------------------------------------------------------
def refresh_batches(
    store, commit_id: str, batch_ids: list[str], inferred_at: datetime, failed=None
) -> tuple[dict, dict]:
    request = RP.RefreshPlanRequest(commit_id, ATTRIBUTES, batch_ids=batch_ids, failed_retailers=failed or ())
    plan = RP.plan_refresh(store, request)
    fake_infer(store, commit_id, inferred_at)
    return plan, RC.commit_refresh(store, commit_id)


def test_one_night_commits_the_batch_of_every_retailer_and_records_the_failed_ones(any_store):
    publish(any_store, "v1")
    acme = write_batch(any_store, "catalog-20261101-acme", range(0, 4), retailer="acme")
    demo = write_batch(any_store, "catalog-20261101-demo-store", range(10, 13), retailer="demo-store")
    plan, record = refresh_batches(
        any_store,
        "catalog-20261101",
        ["catalog-20261101-demo-store", "catalog-20261101-acme"],
        T1,
        failed=["broken-shop"],
    )
    assert plan["crawl_date"] == "2026-11-01" and plan["actions"]["new"] == 7 and plan["batch_items"] == 7
    assert record["batch_ids"] == ["catalog-20261101-acme", "catalog-20261101-demo-store"]
    assert record["failed_retailers"] == ["broken-shop"] and record["batch_id"] is None
    assert any_store.read_json("repository/commits/catalog-20261101.json")["failed_retailers"] == ["broken-shop"]
    table = R.read_repository(any_store, columns=["item_id", "retailer"])
    assert dict(zip(table["item_id"].to_pylist(), table["retailer"].to_pylist())) == {
        **dict.fromkeys(acme, "acme"),
        **dict.fromkeys(demo, "demo-store"),
    }
    assert {k.split("/")[3] for k in R.data_keys(any_store)} == {"retailer=acme", "retailer=demo-store"}


def test_a_night_of_several_batches_run_twice_rewrites_nothing(file_store):
    publish(file_store, "v1")
    write_batch(file_store, "catalog-20261101-acme", range(0, 4), retailer="acme")
    write_batch(file_store, "catalog-20261101-demo-store", range(10, 13))
    batches = ["catalog-20261101-acme", "catalog-20261101-demo-store"]
    refresh_batches(file_store, "catalog-20261101", batches, T1)
    before = file_bytes(file_store)
    plan, record = refresh_batches(file_store, "catalog-20261101", list(reversed(batches)), T2)
    assert plan["to_infer"] == 0 and record["files_written"] == [] and file_bytes(file_store) == before


def test_the_same_item_in_two_batches_keeps_the_row_crawled_last(file_store):
    publish(file_store, "v1")
    write_batch(file_store, "catalog-20261101-a", [1, 2], crawled_at=T2, price={1: 99.0})
    write_batch(file_store, "catalog-20261101-b", [1], crawled_at=T1, price={1: 5.0})
    for order in (["catalog-20261101-a", "catalog-20261101-b"], ["catalog-20261101-b", "catalog-20261101-a"]):
        plan = RP.plan_refresh(file_store, RP.RefreshPlanRequest("c", ATTRIBUTES, batch_ids=order))
        _, rows = RP.read_plan(file_store, "c")
        assert plan["batch_items"] == 2 and rows.num_rows == 2
        assert dict(zip(rows["item_id"].to_pylist(), rows["price"].to_pylist()))[item_id(1)] == 99.0


def test_a_night_where_every_retailer_failed_only_rescores_and_says_so(file_store):
    publish(file_store, "v1")
    request = RP.RefreshPlanRequest(
        "catalog-20261101", ATTRIBUTES, batch_ids=[], failed_retailers=["acme"], crawl_date=NIGHT1
    )
    plan = RP.plan_refresh(file_store, request)
    assert plan["batch_ids"] == [] and plan["failed_retailers"] == ["acme"] and plan["to_infer"] == 0
    with pytest.raises(ValueError, match="batch_id or batch_ids"):
        RP.plan_refresh(
            file_store,
            RP.RefreshPlanRequest("x", ATTRIBUTES, batch_id="catalog-20261101", batch_ids=["catalog-20261101"]),
        )


def test_the_night_of_a_retailer_batch_is_its_date():
    assert RP._night_of("catalog-20261101-demo-store", None) == NIGHT1
    assert RP._night_of("catalog-20261102", None) == NIGHT2
