"""Bad Params are refused with a clear message before any work starts, and nothing is written.

Two layers, each tested with a table:

1. The trigger: Airflow validates a run's conf against the DAG's Param schemas when the run is created
   (``SerializedDAG.create_dagrun`` calls ``params.deep_merge(conf).validate()`` on the serialized DAG:
   the path of the UI's trigger form and of the REST API). A refused conf creates no run at all.
2. The first task: what a schema cannot know (does the user exist, is the image there, is the start URL
   on the retailer's site, is a Param name misspelt) is checked by the first task (recommend's
   ``validate``, the crawl tasks, train's ``split``) before it reads or writes anything else; it also
   re-checks what the schema checks (``..`` keys, foreign URLs), for callers that bypass the trigger.

Each refusal must name what is wrong, and the store must be byte-for-byte what it was.
"""

from __future__ import annotations

import copy
import os
import types
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.settings import get_settings
from pipeline.storage import ObjectStore

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 64  # existence is all the validation reads


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=str(DAGS_DIR), bundle_path=DAGS_DIR)


@pytest.fixture(scope="module")
def serialized(dagbag):
    """The DAGs as the scheduler and the api-server hold them (serialized and back)."""
    from airflow.serialization.serialized_objects import DagSerialization

    return {dag_id: DagSerialization.from_dict(DagSerialization.to_dict(dag)) for dag_id, dag in dagbag.dags.items()}


def trigger(serialized_dag, conf: dict) -> None:
    """What creating a run does with its conf before the run exists (SerializedDAG.create_dagrun)."""
    serialized_dag.params.deep_merge(conf).validate()


