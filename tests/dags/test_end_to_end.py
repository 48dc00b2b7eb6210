"""End to end: the four DAGs run with dag.test() in order against an S3 endpoint (moto on 127.0.0.1).

It runs the demo driver (the same code path as `make demo`) in a subprocess, so that Airflow's
configuration and the settings are those of a fresh process, then asserts on the objects in the bucket.
The run's credentials are distinctive random values (moto accepts any), so the same run also proves that
no credential ends up in its output, its Airflow metadata (XComs, logs) or the objects it wrote.
"""

from __future__ import annotations

import io
import os
import secrets
import sqlite3
import subprocess
import sys
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow
ATTRIBUTES = ["pattern", "fabric", "style", "shape"]


@dataclass
class DemoRun:
    store: object  # pipeline.storage.ObjectStore
    stdout: str
    stderr: str
    work_dir: Path  # AIRFLOW_HOME (metadata DB, task logs) is work_dir/airflow
    secrets: dict[str, str]  # environment variable -> the secret value the run was given


def distinctive_secrets() -> dict[str, str]:
    """Credentials no output could contain by chance: an AWS-shaped key id, random secrets."""
    return {
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": "e2eAwsSecret" + secrets.token_urlsafe(24).replace("-", "x").replace("_", "y"),
        "FASHIONNET_REVIEW_SECRET": "e2eReviewSecret" + secrets.token_hex(20),
        "AIRFLOW__API_AUTH__JWT_SECRET": "e2eJwtSecret" + secrets.token_hex(20),
        "AIRFLOW__API__SECRET_KEY": "e2eApiSecret" + secrets.token_hex(20),
    }


