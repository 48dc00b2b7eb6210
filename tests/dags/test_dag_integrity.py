"""Every DAG file parses fast, without heavy imports, and wires the tasks the design card names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("fashionnet_*.py") if p.name != "fashionnet_common.py")
HEAVY = ["tensorflow", "keras", "pandas", "scrapy", "pyarrow", "PIL", "imagehash"]

PROBE = """
import importlib.util, json, sys, time
sys.path.insert(0, {dags!r})
import airflow.sdk  # the Airflow import itself is not the DAG file's parse time
before = set(sys.modules)
started = time.perf_counter()
spec = importlib.util.spec_from_file_location("dag_under_test", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
elapsed = time.perf_counter() - started
new = sorted({{m.split(".")[0] for m in set(sys.modules) - before}})
print(json.dumps({{"seconds": elapsed, "new_modules": new, "all": sorted({{m.split(".")[0] for m in sys.modules}})}}))
"""


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=str(DAGS_DIR), bundle_path=DAGS_DIR)


def test_there_are_four_dag_files():
    assert [p.stem for p in DAG_FILES] == [
        "fashionnet_ingest",
        "fashionnet_recommend",
        "fashionnet_repository_refresh",
        "fashionnet_train",
    ]


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_dag_file_parses_fast_without_heavy_imports(path: Path):
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(dags=str(DAGS_DIR), path=str(path))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["seconds"] < 2.0
    assert not set(HEAVY) & set(probe["all"]), f"heavy modules at parse time: {set(HEAVY) & set(probe['all'])}"


def test_dagbag_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {p.stem for p in DAG_FILES}


def _edges(dag) -> set[tuple[str, str]]:
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


def test_ingest_wiring(dagbag):
    dag = dagbag.dags["fashionnet_ingest"]
    assert _edges(dag) == {
        ("retailers_to_crawl", "crawl"),
        ("crawl", "curate"),
        ("curate", "enqueue_for_review"),
        ("enqueue_for_review", "predict_for_review"),
        ("predict_for_review", "queued_batches"),
        ("queued_batches", "review_gate"),
        ("queued_batches", "approval_request"),
        ("queued_batches", "record_human_approval"),
        ("review_gate", "approval_request"),
        ("review_gate", "build_dataset"),
        ("approval_request", "approve_batch"),
        ("approve_batch", "record_human_approval"),
        ("record_human_approval", "build_dataset"),
        ("build_dataset", "record_rejection"),
        ("record_rejection", "check_retailers"),
        ("retailers_to_crawl", "check_retailers"),
        ("queued_batches", "check_retailers"),
    }


def test_ingest_maps_one_crawl_per_retailer_and_reviews_what_succeeded(dagbag):
    dag = dagbag.dags["fashionnet_ingest"]
    # A mapped task group per retailer: a failure upstream-fails only that retailer's own tasks.
    for task_id in ("crawl", "curate", "enqueue_for_review", "predict_for_review"):
        assert dag.get_task(task_id).get_closest_mapped_task_group().group_id == "retailer", task_id
    assert dag.get_task("crawl").map_index_template == "{{ fashionnet_retailer }}"
    assert dag.get_task("queued_batches").trigger_rule == "all_done_min_one_success"
    assert dag.get_task("check_retailers").trigger_rule == "all_done"
    assert "One retailer's failure" in dag.doc_md


def test_ingest_gates_the_dataset_on_a_human_approval(dagbag):
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    dag = dagbag.dags["fashionnet_ingest"]
    approve = dag.get_task("approve_batch")
    assert isinstance(approve, ApprovalOperator)
    # Approve is the default: the form's primary button. The timeout takes it too, with nobody responding:
    # record_human_approval refuses that, record_rejection records it (pipeline.review.approval.hitl_outcome).
    assert approve.defaults == [ApprovalOperator.APPROVE] and approve.response_timeout.total_seconds() > 0
    assert dag.get_task("record_rejection").trigger_rule == "all_done"
    assert dag.get_task("build_dataset").trigger_rule == "none_failed_min_one_success"
    assert dag.get_task("record_human_approval").trigger_rule == "all_success"


def test_train_maps_one_task_per_attribute(dagbag):
    dag = dagbag.dags["fashionnet_train"]
    assert _edges(dag) == {("split", "train"), ("train", "publish")}
    assert type(dag.get_task("train")).__name__.endswith("MappedOperator")
    assert dag.get_task("publish").trigger_rule == "all_done"


def test_refresh_is_nightly_and_recommend_follows_the_repository(dagbag):
    refresh = dagbag.dags["fashionnet_repository_refresh"]
    assert _edges(refresh) == {
        ("retailers_to_crawl", "crawl_catalog"),
        ("retailers_to_crawl", "plan"),
        ("crawl_catalog", "curate"),
        ("curate", "plan"),
        ("plan", "infer_shard"),
        ("infer_shard", "commit"),
        ("commit", "check_retailers"),
    }
    for task_id in ("crawl_catalog", "curate"):
        assert refresh.get_task(task_id).get_closest_mapped_task_group().group_id == "retailer", task_id
    assert type(refresh.get_task("infer_shard")).__name__.endswith("MappedOperator")
    assert refresh.get_task("crawl_catalog").map_index_template == "{{ fashionnet_retailer }}"
    # One retailer's failed crawl: the others' items are planned and committed, then the run fails.
    assert refresh.get_task("plan").trigger_rule == "all_done_min_one_success"
    assert refresh.get_task("check_retailers").trigger_rule == "all_success"
    assert "failed_retailers" in refresh.doc_md
    # Nightly at 02:00 UTC, and again whenever the train DAG publishes models (a re-score).
    assert refresh.timetable.timetable.expression == "0 2 * * *"
    assert {a.name for a in refresh.timetable.asset_condition.objects} == {"fashionnet_models"}
    assert refresh.max_active_runs == 1
    assert [a.name for a in refresh.get_task("commit").outlets] == ["fashionnet_repository"]
    recommend = dagbag.dags["fashionnet_recommend"]
    assert _edges(recommend) == {("validate", "recommend")}


def test_assets_chain_producers_to_consumers(dagbag):
    def outlets(dag_id: str) -> set[str]:
        return {a.name for t in dagbag.dags[dag_id].tasks for a in t.outlets}

    def schedule_assets(dag_id: str) -> set[str]:
        return {a.name for a in dagbag.dags[dag_id].timetable.asset_condition.objects}

    assert "fashionnet_dataset" in outlets("fashionnet_ingest")
    assert schedule_assets("fashionnet_train") == {"fashionnet_dataset"}
    assert "fashionnet_models" in outlets("fashionnet_train")
    assert "fashionnet_repository" in outlets("fashionnet_repository_refresh")
    assert schedule_assets("fashionnet_recommend") == {"fashionnet_repository"}


def test_recommend_maps_one_task_per_batch_of_users(dagbag):
    dag = dagbag.dags["fashionnet_recommend"]
    assert type(dag.get_task("recommend")).__name__.endswith("MappedOperator")
    assert {a.name for a in dag.get_task("recommend").outlets} == {"fashionnet_recommendations"}


@pytest.mark.parametrize(
    "conf",
    [
        {},  # the Asset-triggered run: every user, the settings' defaults
        {"user_id": "", "score": None, "k": None},
        {
            "user_id": "ann",
            "image_keys": ["users/ann/a photo.jpg"],
            "k": 100,
            "score": "weighted",
            "mmr_lambda": 0,
            "retailers": ["demo-store"],
            "categories": ["t-shirt"],
            "price_min": 0,
            "price_max": 49.9,
        },
    ],
)
def test_recommend_params_accept_good_input(dagbag, conf):
    from airflow.sdk.definitions.param import ParamsDict

    params = ParamsDict(dagbag.dags["fashionnet_recommend"].params)
    params.update(conf)
    params.validate()


@pytest.mark.parametrize(
    "conf, message",
    [
        ({"k": 0}, "minimum"),
        ({"k": 101}, "maximum"),
        ({"k": 2.5}, "is not of type"),
        ({"user_id": "../etc"}, "does not match"),
        ({"user_id": "a" * 65}, "does not match"),
        ({"image_keys": ["users/ann/../bob/x.jpg"]}, "does not match"),
        ({"image_keys": ["users/ann/sub/x.jpg"]}, "does not match"),
        ({"image_keys": ["users/ann/_shown/2026-11-01.parquet"]}, "does not match"),
        ({"image_keys": ["https://example.com/users/ann/x.jpg"]}, "does not match"),
        ({"image_keys": ["/users/ann/x.jpg"]}, "does not match"),
        ({"image_keys": ["images/full/x.jpg"]}, "does not match"),
        ({"image_keys": "users/ann/x.jpg"}, "is not of type"),
        ({"score": "cosine"}, "is not one of"),
        ({"mmr_lambda": 1.5}, "maximum"),
        ({"mmr_lambda": -0.1}, "minimum"),
        ({"retailers": ["../other"]}, "does not match"),
        ({"categories": [""]}, "minLength"),
        ({"price_min": -1}, "minimum"),
        ({"price_max": "cheap"}, "is not of type"),
    ],
)
def test_recommend_params_reject_bad_input_before_any_work(dagbag, conf, message):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dagbag.dags["fashionnet_recommend"].params)
    with pytest.raises(ParamValidationError, match=message):
        params.update(conf)
        params.validate()


@pytest.mark.parametrize("dag_id", ["fashionnet_ingest", "fashionnet_repository_refresh"])
@pytest.mark.parametrize(
    "conf, message",
    [
        ({"start_url": "file:///etc/passwd"}, "does not match"),
        ({"retailer": "../other"}, "does not match"),
        ({"retailers": ["demo-store", "../other"]}, "does not match"),
        ({"retailers": "demo-store"}, "is not of type 'null', 'array'"),
    ],
)
def test_crawl_params_reject_urls_and_names_that_are_not_shops(dagbag, dag_id, conf, message):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dagbag.dags[dag_id].params)
    with pytest.raises(ParamValidationError, match=message):
        params.update(conf)
        params.validate()


def test_every_dag_has_docs_for_the_ui(dagbag):
    """Issue 12: train and recommend had no doc_md (the UI's Docs tab was empty)."""
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md and len(dag.doc_md) > 200 and dag.doc_md.strip().splitlines()[0], dag_id


def test_publish_logs_each_promotion_decision(dagbag, capsys, tmp_path, console_logging):
    """Issue 12: train.publish logged nothing of its promotion decisions."""
    import types

    dag = dagbag.dags["fashionnet_train"]
    publish = dag.get_task("publish").python_callable
    decisions = {
        "pattern": {
            "attribute": "pattern",
            "candidate": "v2",
            "current": "v1",
            "promoted": False,
            "reason": "test accuracy 0.4000 vs current 0.5000 (worse, tolerance 0.0)",
            "forced": False,
        },
        "fabric": {
            "attribute": "fabric",
            "candidate": "v2",
            "current": None,
            "promoted": True,
            "reason": "first version",
            "forced": False,
        },
    }
    with pytest.MonkeyPatch.context() as patch:
        # A stand-in registry (the real one would load and compare networks): the decisions are what publish logs.
        registry = types.ModuleType("models.registry")
        registry.promote = lambda store, attribute, version, **kw: decisions[attribute]
        patch.setitem(sys.modules, "models.registry", registry)
        patch.setattr(
            "pipeline.settings.get_settings",
            lambda: types.SimpleNamespace(
                training=types.SimpleNamespace(promotion_tolerance=0.0),
                taxonomy=types.SimpleNamespace(names=["pattern", "fabric"]),
                store_uri=f"file://{tmp_path}",
                s3_endpoint_url=None,
            ),
        )
        publish(
            [{"attribute": "pattern", "version": "v2"}, {"attribute": "fabric", "version": "v2"}],
            {"force_promotion": False},
        )
    out = capsys.readouterr().out
    assert (
        "train.publish: pattern v2: not promoted, v1 stays current (current was v1; test accuracy 0.4000 vs "
        "current 0.5000 (worse, tolerance 0.0))"
    ) in out
    assert "train.publish: fabric v2: promoted (current was None; first version)" in out
