"""Repository refresh: every retailer's catalog crawl -> validate/dedup -> plan -> mapped inference shards -> commit.

The fashion-vector repository (``repository/fashion_vectors/``, a Hive-partitioned Parquet dataset) is
what recommendations and analysts read. It runs nightly at 02:00 UTC and whenever the train DAG
publishes models (Asset ``fashionnet_models``). The nightly run crawls every retailer of
``config/settings.yaml`` (or those named by the ``retailers`` Param, or one ``retailer``/``start_url``):
``crawl_catalog`` and ``curate`` are mapped, one task per retailer (labelled with its name in the UI),
each crawl keyed ``catalog-<YYYYMMDD>-<retailer>``. It adds the catalog's new items and updates changed
ones; every run re-scores the rows whose model versions are not the published ones. A models-triggered
run crawls nothing: it only re-scores, unless the repository is still empty (the first training's models:
then it crawls every configured retailer, so the first chain ends with items to recommend). Only those items are inferred, in ``infer_shard`` tasks mapped
over shards of ``repository.shard_size`` items (at most ``repository.max_shards``); ``commit`` then
replaces the changed files atomically, as commit ``catalog-<YYYYMMDD>`` (``rescore-...`` without a crawl).

One retailer's failure: its mapped crawl (or curate) task fails and is red; ``plan`` runs anyway
(trigger rule ``all_done_min_one_success``) over every retailer that succeeded, so their items are
committed and the Asset is updated; the commit record lists the failed retailers
(``failed_retailers``), and the last task, ``check_retailers``, then fails, so the DAG run ends failed
and the failure cannot go unnoticed. Rerunning the night crawls again and commits idempotently.
"""

from __future__ import annotations

import logging

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task, task_group
from fashionnet_common import (
    MODELS,
    REPOSITORY,
    RETAILER_LABEL,
    TENSORFLOW_QUEUE,
    crawl_params,
    label_with_retailer,
    reject_unknown_params,
)

# The task bodies' logger (the task log under Airflow), named: a DagBag imports this file as
# unusual_prefix_<sha1>_<file>, and the tools show the dags.* loggers (fashionnet_tools.console).
logger = logging.getLogger("dags.fashionnet_repository_refresh")

SCHEDULE = AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC"), assets=[MODELS])


def _models_triggered(dag_run) -> bool:
    return str(getattr(dag_run, "run_type", "")).lower().endswith("asset_triggered")


def _repository_empty() -> bool:
    """No fashion vector stored yet (the repository's Parquet files: pipeline.repository)."""
    from pipeline.storage import open_store
    from pipeline.store_layout import FASHION_VECTORS_PREFIX

    return not any(key.endswith(".parquet") for key in open_store().list(FASHION_VECTORS_PREFIX))