@pytest.fixture(scope="module")
def pipeline_run(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory):
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    given = distinctive_secrets()
    aws = {
        "AWS_ACCESS_KEY_ID": given["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": given["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }
    env = {**os.environ, **given, **aws}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in aws.items():
            patch.setenv(name, value)
        boto3.client("s3").create_bucket(Bucket=bucket)
        work_dir: Path = tmp_path_factory.mktemp("e2e")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "fashionnet_tools.demo",
                "--store",
                f"s3://{bucket}/fashionnet",
                "--work-dir",
                str(work_dir),
                "--products",
                "80",
                "--profile",
                "test",
                "--k",
                "5",
                "--port",
                "0",
            ],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"

        from pipeline.storage import ObjectStore

        yield DemoRun(
            ObjectStore(f"s3://{bucket}/fashionnet", endpoint_url=moto_endpoint),
            proc.stdout,
            proc.stderr,
            work_dir,
            given,
        )


def test_every_stage_wrote_its_objects(pipeline_run):
    store = pipeline_run.store
    keys = store.list()
    for prefix in [
        "images/full/",
        "crawls/",
        "curation/",
        "review/queue/",
        "review/decisions/",
        "dataset/items.parquet",
        "dataset/split.parquet",
        "repository/fashion_vectors/crawl_date=",
        "recommendations/date=",
        "profiles/date=",
        "recommendations_html/",
        "users/demo-user/_shown/",
    ]:
        assert any(k.startswith(prefix) for k in keys), f"nothing under {prefix}"
    for attribute in ATTRIBUTES:
        assert store.exists(f"models/{attribute}/current.json")


def test_repository_has_a_fashion_vector_per_curated_catalog_item(pipeline_run):
    from pipeline.repository.dataset import SCHEMA_VERSION, data_keys, read_repository
    from pipeline.store_layout import FASHION_VECTORS_PREFIX

    store = pipeline_run.store
    repository = read_repository(store)
    catalog_batches = [
        k for k in store.list("curation") if k.startswith("curation/catalog-") and k.endswith("accepted.parquet")
    ]
    assert len(catalog_batches) == 1
    accepted = store.read_parquet(catalog_batches[0])
    assert repository.num_rows == accepted.num_rows > 0
    assert sorted(repository.column("item_id").to_pylist()) == sorted(accepted.column("item_id").to_pylist())
    night = catalog_batches[0].split("catalog-")[1][:8]
    assert {k.split("/")[2] for k in data_keys(store)} == {f"crawl_date={night[:4]}-{night[4:6]}-{night[6:]}"}
    assert all(k.startswith(FASHION_VECTORS_PREFIX + "/") for k in data_keys(store)) and not store.list(
        "repository/_staging"
    )
    commit = store.read_json(f"repository/commits/catalog-{night}.json")
    assert commit["schema_version"] == SCHEMA_VERSION and commit["inferred"] == repository.num_rows
    assert commit["actions"]["new"] == accepted.num_rows
    for attribute in ATTRIBUTES:
        assert {attribute, f"{attribute}_prob", f"{attribute}_probs", f"{attribute}_model_version"} <= set(
            repository.column_names
        )
        record = store.read_json(f"models/{attribute}/current.json")
        assert set(repository.column(attribute).to_pylist()) <= set(record["classes"])
        assert set(repository.column(f"{attribute}_model_version").to_pylist()) == {record["version"]}
        assert {len(p) for p in repository.column(f"{attribute}_probs").to_pylist()} == {len(record["classes"])}
    norms = [sum(v * v for v in e) for e in repository.column("embedding").to_pylist()]
    assert min(norms) > 0.999 and max(norms) < 1.001
    assert len(set(repository.column("embedding_source").to_pylist())) == 1


def test_recommendations_share_attributes_with_the_profile(pipeline_run):
    from pipeline.recommend.outputs import latest_run
    from pipeline.repository.dataset import read_repository
    from pipeline.settings import get_settings
    from pipeline.store_layout import profile_key, recommendation_page_key, recommendations_key, shown_key

    store, stdout = pipeline_run.store, pipeline_run.stdout
    rec_keys = [k for k in store.list("recommendations/") if k.endswith("recommendations.parquet")]
    assert len(rec_keys) == 1 and "/user_id=demo-user/" in rec_keys[0]  # every user under users/: one
    run_date, run = latest_run(store, "demo-user")
    assert rec_keys[0] == recommendations_key("demo-user", run_date, run)
    recs = store.read_parquet(rec_keys[0]).to_pylist()
    profile = store.read_parquet(profile_key("demo-user", run_date, run)).to_pylist()
    assert len(recs) == 5 and [r["rank"] for r in recs] == [1, 2, 3, 4, 5]
    assert {r["score_kind"] for r in recs} == {get_settings().recommend.score}
    embeddings = {
        row["item_id"]: row["embedding"] for row in read_repository(store, columns=["item_id", "embedding"]).to_pylist()
    }
    profile_images = {p["image_key"] for p in profile}
    for rec in recs:
        matches = sum(rec[a] == row[a] for row in profile for a in ATTRIBUTES)
        assert matches == rec["score_matches"]
        assert rec["image_key"] not in profile_images
        # the profile's embeddings live in the repository's space: same networks, same source
        cosine = max(sum(x * y for x, y in zip(embeddings[rec["item_id"]], p["embedding"])) for p in profile)
        assert abs(cosine - rec["score_embedding"]) < 1e-4
        assert 0.0 <= rec["score_weighted"] <= 1.0
    assert recs[0]["score"] == max(r["score"] for r in recs)  # MMR's first pick is the most relevant
    assert [r["mmr_score"] for r in recs] == sorted((r["mmr_score"] for r in recs), reverse=True)
    assert sorted(store.read_parquet(shown_key("demo-user", run_date, run)).column("item_id").to_pylist()) == sorted(
        r["item_id"] for r in recs
    )
    assert store.exists(recommendation_page_key("demo-user", run_date, run))
    assert "Top recommendations for demo-user" in stdout


# -- no credential anywhere ---------------------------------------------------------------------------------
def leaks(text: str | bytes, given: dict[str, str]) -> list[str]:
    """The names of the secrets whose value occurs in ``text``."""
    data = text.encode() if isinstance(text, str) else text
    return [name for name, value in given.items() if value.encode() in data]


def test_no_credential_in_the_output_the_logs_or_the_airflow_metadata(pipeline_run):
    given = pipeline_run.secrets
    assert not leaks(pipeline_run.stdout, given) and not leaks(pipeline_run.stderr, given)
    assert "[fashionnet] recommend (1 user(s)): done" in pipeline_run.stdout  # the output searched is the run's

    # Every file the run left outside the store: Airflow's home (the metadata DB with its WAL, the logs folder,
    # airflow.cfg) and the demo site. dag.test() runs the tasks in-process and writes no task log files (the
    # logs folder stays empty): the task logs are the stdout searched above.
    files = [p for p in pipeline_run.work_dir.rglob("*") if p.is_file()]
    database = pipeline_run.work_dir / "airflow" / "airflow.db"
    assert database in files
    leaked = {
        str(p.relative_to(pipeline_run.work_dir)): found for p in files if (found := leaks(p.read_bytes(), given))
    }
    assert leaked == {}

    # XComs, one by one (the DB file search above covers them too, this shows there were some to search).
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        xcoms = db.execute("SELECT dag_id, task_id, key, value FROM xcom").fetchall()
        conf = db.execute("SELECT dag_id, conf FROM dag_run").fetchall()
    assert {row[0] for row in xcoms} >= {
        "fashionnet_ingest",
        "fashionnet_train",
        "fashionnet_repository_refresh",
        "fashionnet_recommend",
    }
    assert [row[:3] for row in xcoms if leaks(str(row[3]), given)] == []
    assert [row for row in conf if leaks(str(row[1]), given)] == []


def test_no_credential_in_any_object_the_run_wrote(pipeline_run):
    import pyarrow.parquet as pq

    store, given = pipeline_run.store, pipeline_run.secrets
    keys = store.list()
    assert len(keys) > 100 and any(k.endswith(".html") for k in keys) and any(k.endswith(".json") for k in keys)
    leaked = {}
    for key in keys:
        data = store.get_bytes(key)
        found = leaks(data, given)
        if key.endswith(".parquet"):  # compressed pages: search the decoded values too
            found += leaks(str(pq.read_table(io.BytesIO(data)).to_pylist()), given)
        if found:
            leaked[key] = found
    assert leaked == {}