def snapshot(store: ObjectStore) -> dict[str, tuple[int, int]]:
    """Every file under the store's root (not only keys the store lists): path -> (size, mtime)."""
    root = Path(store.root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def users_store(file_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    """Two users with photos, a shown-list under ann's prefix and another object type, as the DAGs see it."""
    for key in (
        "users/ann/a.jpg",
        "users/ann/b.png",
        "users/bob/c.jpg",
        "users/ann/_shown/2026-11-01.parquet",
        "images/full/x.jpg",
    ):
        file_store.put_bytes(key, JPEG)
    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    get_settings.cache_clear()
    return file_store


# -- layer 1: the trigger ----------------------------------------------------------------------------------
GOOD_CONFS = [
    ("fashionnet_recommend", {}),
    ("fashionnet_recommend", {"user_id": "", "k": None, "score": None}),
    (
        "fashionnet_recommend",
        {
            "user_id": "ann",
            "image_keys": ["users/ann/a photo.jpg", "users/ann/b.png"],
            "k": 1,
            "score": "embedding",
            "mmr_lambda": 1,
            "retailers": ["demo-store"],
            "categories": ["t-shirt"],
            "price_min": 0,
            "price_max": 49.9,
        },
    ),
    ("fashionnet_recommend", {"k": 100, "mmr_lambda": 0.0}),
    (
        "fashionnet_ingest",
        {"retailer": "demo-store", "start_url": "http://127.0.0.1:8765/catalog", "review_policy": "manual"},
    ),
    ("fashionnet_repository_refresh", {"retailer": "acme", "start_url": "https://shop.example/collections/all"}),
    ("fashionnet_train", {"force_promotion": True}),
]

BAD_CONFS = [  # dag, conf, what the message must say
    ("fashionnet_recommend", {"k": 0}, "k: 0 is less than the minimum of 1"),
    ("fashionnet_recommend", {"k": 101}, "k: 101 is greater than the maximum of 100"),
    ("fashionnet_recommend", {"k": -5}, "k: -5 is less than the minimum"),
    ("fashionnet_recommend", {"k": 2.5}, "k: 2.5 is not of type"),
    ("fashionnet_recommend", {"k": "10"}, "k: '10' is not of type"),
    ("fashionnet_recommend", {"k": True}, "k: True is not of type"),
    ("fashionnet_recommend", {"user_id": "../etc"}, "user_id: '../etc' does not match"),
    ("fashionnet_recommend", {"user_id": "ann/../bob"}, "user_id: 'ann/../bob' does not match"),
    ("fashionnet_recommend", {"user_id": "ann\n"}, "user_id: 'ann\\n' does not match"),
    ("fashionnet_recommend", {"user_id": "a" * 65}, "does not match"),
    ("fashionnet_recommend", {"user_id": 7}, "user_id: 7 is not of type"),
    ("fashionnet_recommend", {"image_keys": ["users/ann/../bob/c.jpg"]}, "'users/ann/../bob/c.jpg' does not match"),
    ("fashionnet_recommend", {"image_keys": ["users/ann/.."]}, "'users/ann/..' does not match"),
    ("fashionnet_recommend", {"image_keys": ["users/../ann/a.jpg"]}, "does not match"),
    ("fashionnet_recommend", {"image_keys": ["users/ann/a\\..\\..\\x.jpg"]}, "does not match"),
    ("fashionnet_recommend", {"image_keys": ["users/ann/sub/x.jpg"]}, "'users/ann/sub/x.jpg' does not match"),
    ("fashionnet_recommend", {"image_keys": ["users/ann/_shown/2026-11-01.parquet"]}, "does not match"),
    ("fashionnet_recommend", {"image_keys": ["users/ann/a.jpg\n"]}, "does not match"),
    ("fashionnet_recommend", {"image_keys": ["/users/ann/a.jpg"]}, "'/users/ann/a.jpg' does not match"),
    ("fashionnet_recommend", {"image_keys": ["images/full/x.jpg"]}, "'images/full/x.jpg' does not match"),
    (
        "fashionnet_recommend",
        {"image_keys": ["s3://other-bucket/users/ann/a.jpg"]},
        "'s3://other-bucket/users/ann/a.jpg' does not match",
    ),
    (
        "fashionnet_recommend",
        {"image_keys": ["http://evil.example/users/ann/a.jpg"]},
        "'http://evil.example/users/ann/a.jpg' does not match",
    ),
    ("fashionnet_recommend", {"image_keys": ["file:///etc/passwd"]}, "'file:///etc/passwd' does not match"),
    (
        "fashionnet_recommend",
        {"image_keys": "users/ann/a.jpg"},
        "image_keys: 'users/ann/a.jpg' is not of type 'null', 'array'",
    ),
    ("fashionnet_recommend", {"image_keys": ["users/ann/a.jpg"] * 51}, "is too long"),
    ("fashionnet_recommend", {"score": "cosine"}, "score: 'cosine' is not one of"),
    ("fashionnet_recommend", {"mmr_lambda": 1.5}, "mmr_lambda: 1.5 is greater than the maximum of 1"),
    ("fashionnet_recommend", {"mmr_lambda": -0.1}, "mmr_lambda: -0.1 is less than the minimum of 0"),
    ("fashionnet_recommend", {"retailers": ["../other"]}, "'../other' does not match"),
    ("fashionnet_recommend", {"retailers": ["demo-store\n"]}, "does not match"),
    ("fashionnet_recommend", {"categories": [""]}, "should be non-empty"),
    ("fashionnet_recommend", {"price_min": -1}, "price_min: -1 is less than the minimum of 0"),
    ("fashionnet_recommend", {"price_max": "cheap"}, "price_max: 'cheap' is not of type"),
    ("fashionnet_ingest", {"start_url": "file:///etc/passwd"}, "start_url: 'file:///etc/passwd' does not match"),
    ("fashionnet_ingest", {"start_url": "javascript:alert(1)"}, "does not match"),
    ("fashionnet_ingest", {"start_url": "ftp://127.0.0.1:8765/"}, "does not match"),
    ("fashionnet_ingest", {"start_url": "//evil.example/"}, "does not match"),
    ("fashionnet_ingest", {"start_url": "http://127.0.0.1:8765/\n"}, "does not match"),
    ("fashionnet_ingest", {"start_url": "http://shop.example/a b"}, "does not match"),
    ("fashionnet_ingest", {"retailer": "../other"}, "retailer: '../other' does not match"),
    ("fashionnet_ingest", {"retailer": ""}, "retailer: '' does not match"),
    ("fashionnet_ingest", {"review_policy": "yolo"}, "review_policy: 'yolo' is not one of"),
    ("fashionnet_repository_refresh", {"start_url": "s3://other-bucket/listing"}, "does not match"),
    ("fashionnet_repository_refresh", {"retailer": "Demo Store"}, "does not match"),
    ("fashionnet_train", {"force_promotion": "yes"}, "force_promotion: 'yes' is not of type 'boolean'"),
]


@pytest.mark.parametrize("dag_id, conf", GOOD_CONFS, ids=lambda v: v if isinstance(v, str) else None)
def test_the_trigger_accepts_good_params(serialized, dag_id, conf):
    trigger(serialized[dag_id], conf)


@pytest.mark.parametrize("dag_id, conf, message", BAD_CONFS)
def test_the_trigger_refuses_bad_params_with_a_clear_message(serialized, dag_id, conf, message):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError) as refused:
        trigger(serialized[dag_id], conf)
    text = str(refused.value)
    assert text.startswith("Invalid input for param "), text  # names the Param ...
    assert message in text, text  # ... and what is wrong with its value


# -- layer 2: the first task -------------------------------------------------------------------------------
def task_params(dag, conf: dict, *, schema: bool) -> dict:
    """The ``params`` a task receives: with ``schema``, exactly as the task runner builds them (defaults,
    then the run's conf, validated); without, defaults plus conf unchecked (a caller bypassing the trigger)."""
    if schema:
        from airflow.sdk.definitions.param import process_params

        # A copy: process_params sets the run's values on the Param objects it is given, and a task
        # runner parses the DAG afresh per task, whereas these tests share one parsed DAG.
        fresh = types.SimpleNamespace(params=copy.deepcopy(dag.params))
        return dict(process_params(fresh, types.SimpleNamespace(params=None), conf, suppress_exception=False))
    return {**{name: param.value for name, param in dag.params.items()}, **conf}


BAD_RECOMMEND_REQUESTS = [  # conf, passes the schema?, what the message must say
    ({"user_id": "nobody"}, True, "user 'nobody' has no images under users/nobody/ (unknown user?)"),
    (
        {"user_id": "ann", "image_keys": ["users/ann/missing.jpg"]},
        True,
        "image key 'users/ann/missing.jpg' does not exist",
    ),
    (
        {"user_id": "ann", "image_keys": ["users/bob/c.jpg"]},
        True,
        "image key 'users/bob/c.jpg' is not one of user 'ann''s images (under users/ann/)",
    ),
    ({"image_keys": ["users/ann/a.jpg"]}, True, "image_keys need a user_id"),
    ({"user_id": "ann", "price_min": 50, "price_max": 10}, True, "price_min (50) is above price_max (10)"),
    ({"user_id": "ann", "categories": ["   "]}, True, "categories has an invalid value '   '"),
    ({"user": "ann"}, True, "unknown Params ['user']"),  # a typo must not serve every user instead
    ({"user_id": "ann", "K": 5}, True, "unknown Params ['K']"),
    # What the schema refuses, refused again by the task (a caller that bypasses the trigger):
    ({"user_id": "ann", "image_keys": ["users/ann/../bob/c.jpg"]}, False, "may not contain '..'"),
    ({"user_id": "ann", "image_keys": ["users/ann/../../etc/passwd"]}, False, "may not contain '..'"),
    (
        {"user_id": "ann", "image_keys": ["s3://other-bucket/users/ann/a.jpg"]},
        False,
        "'s3://other-bucket/users/ann/a.jpg' is not a key inside the store",
    ),
    (
        {"user_id": "ann", "image_keys": ["http://evil.example/users/ann/a.jpg"]},
        False,
        "'http://evil.example/users/ann/a.jpg' is not a key inside the store",
    ),
    ({"user_id": "ann", "image_keys": ["/users/ann/a.jpg"]}, False, "'/users/ann/a.jpg' is not a key inside the store"),
    (
        {"user_id": "ann", "image_keys": ["images/full/x.jpg"]},
        False,
        "image key 'images/full/x.jpg' is not one of user 'ann''s images",
    ),
    (
        {"user_id": "ann", "image_keys": ["users/ann/_shown/2026-11-01.parquet"]},
        False,
        "is not directly under users/ann/",
    ),
    ({"user_id": "ann", "image_keys": "users/ann/a.jpg"}, False, "image_keys must be a list of keys"),
    ({"user_id": "../bob"}, False, "user_id must be 1-64 characters"),
    ({"user_id": "ann\n"}, False, "user_id must be 1-64 characters"),
    ({"user_id": "ann", "k": 0}, False, "k must be an integer from 1 to 100, got 0"),
    ({"user_id": "ann", "k": 101}, False, "k must be an integer from 1 to 100, got 101"),
    ({"user_id": "ann", "k": True}, False, "k must be an integer from 1 to 100, got True"),
    ({"user_id": "ann", "score": "cosine"}, False, "score must be one of"),
    ({"user_id": "ann", "mmr_lambda": float("nan")}, False, "mmr_lambda must be a number from 0 to 1, got nan"),
    ({"user_id": "ann", "retailers": ["../other"]}, False, "retailers has an invalid value '../other'"),
]


@pytest.mark.parametrize("conf, passes_schema, message", BAD_RECOMMEND_REQUESTS)
def test_recommend_validate_refuses_bad_requests_and_writes_nothing(dagbag, users_store, conf, passes_schema, message):
    dag = dagbag.dags["fashionnet_recommend"]
    params = task_params(dag, conf, schema=passes_schema)
    before = snapshot(users_store)
    with pytest.raises(ValueError) as refused:  # InvalidRequest is a ValueError
        dag.get_task("validate").python_callable(params=params)
    assert message in str(refused.value), str(refused.value)
    assert snapshot(users_store) == before


def test_recommend_validate_plans_good_requests(dagbag, users_store):
    """The same checks pass good requests (so the table above fails for the right reasons)."""
    dag = dagbag.dags["fashionnet_recommend"]
    validate = dag.get_task("validate").python_callable
    before = snapshot(users_store)
    everyone = validate(params=task_params(dag, {}, schema=True))
    assert everyone == [
        [
            {"user_id": "ann", "image_keys": ["users/ann/a.jpg", "users/ann/b.png"]},
            {"user_id": "bob", "image_keys": ["users/bob/c.jpg"]},
        ]
    ]
    chosen = validate(
        params=task_params(
            dag, {"user_id": "ann", "image_keys": ["users/ann/b.png", "users/ann//b.png"], "k": 3}, schema=False
        )
    )
    assert chosen == [[{"user_id": "ann", "image_keys": ["users/ann/b.png"]}]]
    assert snapshot(users_store) == before


BAD_CRAWLS = [  # dag, conf, passes the schema?, what the message must say
    # A start URL without a retailer name belongs to the configured retailer whose site it is on: none here.
    (
        "fashionnet_ingest",
        {"start_url": "http://evil.example/list"},
        True,
        "start_url 'http://evil.example/list' is not on the site of any configured retailer (['demo-store'])",
    ),
    (
        "fashionnet_repository_refresh",
        {"start_url": "http://169.254.169.254/latest/meta-data/"},
        True,
        "is not on the site of any configured retailer",
    ),
    (
        "fashionnet_repository_refresh",
        {"start_url": "http://127.0.0.1:5432/"},
        True,
        "is not on the site of any configured retailer",
    ),  # the shop's host, another port: another service
    (
        "fashionnet_repository_refresh",
        {"retailer": "demo-store", "start_url": "http://169.254.169.254/"},
        True,
        "is not on the site of retailer 'demo-store'",
    ),
    (
        "fashionnet_repository_refresh",
        {"retailers": ["demo-store", "acme"]},
        True,
        "retailers ['acme'] are not configured for this crawl (configured: ['demo-store'])",
    ),
    (
        "fashionnet_ingest",
        {"retailers": ["demo-store"], "start_url": "http://127.0.0.1:8765/"},
        True,
        "give either retailers",
    ),
    ("fashionnet_ingest", {"retailer": "acme"}, True, "retailer 'acme' is not configured for this crawl"),
    (
        "fashionnet_repository_refresh",
        {"retailer": "acme", "start_url": "http://user:secret@shop.example/"},
        True,
        "carries credentials",
    ),
    ("fashionnet_ingest", {"retailr": "acme"}, True, "unknown Params ['retailr']"),
    ("fashionnet_repository_refresh", {"start_ur": "http://127.0.0.1:8765/"}, True, "unknown Params ['start_ur']"),
    ("fashionnet_ingest", {"start_url": "file:///etc/passwd"}, False, "must be an http:// or https:// URL"),
    (
        "fashionnet_repository_refresh",
        {"start_url": "http://127.0.0.1:8765/\n"},
        False,
        "must be an http:// or https:// URL without spaces",
    ),
    ("fashionnet_repository_refresh", {"retailer": "acme", "start_url": "http:///list"}, False, "names no host"),
]


@pytest.mark.parametrize("dag_id, conf, passes_schema, message", BAD_CRAWLS)
def test_crawl_tasks_refuse_urls_off_the_retailers_site_before_any_request(
    dagbag, file_store, monkeypatch, dag_id, conf, passes_schema, message
):
    import scrapers.crawl

    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    monkeypatch.delenv("FASHIONNET_SHOP_URL", raising=False)  # demo-store's site: http://127.0.0.1:8765
    get_settings.cache_clear()

    def no_crawl(*args, **kwargs):
        raise AssertionError(f"a crawl was started: {args}")

    monkeypatch.setattr(scrapers.crawl.subprocess, "Popen", no_crawl)
    dag = dagbag.dags[dag_id]
    task = dag.get_task(dag.task_ids[0])
    assert task.task_id == "retailers_to_crawl"
    run = types.SimpleNamespace(run_after=datetime(2026, 11, 1, 2, tzinfo=UTC), run_type="scheduled")
    before = snapshot(file_store)
    with pytest.raises(ValueError) as refused:
        task.python_callable(params=task_params(dag, conf, schema=passes_schema), dag_run=run)
    assert message in str(refused.value), str(refused.value)
    assert snapshot(file_store) == before


def test_the_crawl_check_passes_the_retailers_own_pages_and_any_shop_by_name():
    from scrapers.crawl import check_start_url

    retailers = {"demo-store": {"base_url": "http://127.0.0.1:8765"}, "acme": {"base_url": "https://www.acme.example"}}
    for retailer, url in [
        ("demo-store", None),
        ("demo-store", "http://127.0.0.1:8765/catalog?page=2"),
        ("acme", "https://acme.example/collections/all"),
        ("acme", "https://www.acme.example:443/"),
        ("some-shop", "https://shop.example/list"),
    ]:
        check_start_url(retailer, url, retailers)
    with pytest.raises(ValueError, match="not on the site of retailer 'acme'"):
        check_start_url("acme", "https://acme.example.evil.test/", retailers)


def test_train_refuses_a_misspelt_param_before_splitting(dagbag, file_store, monkeypatch):
    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    get_settings.cache_clear()
    dag = dagbag.dags["fashionnet_train"]
    with pytest.raises(ValueError, match=r"unknown Params \['force'\]"):
        dag.get_task("split").python_callable(params=task_params(dag, {"force": True}, schema=True))
    assert snapshot(file_store) == {}
    assert not os.path.exists(file_store.root)


@pytest.mark.parametrize("dag_id", ["fashionnet_ingest", "fashionnet_repository_refresh"])
def test_the_crawl_fans_out_over_every_configured_retailer_or_the_named_ones(
    dagbag, file_store, monkeypatch, tmp_path, dag_id
):
    import scrapers.crawl

    profile = tmp_path / "shops.yaml"
    profile.write_text(
        "retailers:\n  acme:\n    kind: shopify\n    base_url: https://acme.example\n"
        "  zed:\n    kind: urls\n    base_url: https://zed.example\n    entry_points: [https://zed.example/p/1]\n"
        "    search_url: 'https://zed.example/s?q={query}'\n"
    )
    monkeypatch.setenv("FASHIONNET_PROFILE", str(profile))
    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    get_settings.cache_clear()
    monkeypatch.setattr(scrapers.crawl.subprocess, "Popen", lambda *a, **k: pytest.fail("a crawl was started"))
    dag = dagbag.dags[dag_id]
    choose = dag.get_task("retailers_to_crawl").python_callable
    run = types.SimpleNamespace(run_after=datetime(2026, 11, 1, 2, tzinfo=UTC), run_type="scheduled")
    kind = "ingest" if dag_id == "fashionnet_ingest" else "catalog"
    every = ["demo-store", "zed"] if kind == "ingest" else ["acme", "demo-store", "zed"]  # ingest: a search_url
    # An ingest batch per run (its time to the second: two runs on one day are two batches); a catalog crawl
    # per night.
    stamp = "ingest-20261101-020000" if kind == "ingest" else "catalog-20261101"
    assert choose(params=task_params(dag, {}, schema=True), dag_run=run) == [
        {"retailer": name, "start_url": None, "crawl_id": f"{stamp}-{name}"} for name in every
    ]
    assert [
        t["retailer"] for t in choose(params=task_params(dag, {"retailers": ["zed"]}, schema=True), dag_run=run)
    ] == ["zed"]
    one = choose(params=task_params(dag, {"start_url": "https://zed.example/list"}, schema=True), dag_run=run)
    assert one == [{"retailer": "zed", "start_url": "https://zed.example/list", "crawl_id": f"{stamp}-zed"}]
    any_shop = {"retailer": "new-shop", "start_url": "https://new.example/"}
    if kind == "ingest":  # the query crawl needs a configured search page
        with pytest.raises(ValueError, match="retailer 'new-shop' is not in the settings: the ingest crawl searches"):
            choose(params=task_params(dag, any_shop, schema=True), dag_run=run)
    else:
        assert [t["retailer"] for t in choose(params=task_params(dag, any_shop, schema=True), dag_run=run)] == [
            "new-shop"
        ]
    if kind == "catalog":
        models = types.SimpleNamespace(run_after=run.run_after, run_type="asset_triggered")
        # New models and an empty repository (the first training): crawl, so the chain ends with items.
        assert [t["retailer"] for t in choose(params=task_params(dag, {}, schema=True), dag_run=models)] == every
        # New models and a repository with vectors: re-score only.
        file_store.put_bytes(
            "repository/fashion_vectors/crawl_date=2026-10-31/retailer=acme/part-00000-of-00001.parquet", b"PAR1"
        )
        assert choose(params=task_params(dag, {}, schema=True), dag_run=models) == []
