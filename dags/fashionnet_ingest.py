"""Ingest: crawl every searchable retailer with search queries (weak labels) -> validate -> dedup ->
review queue -> approval -> dataset.

The crawl, curation, queueing and review predictions are mapped, one task per retailer with a
``search_url`` in ``config/settings.yaml`` (or those named by the ``retailers`` Param, or one
``retailer``/``start_url``), each batch keyed ``ingest-<YYYYMMDD>-<HHMMSS>-<retailer>`` (the run's time: every
run is a batch of its own, so a second run on one day never inherits the first one's decisions). The review policy
(``curation.review_policy``, or the ``review_policy`` Param) picks the gate for the night's batches:
``auto_accept`` accepts every undecided item and approves each batch itself (the demo); ``manual``
leaves the items to reviewers (the review page) and waits in ``approve_batch``, an Airflow
Human-in-the-loop approval (Browse -> Required Actions), before the batches may enter the dataset that
`fashionnet_train` consumes. Approve is the request's primary button; Reject, or no answer within the
timeout, keeps them out and is recorded (``record_rejection``: ``review/rejections/<batch>.json``). The
request's text links each batch on the review page and says when its counts were taken.

A crawl that reached nothing (the shop down: every request refused) fails its task with one line naming
the host and the error; nothing downstream runs on that retailer's batch, and no dataset is published
when no retailer's batch was queued.

One retailer's failure: its mapped tasks are red; the gate runs (``all_done_min_one_success``) over
the batches that were queued, so the others' items still reach review and the dataset, and the last
task, ``check_retailers``, fails the run, naming the retailers whose batch is missing.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task, task_group
from fashionnet_common import (
    DATASET,
    RETAILER_LABEL,
    TENSORFLOW_QUEUE,
    crawl_params,
    label_with_retailer,
    reject_unknown_params,
)

from pipeline.settings import get_settings

# A batch nobody approves within this time is rejected (ApprovalOperator's default option).
APPROVAL_TIMEOUT_HOURS = 72

PARAMS = {
    **crawl_params(),
    "review_policy": Param(
        None,
        type=["null", "string"],
        enum=[None, "auto_accept", "manual"],
        title="Review policy",
        values_display={
            "null": "as configured (curation.review_policy)",
            "auto_accept": "auto_accept: accept every valid item, approve the batch",
            "manual": "manual: reviewers decide, a person approves",
        },
        description="Which gate the run's batches pass. Empty: the configured policy "
        f"(curation.review_policy, {get_settings().curation.review_policy})",
    ),
}


@dag(dag_id="fashionnet_ingest", schedule=None, catchup=False, params=PARAMS, tags=["fashionnet"], doc_md=__doc__)
def fashionnet_ingest():
    @task
    def retailers_to_crawl(params: dict, dag_run=None) -> list[dict]:
        """One crawl per retailer with a search page; names and URLs are checked here, before any request."""
        from pipeline.review.approval import ingest_batch_id
        from scrapers.retailers import crawl_targets, ingest_crawl, searchable_retailers

        reject_unknown_params(params, PARAMS)
        targets = crawl_targets(params["retailers"], params["retailer"], params["start_url"], searchable_retailers())
        for target in targets:
            ingest_crawl(target["retailer"], target["start_url"])  # refuses a shop without a search page
        return [{**t, "crawl_id": ingest_batch_id(dag_run.run_after, t["retailer"])} for t in targets]

    @task(map_index_template=RETAILER_LABEL)
    def crawl(target: dict) -> str:
        from pipeline.runs import stage
        from scrapers.retailers import ingest_crawl

        label_with_retailer(target)
        with stage(f"ingest.crawl.{target['retailer']}") as report:
            report.summary = ingest_crawl(target["retailer"], target["start_url"]).run(target["crawl_id"])
        return target["crawl_id"]

    @task
    def curate(crawl_id: str) -> str:
        from pipeline.curation.curate import curate_batch
        from pipeline.runs import stage
        from pipeline.storage import open_store

        with stage("ingest.curate") as report:
            report.summary = curate_batch(open_store(), crawl_id)
        return crawl_id

    @task
    def enqueue_for_review(batch: str) -> str:
        from pipeline.review.queue import enqueue
        from pipeline.runs import stage
        from pipeline.storage import open_store

        with stage("ingest.enqueue") as report:
            report.summary = {"queued": enqueue(open_store(), batch)}
        return batch

    @task(queue=TENSORFLOW_QUEUE)
    def predict_for_review(batch: str) -> dict:
        """The published networks' guesses, so reviewers can sort by doubt (nothing before a first training).
        Its result names the batch: the batches whose predictions are done go on to the review gate."""
        from pipeline.review.predictions import predict_review_queue
        from pipeline.runs import plain, stage
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        with stage("ingest.predict") as report:
            report.summary = predict_review_queue(open_store(), batch, get_settings().taxonomy.names)
        return plain({"batch": batch, **report.summary})

    @task(trigger_rule="all_done_min_one_success")
    def queued_batches(ti=None) -> list[str]:
        """The batches queued with their predictions, once every retailer's tasks are done (a failed
        retailer's tasks pushed nothing). A list of task ids always pulls a list: a single task id with
        one result would pull that value alone."""
        return sorted(p["batch"] for p in ti.xcom_pull(task_ids=["predict_for_review"]) if p)

    @task.branch
    def review_gate(batches: list[str], params: dict) -> str:
        """auto_accept: the policy decides the undecided items and approves each batch; manual: ask a person."""
        from pipeline.review.approval import batch_review_summary, record_approval
        from pipeline.review.queue import POLICY_REVIEWER, apply_policy
        from pipeline.runs import stage
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        store = open_store()
        policy = params["review_policy"] or get_settings().curation.review_policy
        with stage("ingest.review") as report:
            decided = {batch: apply_policy(store, batch, policy) for batch in batches}
            report.summary = {"policy": policy, "decided_by_policy": decided}
            if policy == "manual":
                return "approval_request"
            for batch in batches:
                record_approval(store, batch, POLICY_REVIEWER, "policy", batch_review_summary(store, batch))
        return "build_dataset"

    @task
    def approval_request(batches: list[str]) -> str:
        """The text the approver reads: each batch's counts (and when they were taken) and a link that opens it
        on the review page. Any earlier approval of these batches is withdrawn: they wait for this answer."""
        from pipeline.review.approval import approval_body, batch_review_summary, withdraw_approval
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        store, page = open_store(), get_settings().review.page_url
        for batch in batches:
            withdraw_approval(store, batch)
        return "\n\n".join(approval_body(batch_review_summary(store, batch), page) for batch in batches)

    @task
    def record_human_approval(batches: list[str], ti=None) -> list[dict]:
        """Runs after "Approve" (a rejection or the auto_accept branch skips it); approves every batch shown,
        with the counts of this moment. The timeout also takes "Approve" (the default option, so that it is the
        primary button) but with nobody responding: that fails here, and the batches stay out."""
        from pipeline.review.approval import batch_review_summary, hitl_outcome, record_approval
        from pipeline.storage import open_store

        outcome, approver = hitl_outcome(ti.xcom_pull(task_ids="approve_batch"))
        if outcome != "approved":
            raise RuntimeError(f"batches {batches} not approved ({outcome}): they stay out of the dataset")
        store = open_store()
        return [
            record_approval(
                store,
                batch,
                approver or "airflow-user (task marked successful)",
                "human",
                batch_review_summary(store, batch),
            )
            for batch in batches
        ]

    @task(outlets=[DATASET], trigger_rule="none_failed_min_one_success")
    def build_dataset() -> dict:
        from pipeline.dataset.build import build_dataset as rebuild
        from pipeline.review.approval import approved_batches
        from pipeline.runs import plain, stage
        from pipeline.storage import open_store

        store = open_store()
        with stage("ingest.dataset") as report:
            report.summary = rebuild(store, batches=approved_batches(store))
        return plain(report.summary)

    @task(trigger_rule="all_done")
    def record_rejection(ti=None) -> list[dict]:
        """After a person's "Reject" (or no answer within the timeout): the batches are recorded as rejected
        and leave the duplicate index. Nothing to do after an approval or on the auto_accept branch."""
        from pipeline.review.approval import batch_review_summary, hitl_outcome
        from pipeline.review.approval import record_rejection as reject
        from pipeline.storage import open_store

        response = ti.xcom_pull(task_ids="approve_batch")
        if not response:  # not asked (auto_accept, or no batch queued), or the task was marked successful by hand
            return []
        batches = ti.xcom_pull(task_ids="queued_batches") or []
        outcome, who = hitl_outcome(response)
        if outcome == "approved":
            return []
        store = open_store()
        reason = "no answer within the approval timeout" if outcome == "timeout" else "rejected at the approval"
        return [reject(store, batch, who, reason, batch_review_summary(store, batch)) for batch in batches]

    @task(trigger_rule="all_done")
    def check_retailers(targets: list[dict] | None, batches: list[str] | None) -> None:
        """Fails the run when a retailer's batch never reached the review queue (its tasks are red). Either
        input is None when its task did not run (every retailer failed, or the Params were refused)."""
        if targets is None:
            raise RuntimeError("retailers_to_crawl failed: no crawl was started (see its log)")
        batches = batches or []
        failed = sorted(t["retailer"] for t in targets if t["crawl_id"] not in batches)
        if failed:
            raise RuntimeError(
                f"{len(batches)} batch(es) queued; the crawl or curation of {failed} failed "
                "(their tasks are red: see the crawl task's log)"
            )

    @task_group(group_id="retailer", prefix_group_id=False)
    def retailer(target: dict):
        """One retailer's batch up to the review queue: a mapped group, so a failure stays in its own map index."""
        batch = enqueue_for_review(curate(crawl(target)))
        predict_for_review(batch)

    targets = retailers_to_crawl()
    batches = queued_batches()
    retailer.expand(target=targets) >> batches  # after every retailer's predictions too
    gate = review_gate(batches)
    approve = ApprovalOperator(
        task_id="approve_batch",
        subject="FashionNet: approve the ingest batches of {{ ds }}",
        body="{{ ti.xcom_pull(task_ids='approval_request') }}",
        # The default option is the form's highlighted (primary) button, and is also what the timeout takes:
        # record_human_approval refuses an "Approve" nobody gave, and record_rejection records it.
        defaults=ApprovalOperator.APPROVE,
        response_timeout=timedelta(hours=APPROVAL_TIMEOUT_HOURS),
    )
    dataset = build_dataset()
    gate >> approval_request(batches) >> approve >> record_human_approval(batches) >> dataset
    gate >> dataset
    dataset >> record_rejection() >> check_retailers(targets, batches)


fashionnet_ingest_dag = fashionnet_ingest()
