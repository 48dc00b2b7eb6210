"""docs/analysts.md works: its Python blocks run, in order, as one script against a moto S3 server.

The store holds a repository written by the real plan/commit code (vectors from a deterministic fake,
see tests/pipeline/repository/test_repository.py) and a small recommendations dataset in the documented layout.
The guide's placeholders (endpoint, bucket) are replaced by the test's.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime, timedelta

import boto3
import pyarrow as pa
import pytest

from pipeline.repository import dataset as R
from tests.conftest import REPO_ROOT
from tests.pipeline.repository.test_repository import publish, refresh, write_batch

GUIDE = REPO_ROOT / "docs" / "analysts.md"
T1 = datetime(2026, 11, 1, 2, 5, tzinfo=UTC)


def guide_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)


@pytest.fixture
def guide_store(s3_env: str):
    from pipeline.settings import get_settings
    from pipeline.storage import ObjectStore

    bucket = f"guide-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_env).create_bucket(Bucket=bucket)
    store = ObjectStore(f"s3://{bucket}/store", endpoint_url=s3_env)
    taxonomy = get_settings().taxonomy
    publish(store, "v1", taxonomy.names, taxonomy.attributes)
    write_batch(store, "catalog-20261031", range(12), crawled_at=T1 - timedelta(days=1))
    refresh(store, "catalog-20261031", "catalog-20261031", T1 - timedelta(days=1), attributes=taxonomy.names)
    write_batch(store, "catalog-20261101", range(30), crawled_at=T1)
    write_batch(store, "catalog-20261101-other", range(100, 110), crawled_at=T1, retailer="other-shop")
    refresh(store, "catalog-20261101", "catalog-20261101", T1, attributes=taxonomy.names)
    refresh(
        store,
        "catalog-20261101-other",
        "catalog-20261101-other",
        T1,
        attributes=taxonomy.names,
        crawl_date=date(2026, 11, 1),
    )
    items = R.read_repository(store, columns=["item_id"])["item_id"].to_pylist()
    # 2026-11-02 has a second, later run (a manual one) for demo-user: readers keep a day's latest run.
    runs = (
        ("2026-11-01", "scheduled__2026-11-01", 0, 0),
        ("2026-11-02", "scheduled__2026-11-02", 5, 0),
        ("2026-11-02", "manual__2026-11-02", 10, 1),
    )
    for day, run, offset, later in runs:
        for user in ("demo-user",) if later else ("demo-user", "someone-else"):
            picks = items[offset : offset + 5]
            written = datetime.fromisoformat(f"{day}T03:00:00+00:00") + timedelta(hours=6 * later)
            store.write_parquet(
                f"recommendations/date={day}/run={run}/user_id={user}/recommendations.parquet",
                pa.table(
                    {
                        "rank": pa.array(range(1, 6), pa.int32()),
                        "item_id": picks,
                        "score": pa.array([5.0 - r for r in range(5)], pa.float64()),
                        "title": [f"t{r}" for r in range(5)],
                        "generated_at": pa.array([written] * 5, pa.timestamp("us", "UTC")),
                    }
                ),
            )
    return store, bucket, s3_env


def test_the_guide_has_blocks_for_pandas_pyarrow_and_duckdb():
    code = "\n".join(guide_blocks())
    for needle in (
        "pd.read_parquet",
        "storage_options",
        "fs.S3FileSystem(endpoint_override",
        "ds.dataset",
        "duckdb.connect",
        "con.register",
        "recommendations/",
    ):
        assert needle in code
    assert "httpfs" not in code and "install" not in code.lower()  # no DuckDB extension: offline


def test_the_guide_runs_against_s3(guide_store, capsys):
    store, bucket, endpoint = guide_store
    namespace: dict = {}
    for block in guide_blocks():
        code = block.replace('"http://localhost:9000"', repr(endpoint)).replace(
            '"fashionnet/store"', repr(f"{bucket}/store")
        )
        exec(compile(code, str(GUIDE), "exec"), namespace)  # noqa: S102 - the guide's own examples

    full = R.read_repository(store)
    # pandas: the filtered repository and one user's history.
    expected = [
        r["item_id"] for r in full.to_pylist() if r["pattern"] == "striped" and r["crawl_date"] >= date(2026, 11, 1)
    ]
    assert sorted(namespace["striped"]["item_id"]) == sorted(expected) and expected
    history = namespace["user_history"]
    assert len(history) == 10 and set(history["user_id"].astype(str)) == {"demo-user"}
    assert history["title"].notna().all()
    assert str(namespace["striped"]["item_id"].dtype).startswith("string")
    # pyarrow: typed partitions, the night's items, neighbours, class order.
    assert namespace["repository"].count_rows() == full.num_rows == 40
    assert namespace["night"].num_rows == 18  # items 12-29 were first crawled on 2026-11-01 at demo-store
    assert len(namespace["nearest"]) == 10
    assert namespace["schema_version"] == R.SCHEMA_VERSION and namespace["classes"]["pattern"][0] == "checkered"
    # DuckDB through pyarrow datasets.
    per_night = namespace["per_night"]
    assert per_night["items"].tolist() == [12, 18, 10]
    assert namespace["class_mix"]["items"].sum() == 28
    top = namespace["top_picks"]
    assert len(top) == 10 and set(top["user_id"]) == {"demo-user"} and top["title"].notna().all()
    assert str(top["date"].iloc[0])[:10] == "2026-11-02"
    assert set(history["run"].astype(str)) == {"scheduled__2026-11-01", "manual__2026-11-02"}  # each day's latest
    catalogue = R.read_repository(store, columns=["item_id", "title"]).to_pylist()  # the fixture's order
    manual = [row["item_id"] for row in catalogue[10:15]]
    assert sorted(history[history["run"].astype(str) == "manual__2026-11-02"]["item_id"]) == sorted(manual)
    titles = {row["item_id"]: row["title"] for row in catalogue}
    assert list(top["title"][:5]) == [titles[i] for i in manual]
    assert "looks like" in capsys.readouterr().out
