"""Nightly repository refresh: crawl the catalog -> validate/dedup -> batch inference -> Parquet.

The fashion-vector repository is what recommendations and analysts read.
"""
from __future__ import annotations

from airflow.sdk import dag, task

from fashionnet_common import REPOSITORY, crawl_params


@dag(dag_id="fashionnet_repository_refresh", schedule="0 2 * * *", catchup=False, params=crawl_params(),
     tags=["fashionnet"])
def fashionnet_repository_refresh():
    @task
    def crawl_catalog(params: dict, dag_run=None) -> str:
        from pipeline.runs import batch_id, stage
        from scrapers.crawl import run_crawl

        crawl_id = batch_id("catalog", dag_run.run_after)
        with stage("refresh.crawl") as report:
            report.summary = run_crawl("catalog", crawl_id, retailer=params["retailer"], start_url=params["start_url"])
        return crawl_id

    @task
    def curate(crawl_id: str) -> str:
        from pipeline.curate import curate_batch
        from pipeline.runs import stage
        from pipeline.storage import open_store

        with stage("refresh.curate") as report:
            report.summary = curate_batch(open_store(), crawl_id)
        return crawl_id

    @task(outlets=[REPOSITORY])
    def infer(batch: str) -> dict:
        from models.inference import build_repository
        from pipeline.runs import plain, stage
        from pipeline.storage import open_store

        with stage("refresh.inference") as report:
            report.summary = build_repository(open_store(), batch)
        return plain(report.summary)

    infer(curate(crawl_catalog()))


fashionnet_repository_refresh_dag = fashionnet_repository_refresh()