@dag(
    dag_id="fashionnet_repository_refresh",
    schedule=SCHEDULE,
    catchup=False,
    max_active_runs=1,
    params=crawl_params(),
    tags=["fashionnet"],
    doc_md=__doc__,
)
def fashionnet_repository_refresh():
    @task
    def retailers_to_crawl(params: dict, dag_run=None) -> list[dict]:
        """The night's crawls, one per retailer; every name and URL is checked here, before any request."""
        from scrapers.retailers import catalog_retailers, crawl_targets, retailer_batch_id

        reject_unknown_params(params, crawl_params())
        if _models_triggered(dag_run):
            if not _repository_empty():
                logger.info(
                    "[fashionnet] refresh.crawl: run triggered by new models; nothing to crawl, re-scoring only"
                )
                return []
            logger.info(
                "[fashionnet] refresh.crawl: run triggered by new models and the repository is empty: crawling "
                "every configured retailer to fill it"
            )
        targets = crawl_targets(params["retailers"], params["retailer"], params["start_url"], catalog_retailers())
        return [{**t, "crawl_id": retailer_batch_id("catalog", dag_run.run_after, t["retailer"])} for t in targets]

    @task(map_index_template=RETAILER_LABEL)
    def crawl_catalog(target: dict) -> dict:
        from pipeline.runs import stage
        from scrapers.retailers import catalog_crawl

        label_with_retailer(target)
        with stage(f"refresh.crawl.{target['retailer']}") as report:
            report.summary = catalog_crawl(target["retailer"], target["start_url"]).run(target["crawl_id"])
        return target

    @task(map_index_template=RETAILER_LABEL)
    def curate(target: dict) -> dict:
        from pipeline.curation.curate import curate_batch
        from pipeline.runs import stage
        from pipeline.storage import open_store

        label_with_retailer(target)
        with stage(f"refresh.curate.{target['retailer']}") as report:
            report.summary = curate_batch(open_store(), target["crawl_id"])
        return target

    @task(trigger_rule="all_done_min_one_success")
    def plan(targets: list[dict], dag_run=None, ti=None) -> list[dict]:
        """Runs when every retailer's tasks are done, over those that succeeded."""
        from pipeline.repository.plan import RefreshPlanRequest, plan_refresh
        from pipeline.runs import stage
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        # Every curate result pushed (a failed retailer's pushed nothing). A list of task ids always pulls a
        # list: a single task id with one result would pull that value alone.
        done = [t for t in ti.xcom_pull(task_ids=["curate"]) if t]
        batches = sorted(t["crawl_id"] for t in done)
        failed = sorted(t["retailer"] for t in targets if t["crawl_id"] not in batches)
        commit_id = f"catalog-{dag_run.run_after:%Y%m%d}" if targets else f"rescore-{dag_run.run_after:%Y%m%dT%H%M%S}"
        with stage("refresh.plan") as report:
            request = RefreshPlanRequest(
                commit_id,
                get_settings().taxonomy.names,
                batch_ids=batches,
                failed_retailers=failed,
                crawl_date=dag_run.run_after.date() if targets else None,  # new items: the run's night's partition
            )
            report.summary = plan_refresh(open_store(), request)
        return [{"commit_id": commit_id, "shard": shard} for shard in range(report.summary["shards"])]

    @task(queue=TENSORFLOW_QUEUE)
    def infer_shard(work: dict) -> dict:
        from pipeline.repository.infer import infer_shard as run_shard
        from pipeline.runs import plain, stage
        from pipeline.storage import open_store

        with stage(f"refresh.infer_shard.{work['shard']}") as report:
            report.summary = run_shard(open_store(), work["commit_id"], work["shard"])
        summary = dict(report.summary)
        summary["skipped_item_ids"] = summary["skipped_item_ids"][:100]  # the commit record keeps up to 1,000
        return plain(summary)

    @task(outlets=[REPOSITORY])
    def commit(shards: list[dict]) -> dict:
        from pipeline.repository.commit import commit_refresh
        from pipeline.runs import plain, stage
        from pipeline.storage import open_store

        commit_id = shards[0]["commit_id"]  # a plan has at least one shard
        with stage("refresh.commit") as report:
            report.summary = commit_refresh(open_store(), commit_id)
        return plain({k: v for k, v in report.summary.items() if k != "skipped_item_ids"})

    @task
    def check_retailers(record: dict) -> None:
        """Fails the run (after the others' items are committed) when a retailer's crawl failed."""
        failed = record.get("failed_retailers") or []
        if failed:
            raise RuntimeError(
                f"commit {record['commit_id']} holds {len(record.get('batch_ids') or [])} retailer(s); "
                f"the crawl or curation of {failed} failed (their tasks are red: see their logs)"
            )

    @task_group(group_id="retailer", prefix_group_id=False)
    def retailer(target: dict):
        """One retailer's crawl and curation: a mapped group, so a failure stays in its own map index."""
        curate(crawl_catalog(target))

    targets = retailers_to_crawl()
    planned = plan(targets)
    retailer.expand(target=targets) >> planned
    check_retailers(commit(infer_shard.expand(work=planned)))


fashionnet_repository_refresh_dag = fashionnet_repository_refresh()
