"""The repository refresh's infer step with real networks: incremental, idempotent, broken images,
shards with the planned versions, re-scoring (the plan and commit alone: test_repository.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pytest

from models.inference import FashionVectorizer
from models.registry import publish
from pipeline.repository.commit import commit_refresh
from pipeline.repository.dataset import read_repository, repository_schema
from pipeline.repository.infer import build_repository, build_repository_with, infer_shard
from pipeline.repository.plan import RefreshPlanRequest, plan_refresh
from pipeline.settings import get_settings
from tests.models.fashion_synthetic import SHAPES as CLASSES
from tests.models.fashion_synthetic import publish_untrained, write_accepted, write_version

ATTRIBUTES = ["shape", "pattern"]
T1 = datetime(2026, 11, 2, tzinfo=UTC)
T2 = datetime(2026, 11, 3, tzinfo=UTC)


@pytest.fixture
def published(file_store):
    return publish_untrained(file_store, ATTRIBUTES)


@pytest.fixture
def published_anywhere(any_store):
    """The same, once on a folder store and once on S3 (moto)."""
    return publish_untrained(any_store, ATTRIBUTES)


def test_build_repository_is_idempotent_and_skips_broken_images(published_anywhere):
    published = published_anywhere
    ids = write_accepted(published, "batch-20261101", ["striped", "solid", "checkered", "striped"], broken=1)
    vectorizer = FashionVectorizer.from_registry(published, ATTRIBUTES)
    summary = build_repository_with(vectorizer, published, "batch-20261101", inferred_at=T1, batch_size=2)
    assert summary["accepted"] == 5 and summary["vectorized"] == 4
    assert summary["skipped_undecodable"] == 1 and summary["skipped_item_ids"] == [ids[-1]]
    assert summary["repository_rows"] == 4
    first = read_repository(published)
    assert first.column_names == repository_schema(ATTRIBUTES).names
    assert first["item_id"].to_pylist() == sorted(ids[:4])
    assert first.schema.field("phash").type == pa.uint64()
    assert set(first["crawl_date"].to_pylist()) == {date(2026, 11, 1)}  # the batch id's night
    assert set(first["embedding_source"].to_pylist()) == {"head_dense(shape)+head_dense(pattern)"}
    for row in first.to_pylist():
        assert np.linalg.norm(row["embedding"]) == pytest.approx(1.0, abs=1e-5)
        assert row["shape"] == CLASSES[int(np.argmax(row["shape_probs"]))] and len(row["pattern_probs"]) == 3

    again = build_repository_with(vectorizer, published, "batch-20261101", inferred_at=T2)
    assert again["vectorized"] == 0 and again["files_written"] == 0  # only the broken image is tried again
    assert read_repository(published).equals(first)


def test_build_repository_updates_rows_of_the_same_item_in_place(published):
    vectorizer = FashionVectorizer.from_registry(published, ATTRIBUTES)
    first_ids = write_accepted(published, "batch-a", ["striped", "solid", "checkered"], start=0)
    build_repository_with(vectorizer, published, "batch-a", inferred_at=T1, crawl_date=date(2026, 11, 2))
    # batch-b: item 2 again (new image) plus two new items.
    second_ids = write_accepted(published, "batch-b", ["solid", "striped", "solid"], start=2, seed=99)
    summary = build_repository_with(vectorizer, published, "batch-b", inferred_at=T2, crawl_date=date(2026, 11, 3))
    assert summary["actions"] == {"new": 2, "image": 1, "model": 0, "catalog": 0}
    table = read_repository(published).to_pylist()
    assert summary["repository_rows"] == len(table) == 5
    assert sorted(r["item_id"] for r in table) == sorted(set(first_ids) | set(second_ids))
    by_id = {r["item_id"]: r for r in table}
    assert by_id[first_ids[2]]["inferred_at"] == T2 and by_id[first_ids[2]]["title"] == "solid shirt 2"
    assert by_id[first_ids[2]]["crawl_date"] == date(2026, 11, 2)  # it stays in the partition that first had it
    assert by_id[second_ids[2]]["crawl_date"] == date(2026, 11, 3)
    assert by_id[first_ids[0]]["inferred_at"] == T1
    assert [r["item_id"] for r in table] == sorted(by_id)


def test_module_level_build_repository_uses_the_taxonomy_attributes(published):
    write_accepted(published, "batch-c", ["striped", "solid"])
    summary = build_repository(published, "batch-c", inferred_at=T1, attributes=ATTRIBUTES)
    assert summary["vectorized"] == 2 and summary["model_versions"] == {"shape": "v1", "pattern": "v1"}
    with pytest.raises(LookupError, match="fabric"):  # the taxonomy's other attributes are not published
        build_repository(published, "batch-c")


def test_shards_infer_with_the_planned_versions_and_new_models_rescore(published):
    """The DAG's steps: plan, infer_shard per shard (module level, versions from the plan), commit;
    then a newly published shape network re-scores every row in place."""
    ids = write_accepted(published, "catalog-20261101", ["striped", "solid", "checkered", "solid", "striped"])
    request = RefreshPlanRequest("catalog-20261101", ATTRIBUTES, batch_id="catalog-20261101")
    plan = plan_refresh(published, request, dataclasses.replace(get_settings().repository, shard_size=2))
    assert plan["shards"] == 3
    write_version(published, "shape", "v2", seed=7)
    publish(published, "shape", "v2")  # published after planning: this refresh still uses v1
    summaries = [infer_shard(published, "catalog-20261101", shard) for shard in range(3)]
    assert [s["items"] for s in summaries] == [2, 2, 1] and all(s["versions"]["shape"] == "v1" for s in summaries)
    commit_refresh(published, "catalog-20261101")
    first = read_repository(published)
    assert set(first["shape_model_version"].to_pylist()) == {"v1"}

    rescore = plan_refresh(published, RefreshPlanRequest("rescore-20261101T120000", ATTRIBUTES))
    assert rescore["actions"]["model"] == 5 and rescore["shards"] == 1
    infer_shard(published, "rescore-20261101T120000", 0)
    commit_refresh(published, "rescore-20261101T120000")
    table = read_repository(published)
    assert table["item_id"].to_pylist() == sorted(ids)
    assert set(table["shape_model_version"].to_pylist()) == {"v2"} and set(
        table["pattern_model_version"].to_pylist()
    ) == {"v1"}
    assert table["pattern"].to_pylist() == first["pattern"].to_pylist()  # the unchanged network answers the same
    assert table["crawl_date"].to_pylist() == first["crawl_date"].to_pylist()
