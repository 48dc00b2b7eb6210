"""Ingest: crawl a retailer with search queries (weak labels) -> validate -> dedup -> review queue.

Accepted items become the labelled dataset that `fashionnet_train` consumes.
"""
from __future__ import annotations

from airflow.sdk import Param, dag, task

from fashionnet_common import DATASET, crawl_params

PARAMS = {
    **crawl_params(),
    "review_policy": Param(None, type=["null", "string"], enum=[None, "auto_accept", "manual"],
                           description="Override the configured review policy"),
}


@dag(dag_id="fashionnet_ingest", schedule=None, catchup=False, params=PARAMS, tags=["fashionnet"])
def fashionnet_ingest():
    @task
    def crawl(params: dict, dag_run=None) -> str:
        from pipeline.runs import batch_id, stage
        from scrapers.crawl import run_crawl

        crawl_id = batch_id("ingest", dag_run.run_after)
        with stage("ingest.crawl") as report:
            report.summary = run_crawl("query", crawl_id, retailer=params["retailer"], start_url=params["start_url"])
        return crawl_id

    @task
    def curate(crawl_id: str) -> str:
        from pipeline.curate import curate_batch
        from pipeline.runs import stage
        from pipeline.storage import open_store

        with stage("ingest.curate") as report:
            report.summary = curate_batch(open_store(), crawl_id)
        return crawl_id

    @task
    def enqueue_for_review(batch: str, params: dict) -> str:
        from pipeline.review import apply_policy, enqueue
        from pipeline.runs import stage
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        store = open_store()
        policy = params["review_policy"] or get_settings().curation["review_policy"]
        with stage("ingest.review") as report:
            report.summary = {"queued": enqueue(store, batch), "policy": policy,
                              "decided_by_policy": apply_policy(store, batch, policy)}
        return batch

    @task(outlets=[DATASET])
    def build_dataset(batch: str) -> dict:
        from pipeline.review import build_dataset as rebuild
        from pipeline.runs import plain, stage
        from pipeline.storage import open_store

        with stage("ingest.dataset") as report:
            report.summary = rebuild(open_store())
        return plain(report.summary)

    build_dataset(enqueue_for_review(curate(crawl())))


fashionnet_ingest_dag = fashionnet_ingest()
