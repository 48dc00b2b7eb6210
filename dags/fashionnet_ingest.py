"""Ingest: crawl a retailer with search queries (weak labels) -> validate -> dedup -> review queue ->
approval -> dataset.

The review policy (``curation.review_policy``, or the ``review_policy`` Param) picks the gate:
``auto_accept`` accepts every undecided item and approves the batch itself (the demo); ``manual``
leaves the items to reviewers (the review page) and waits in ``approve_batch``, an Airflow
Human-in-the-loop approval (Browse -> Required Actions), before the batch may enter the dataset that
`fashionnet_train` consumes. Rejecting there, or no answer within the timeout, keeps the batch out.
"""
from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task

from fashionnet_common import DATASET, TENSORFLOW_QUEUE, crawl_params, reject_unknown_params

# A batch nobody approves within this time is rejected (ApprovalOperator's default option).
APPROVAL_TIMEOUT_HOURS = 72

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

        reject_unknown_params(params, PARAMS)
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
    def enqueue_for_review(batch: str) -> str:
        from pipeline.review import enqueue
        from pipeline.runs import stage
        from pipeline.storage import open_store

        with stage("ingest.enqueue") as report:
            report.summary = {"queued": enqueue(open_store(), batch)}
        return batch

    @task(queue=TENSORFLOW_QUEUE)
    def predict_for_review(batch: str) -> dict:
        """The published networks' guesses, so reviewers can sort by doubt (nothing before a first training)."""
        from models.review_predictions import predict_review_queue
        from pipeline.runs import plain, stage
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        with stage("ingest.predict") as report:
            report.summary = predict_review_queue(open_store(), batch, get_settings().taxonomy.names)
        return plain(report.summary)

    @task.branch
    def review_gate(batch: str, params: dict) -> str:
        """auto_accept: the policy decides the undecided items and approves the batch; manual: ask a person."""
        from pipeline.approval import batch_review_summary, record_approval
        from pipeline.review import POLICY_REVIEWER, apply_policy
        from pipeline.runs import stage
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        store = open_store()
        policy = params["review_policy"] or get_settings().curation["review_policy"]
        with stage("ingest.review") as report:
            decided = apply_policy(store, batch, policy)
            report.summary = {"policy": policy, "decided_by_policy": decided}
            if policy == "manual":
                return "approval_request"
            record_approval(store, batch, POLICY_REVIEWER, "policy", batch_review_summary(store, batch))
        return "build_dataset"

    @task
    def approval_request(batch: str) -> str:
        """The text the approver reads: the batch's counts and a link to the review page."""
        from pipeline.approval import approval_body, batch_review_summary
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        return approval_body(batch_review_summary(open_store(), batch), get_settings().review.get("page_url"))

    @task
    def record_human_approval(batch: str, ti=None) -> dict:
        """Runs only after "Approve" (a rejection or the auto_accept branch skips it)."""
        from pipeline.approval import batch_review_summary, record_approval
        from pipeline.storage import open_store

        response = ti.xcom_pull(task_ids="approve_batch") or {}
        user = response.get("responded_by_user") or {}
        approver = str(user.get("name") or user.get("id") or "airflow-user")
        store = open_store()
        return record_approval(store, batch, approver, "human", batch_review_summary(store, batch))

    @task(outlets=[DATASET], trigger_rule="none_failed_min_one_success")
    def build_dataset() -> dict:
        from pipeline.approval import approved_batches
        from pipeline.review import build_dataset as rebuild
        from pipeline.runs import plain, stage
        from pipeline.storage import open_store

        store = open_store()
        with stage("ingest.dataset") as report:
            report.summary = rebuild(store, batches=approved_batches(store))
        return plain(report.summary)

    batch = enqueue_for_review(curate(crawl()))
    gate = review_gate(batch)
    approve = ApprovalOperator(
        task_id="approve_batch",
        subject="FashionNet: approve ingest batch {{ ti.xcom_pull(task_ids='enqueue_for_review') }}",
        body="{{ ti.xcom_pull(task_ids='approval_request') }}",
        defaults=ApprovalOperator.REJECT,  # taken when nobody answers within the response timeout
        response_timeout=timedelta(hours=APPROVAL_TIMEOUT_HOURS),
    )
    dataset = build_dataset()
    predict_for_review(batch) >> gate
    gate >> approval_request(batch) >> approve >> record_human_approval(batch) >> dataset
    gate >> dataset


fashionnet_ingest_dag = fashionnet_ingest()
