"""Repository refresh: crawl the catalog -> validate/dedup -> plan -> mapped inference shards -> commit.

The fashion-vector repository (``repository/fashion_vectors/``, a Hive-partitioned Parquet dataset) is
what recommendations and analysts read. It runs nightly at 02:00 UTC and whenever the train DAG
publishes models (Asset ``fashionnet_models``). The nightly run adds the catalog's new items and
updates changed ones; every run re-scores the rows whose model versions are not the published ones.
A models-triggered run crawls nothing: it only re-scores. Only those items are inferred, in
``infer_shard`` tasks mapped over shards of ``repository.shard_size`` items (at most
``repository.max_shards``); ``commit`` then replaces the changed files atomically.
"""
from __future__ import annotations

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from fashionnet_common import MODELS, REPOSITORY, TENSORFLOW_QUEUE, crawl_params, reject_unknown_params

SCHEDULE = AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC"), assets=[MODELS])


def _models_triggered(dag_run) -> bool:
    return str(getattr(dag_run, "run_type", "")).lower().endswith("asset_triggered")


@dag(dag_id="fashionnet_repository_refresh", schedule=SCHEDULE, catchup=False, max_active_runs=1,
     params=crawl_params(), tags=["fashionnet"])
def fashionnet_repository_refresh():
    @task
    def crawl_catalog(params: dict, dag_run=None) -> str | None:
        from pipeline.runs import batch_id, stage
        from scrapers.crawl import run_crawl

        reject_unknown_params(params, crawl_params())
        if _models_triggered(dag_run):
            print("[fashionnet] refresh.crawl: run triggered by new models; nothing to crawl, re-scoring only", flush=True)
            return None
        crawl_id = batch_id("catalog", dag_run.run_after)
        with stage("refresh.crawl") as report:
            report.summary = run_crawl("catalog", crawl_id, retailer=params["retailer"], start_url=params["start_url"])
        return crawl_id

    @task
    def curate(crawl_id: str | None) -> str | None:
        from pipeline.curate import curate_batch
        from pipeline.runs import stage
        from pipeline.storage import open_store

        if crawl_id is None:
            return None
        with stage("refresh.curate") as report:
            report.summary = curate_batch(open_store(), crawl_id)
        return crawl_id

    @task
    def plan(batch: str | None, dag_run=None) -> list[dict]:
        from pipeline.repository import plan_refresh
        from pipeline.runs import stage
        from pipeline.storage import open_store

        commit_id = batch or f"rescore-{dag_run.run_after:%Y%m%dT%H%M%S}"
        with stage("refresh.plan") as report:
            # New items go to the partition of the batch's night (catalog-<YYYYMMDD>: the run's date).
            report.summary = plan_refresh(open_store(), commit_id, batch_id=batch)
        return [{"commit_id": commit_id, "shard": shard} for shard in range(report.summary["shards"])]

    @task(queue=TENSORFLOW_QUEUE)
    def infer_shard(work: dict) -> dict:
        from models.inference import infer_shard as run_shard
        from pipeline.runs import plain, stage
        from pipeline.storage import open_store

        with stage(f"refresh.infer_shard.{work['shard']}") as report:
            report.summary = run_shard(open_store(), work["commit_id"], work["shard"])
        summary = dict(report.summary)
        summary["skipped_item_ids"] = summary["skipped_item_ids"][:100]  # the commit record keeps up to 1,000
        return plain(summary)

    @task(outlets=[REPOSITORY])
    def commit(shards: list[dict]) -> dict:
        from pipeline.repository import commit_refresh
        from pipeline.runs import plain, stage
        from pipeline.storage import open_store

        commit_id = shards[0]["commit_id"]  # a plan has at least one shard
        with stage("refresh.commit") as report:
            report.summary = commit_refresh(open_store(), commit_id)
        return plain({k: v for k, v in report.summary.items() if k != "skipped_item_ids"})

    commit(infer_shard.expand(work=plan(curate(crawl_catalog()))))


fashionnet_repository_refresh_dag = fashionnet_repository_refresh()
