"""The object store's layout: every key and prefix a stage writes or reads, spelt once.

The store is the contract between the stages: the spiders write ``crawls/<crawl_id>/products.parquet``,
curation reads it, and so on to the recommendations. Each key format is a constant or a small function
here that builds the key from its parts; the spiders, networks, stages and DAG files use these names
instead of spelling keys. ``docs/architecture.md``'s store-layout table lists the same key patterns
(:data:`PATTERNS`), and ``tests/pipeline/test_store_layout.py`` checks the two against each other.

Prefixes name folders and end without ``/`` (:meth:`pipeline.storage.ObjectStore.list` takes either
spelling); a caller that compares a key with a prefix adds the ``/``. The only parts checked here are the
ones the stages always refused when malformed: a seen-set's retailer and a repository refresh's commit id.

Ground floor: the standard library only, so DAG files may import it at parse time.
"""

from __future__ import annotations

import re
import urllib.parse
from datetime import date

# -- the top-level areas ------------------------------------------------------------------------------
IMAGES_PREFIX = "images"
"""Product images, Scrapy's ImagesPipeline store (``IMAGES_STORE``) inside the object store."""
CRAWLS_PREFIX = "crawls"
"""One folder per crawl (the spider export pipeline) and the incremental crawls' seen-sets."""
CURATION_PREFIX = "curation"
"""One folder per curated batch (``pipeline.curation.curate``) and the cross-run hash index."""
REVIEW_PREFIX = "review"
"""The review queue, its audit log, predictions, batch approvals and rejections, reviewers."""
DATASET_PREFIX = "dataset"
"""The labelled dataset (``pipeline.dataset.build.build_dataset``) and its split (``pipeline.dataset.split``)."""
MODELS_PREFIX = "models"
"""The attribute networks: one folder per attribute, one per trained version (``models.train``)."""
REPOSITORY_PREFIX = "repository"
"""The fashion-vector repository, its commit records and the staging of refreshes in progress."""
USERS_PREFIX = "users"
"""Users' own photos (uploaded, or the demo driver's) and what each was shown (``pipeline.recommend.recommendations``)."""
PROFILES_PREFIX = "profiles"
"""The style profiles (``pipeline.recommend.recommendations``), a Hive-partitioned Parquet dataset."""
RECOMMENDATIONS_PREFIX = "recommendations"
"""The recommendations (``pipeline.recommend.recommendations``), a Hive-partitioned Parquet dataset."""
RECOMMENDATION_PAGES_PREFIX = "recommendations_html"
"""The recommendation pages (``pipeline.recommend.report``), outside the Parquet datasets' folders."""

#: Every top-level folder of the store, in pipeline order.
AREAS = (
    IMAGES_PREFIX,
    CRAWLS_PREFIX,
    CURATION_PREFIX,
    REVIEW_PREFIX,
    DATASET_PREFIX,
    MODELS_PREFIX,
    REPOSITORY_PREFIX,
    USERS_PREFIX,
    PROFILES_PREFIX,
    RECOMMENDATIONS_PREFIX,
    RECOMMENDATION_PAGES_PREFIX,
)


# -- images and crawls --------------------------------------------------------------------------------
def image_key(stored_path: str) -> str:
    """A product image, from the path ImagesPipeline stored it at (``full/<sha1(url)>.jpg``); the spiders."""
    return f"{IMAGES_PREFIX}/{stored_path}"


def crawl_prefix(crawl_id: str) -> str:
    """One crawl's exports, written by the spider export pipeline (``scrapers.pipelines``)."""
    return f"{CRAWLS_PREFIX}/{crawl_id}"


def crawl_products_key(crawl_id: str) -> str:
    """One row per product of the crawl; the spider export pipeline."""
    return f"{crawl_prefix(crawl_id)}/products.parquet"


def crawl_weak_labels_key(crawl_id: str) -> str:
    """The crawl's weak labels (from queries, names, descriptions, materials); the spider export pipeline."""
    return f"{crawl_prefix(crawl_id)}/weak_labels.parquet"


def crawl_summary_key(crawl_id: str) -> str:
    """The crawl's counts, drops, errors and run token; the spider export pipeline."""
    return f"{crawl_prefix(crawl_id)}/summary.json"


SEEN_PREFIX = f"{CRAWLS_PREFIX}/_seen"
"""The incremental crawls' seen-sets, one per retailer (``scrapers.seen``)."""
SEEN_RETAILER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def seen_key(retailer: str) -> str:
    """A retailer's seen-set, written by incremental crawls (``scrapers.seen``); the retailer must match
    :data:`SEEN_RETAILER` (ValueError otherwise)."""
    if not SEEN_RETAILER.match(retailer or ""):
        raise ValueError(f"retailer must match {SEEN_RETAILER.pattern} to name a seen-set, got {retailer!r}")
    return f"{SEEN_PREFIX}/{retailer}.parquet"


# -- curation -----------------------------------------------------------------------------------------
def curation_prefix(batch_id: str) -> str:
    """One curated batch's outputs, written by ``pipeline.curation.curate``."""
    return f"{CURATION_PREFIX}/{batch_id}"


def curation_accepted_key(batch_id: str) -> str:
    """The batch's valid, deduplicated items with their hashes and clusters; ``pipeline.curation.curate``."""
    return f"{curation_prefix(batch_id)}/accepted.parquet"


def curation_rejections_key(batch_id: str) -> str:
    """The batch's items dropped as invalid, with the reason; ``pipeline.curation.curate``."""
    return f"{curation_prefix(batch_id)}/rejections.parquet"


def curation_duplicates_key(batch_id: str) -> str:
    """The batch's items dropped as duplicates, with the item each duplicates; ``pipeline.curation.curate``."""
    return f"{curation_prefix(batch_id)}/duplicates.parquet"


def curation_summary_key(batch_id: str) -> str:
    """The batch's curation counts and the crawl it came from; ``pipeline.curation.curate``."""
    return f"{curation_prefix(batch_id)}/summary.json"


HASH_INDEX_PREFIX = f"{CURATION_PREFIX}/hash_index"
"""The cross-run hash index (``pipeline.curation.curate``), one folder per batch kind."""


def hash_index_prefix(kind: str) -> str:
    """The hash index of one batch kind (``ingest``): one file per batch; ``pipeline.curation.curate``."""
    return f"{HASH_INDEX_PREFIX}/{kind}"


def hash_index_key(kind: str, batch_id: str) -> str:
    """The items one batch kept, their hashes and thumbnails; written by ``pipeline.curation.curate``, deleted when
    the batch is rejected (``pipeline.review.approval``)."""
    return f"{hash_index_prefix(kind)}/{batch_id}.parquet"


# -- review -------------------------------------------------------------------------------------------
REVIEW_QUEUE_PREFIX = f"{REVIEW_PREFIX}/queue"
"""The review queues, one file per batch (``pipeline.review.queue.enqueue``)."""


def review_queue_key(batch_id: str) -> str:
    """The batch's items waiting for review, with weak labels and cluster; ``pipeline.review.queue``."""
    return f"{REVIEW_QUEUE_PREFIX}/{batch_id}.parquet"


REVIEW_DECISIONS_PREFIX = f"{REVIEW_PREFIX}/decisions"
"""The review audit logs, one folder per batch (``pipeline.review.queue``)."""


def review_decisions_prefix(batch_id: str) -> str:
    """The batch's append-only audit log of review decisions; ``pipeline.review.queue``."""
    return f"{REVIEW_DECISIONS_PREFIX}/{batch_id}"


def review_decision_key(batch_id: str, stamp: str, reviewer: str, unique: str) -> str:
    """One call's review decisions, written create-only by ``pipeline.review.queue.record_decisions``; ``unique``
    keeps two calls of the same reviewer and microsecond apart."""
    return f"{review_decisions_prefix(batch_id)}/{stamp}-{reviewer}-{unique}.parquet"


REVIEW_PREDICTIONS_PREFIX = f"{REVIEW_PREFIX}/predictions"
"""The published networks' guesses for the review queues (``pipeline.review.predictions``)."""


def review_predictions_key(batch_id: str) -> str:
    """The published networks' guesses for the batch's queue; ``pipeline.review.predictions``."""
    return f"{REVIEW_PREDICTIONS_PREFIX}/{batch_id}.parquet"


APPROVALS_PREFIX = f"{REVIEW_PREFIX}/approvals"
"""The batch gate's approvals, one record per approved batch (``pipeline.review.approval``)."""


def approval_key(batch_id: str) -> str:
    """Who approved the batch for the dataset, when, and the counts they saw; ``pipeline.review.approval``."""
    return f"{APPROVALS_PREFIX}/{batch_id}.json"


REJECTIONS_PREFIX = f"{REVIEW_PREFIX}/rejections"
"""The batch gate's rejections, one record per rejected batch (``pipeline.review.approval``)."""


def rejection_key(batch_id: str) -> str:
    """Who kept the batch out of the dataset for good, why and when; ``pipeline.review.approval``."""
    return f"{REJECTIONS_PREFIX}/{batch_id}.json"


REVIEWERS_KEY = f"{REVIEW_PREFIX}/reviewers.json"
"""The review page's reviewers and their scrypt hashes (``python -m pipeline.review.web add-reviewer``)."""

LOGIN_THROTTLE_PREFIX = f"{REVIEW_PREFIX}/login-throttle"
"""The review page's failed-login counters (``pipeline.review.web.auth.LoginThrottle``)."""


def login_throttle_key(digest: str) -> str:
    """The failed logins of one client address and reviewer name (``digest`` hashes both);
    ``pipeline.review.web.auth``."""
    return f"{LOGIN_THROTTLE_PREFIX}/{digest}.json"


# -- the dataset --------------------------------------------------------------------------------------
DATASET_ITEMS_KEY = f"{DATASET_PREFIX}/items.parquet"
"""Accepted items of approved batches with their final labels (``pipeline.dataset.build.build_dataset``)."""
DATASET_SPLIT_KEY = f"{DATASET_PREFIX}/split.parquet"
"""Each dataset item's split: train, validation or test (``pipeline.dataset.split``)."""
DATASET_SPLIT_REPORT_KEY = f"{DATASET_PREFIX}/split_report.json"
"""The split's realised shares per attribute class (``pipeline.dataset.split``)."""


# -- the networks -------------------------------------------------------------------------------------
def model_version_prefix(attribute: str, version: str) -> str:
    """One trained version of an attribute network: written by ``models.train``, ``models.evaluation``."""
    return f"{MODELS_PREFIX}/{attribute}/{version}"


def model_file_key(attribute: str, version: str) -> str:
    """The trained network (Keras format); ``models.train``."""
    return f"{model_version_prefix(attribute, version)}/model.keras"


def model_metrics_key(attribute: str, version: str) -> str:
    """The version's evaluation, classes, history and test-split fingerprint; ``models.train``."""
    return f"{model_version_prefix(attribute, version)}/metrics.json"


def model_artifact_key(attribute: str, version: str, name: str) -> str:
    """A picture or the model card of the version (``training_curves.png``, ``confusion_matrix.png``,
    ``model_card.md``); ``models.evaluation``."""
    return f"{model_version_prefix(attribute, version)}/{name}"


def model_checkpoint_prefix(attribute: str, version: str) -> str:
    """The per-epoch training checkpoint of a version in training; ``models.checkpoint``."""
    return f"{model_version_prefix(attribute, version)}/checkpoint"


def model_pointer_key(attribute: str) -> str:
    """The attribute's current (published) version; ``models.registry.promote``."""
    return f"{MODELS_PREFIX}/{attribute}/current.json"


def model_promotions_prefix(attribute: str) -> str:
    """Every promotion decision of the attribute; ``models.registry.promote``."""
    return f"{MODELS_PREFIX}/{attribute}/promotions"


def model_promotion_key(attribute: str, stamp: str, version: str) -> str:
    """One promotion decision (taken or refused) about ``version``; ``models.registry.promote``."""
    return f"{model_promotions_prefix(attribute)}/{stamp}-{version}.json"


# -- the fashion-vector repository --------------------------------------------------------------------
FASHION_VECTORS_PREFIX = f"{REPOSITORY_PREFIX}/fashion_vectors"
"""The fashion-vector repository, a Hive-partitioned Parquet dataset (``pipeline.repository``)."""
REPOSITORY_COMMON_METADATA_KEY = f"{FASHION_VECTORS_PREFIX}/_common_metadata"
"""The repository's file schema (Parquet convention); ``pipeline.repository.commit.commit_refresh``."""
REPOSITORY_COMMITS_PREFIX = f"{REPOSITORY_PREFIX}/commits"
"""One record per repository refresh (``pipeline.repository.commit.commit_refresh``)."""
REPOSITORY_STAGING_PREFIX = f"{REPOSITORY_PREFIX}/_staging"
"""The repository refreshes in progress, one folder per refresh (``pipeline.repository``)."""
COMMIT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def repository_partition_prefix(crawl_date: date, retailer: str) -> str:
    """The repository's partition of one night and retailer (the retailer URI-encoded);
    ``pipeline.repository``."""
    return f"{FASHION_VECTORS_PREFIX}/crawl_date={crawl_date:%Y-%m-%d}/retailer={urllib.parse.quote(retailer, safe='')}"


def repository_file_key(crawl_date: date, retailer: str, index: int, count: int) -> str:
    """File ``index`` of the ``count`` files of a partition; ``pipeline.repository.commit.commit_refresh``."""
    return f"{repository_partition_prefix(crawl_date, retailer)}/part-{index:05d}-of-{count:05d}.parquet"


def _checked_commit_id(commit_id: str) -> str:
    if not COMMIT_ID.fullmatch(commit_id):
        raise ValueError(f"commit id {commit_id!r}: letters, digits, '_', '.', '-' only")
    return commit_id


def repository_commit_key(commit_id: str) -> str:
    """What refresh ``commit_id`` changed; ``pipeline.repository.commit.commit_refresh`` (a malformed id:
    ValueError)."""
    return f"{REPOSITORY_COMMITS_PREFIX}/{_checked_commit_id(commit_id)}.json"


def repository_staging_prefix(commit_id: str) -> str:
    """Refresh ``commit_id`` in progress, deleted by its commit; ``pipeline.repository`` and
    ``pipeline.repository.infer.infer_shard`` (a malformed id: ValueError)."""
    return f"{REPOSITORY_STAGING_PREFIX}/{_checked_commit_id(commit_id)}"


def repository_plan_key(commit_id: str) -> str:
    """The refresh's plan: batch, counts, shards, model versions; ``pipeline.repository.plan.plan_refresh``."""
    return f"{repository_staging_prefix(commit_id)}/plan.json"


def repository_plan_items_key(commit_id: str) -> str:
    """The refresh's plan per item: action, target file, shard; ``pipeline.repository.plan.plan_refresh``."""
    return f"{repository_staging_prefix(commit_id)}/plan.parquet"


def repository_shard_summary_key(commit_id: str, shard: int) -> str:
    """What the inference of one shard of the refresh did; ``pipeline.repository.infer.infer_shard``."""
    return f"{repository_staging_prefix(commit_id)}/shard-{shard:05d}.json"


def repository_shard_vectors_key(commit_id: str, shard: int) -> str:
    """The fashion vectors of one shard of the refresh; ``pipeline.repository.infer.infer_shard``."""
    return f"{repository_staging_prefix(commit_id)}/shard-{shard:05d}.parquet"


def repository_staged_file_key(commit_id: str, key: str) -> str:
    """The new version of repository file ``key`` before it is moved into place (outside the dataset
    prefix; one name per file, so a retried commit replaces what an earlier attempt staged);
    ``pipeline.repository.commit.commit_refresh``."""
    relative = key[len(FASHION_VECTORS_PREFIX) + 1 :] if key.startswith(FASHION_VECTORS_PREFIX + "/") else key
    return f"{repository_staging_prefix(commit_id)}/publish/{relative}"


def repository_committed_key(commit_id: str) -> str:
    """The refresh's commit record, written once it is committed and deleted last of the staging (so a
    retried commit only finishes the clean-up); ``pipeline.repository.commit.commit_refresh``."""
    return f"{repository_staging_prefix(commit_id)}/committed.json"


# -- users, profiles and recommendations --------------------------------------------------------------
def user_prefix(user_id: str) -> str:
    """A user's folder: their photos directly in it, what they were shown in ``_shown``."""
    return f"{USERS_PREFIX}/{user_id}"


def user_image_key(user_id: str, file_name: str) -> str:
    """One of the user's own clothing photos, put there by the user (or the demo driver)."""
    return f"{user_prefix(user_id)}/{file_name}"


def shown_prefix(user_id: str) -> str:
    """Everything the user was shown, one folder per day; ``pipeline.recommend.recommendations``."""
    return f"{user_prefix(user_id)}/_shown"


def shown_key(user_id: str, run_date: str, run: str) -> str:
    """What run ``run`` (``pipeline.recommend.options.run_partition``) showed the user on ``run_date``;
    ``pipeline.recommend.recommendations``."""
    return f"{shown_prefix(user_id)}/{run_date}/run={run}.parquet"


#: A key below :func:`shown_prefix`, relative to it: the date, then a run's file (or, in the layout
#: before runs, ``<YYYY-MM-DD>.parquet``, one file per date, which still reads).
SHOWN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})(?:\.parquet|/run=[A-Za-z0-9_.-]+\.parquet)")


def profile_key(user_id: str, run_date: str, run: str) -> str:
    """The user's style profile as run ``run`` built it on ``run_date``; ``pipeline.recommend.recommendations``."""
    return f"{PROFILES_PREFIX}/date={run_date}/run={run}/user_id={user_id}/profile.parquet"


def recommendations_key(user_id: str, run_date: str, run: str) -> str:
    """The user's top-k items from run ``run`` on ``run_date`` (a Hive partition between the date and the
    user); ``pipeline.recommend.recommendations``."""
    return f"{RECOMMENDATIONS_PREFIX}/date={run_date}/run={run}/user_id={user_id}/recommendations.parquet"


#: A :func:`recommendations_key`; groups: the date, the run, the user.
RECOMMENDATIONS_KEY_RE = re.compile(
    re.escape(RECOMMENDATIONS_PREFIX) + r"/date=(\d{4}-\d{2}-\d{2})/run=([A-Za-z0-9_.-]+)/user_id=([^/]+)/"
    r"recommendations\.parquet"
)


def recommendation_page_key(user_id: str, run_date: str, run: str) -> str:
    """The standalone HTML page of the user's recommendations from run ``run``; ``pipeline.recommend.report`` (through
    ``pipeline.recommend.recommendations``)."""
    return f"{RECOMMENDATION_PAGES_PREFIX}/{run_date}/run={run}/{user_id}.html"


#: The store-layout table of ``docs/architecture.md``: each key pattern there (``<part>`` for a part of the
#: key without ``/``, ``<path>`` for one that may have them) and the name in this module that builds it.
PATTERNS = {
    "images/full/<sha1(url)>.jpg": "image_key",
    "crawls/<crawl_id>/products.parquet": "crawl_products_key",
    "crawls/<crawl_id>/weak_labels.parquet": "crawl_weak_labels_key",
    "crawls/<crawl_id>/summary.json": "crawl_summary_key",
    "crawls/_seen/<retailer>.parquet": "seen_key",
    "curation/<batch_id>/accepted.parquet": "curation_accepted_key",
    "curation/<batch_id>/rejections.parquet": "curation_rejections_key",
    "curation/<batch_id>/duplicates.parquet": "curation_duplicates_key",
    "curation/<batch_id>/summary.json": "curation_summary_key",
    "curation/hash_index/<kind>/<batch_id>.parquet": "hash_index_key",
    "review/queue/<batch_id>.parquet": "review_queue_key",
    "review/decisions/<batch_id>/<stamp>-<reviewer>-<uuid>.parquet": "review_decision_key",
    "review/predictions/<batch_id>.parquet": "review_predictions_key",
    "review/approvals/<batch_id>.json": "approval_key",
    "review/rejections/<batch_id>.json": "rejection_key",
    "review/reviewers.json": "REVIEWERS_KEY",
    "review/login-throttle/<digest>.json": "login_throttle_key",
    "dataset/items.parquet": "DATASET_ITEMS_KEY",
    "dataset/split.parquet": "DATASET_SPLIT_KEY",
    "dataset/split_report.json": "DATASET_SPLIT_REPORT_KEY",
    "models/<attribute>/<version>/model.keras": "model_file_key",
    "models/<attribute>/<version>/metrics.json": "model_metrics_key",
    "models/<attribute>/<version>/training_curves.png": "model_artifact_key",
    "models/<attribute>/<version>/confusion_matrix.png": "model_artifact_key",
    "models/<attribute>/<version>/model_card.md": "model_artifact_key",
    "models/<attribute>/<version>/checkpoint/": "model_checkpoint_prefix",
    "models/<attribute>/current.json": "model_pointer_key",
    "models/<attribute>/promotions/<stamp>-<version>.json": "model_promotion_key",
    "repository/fashion_vectors/crawl_date=<YYYY-MM-DD>/retailer=<retailer>/part-<i>-of-<n>.parquet": (
        "repository_file_key"
    ),
    "repository/fashion_vectors/_common_metadata": "REPOSITORY_COMMON_METADATA_KEY",
    "repository/commits/<commit_id>.json": "repository_commit_key",
    "repository/_staging/<commit_id>/": "repository_staging_prefix",
    "repository/_staging/<commit_id>/plan.json": "repository_plan_key",
    "repository/_staging/<commit_id>/plan.parquet": "repository_plan_items_key",
    "repository/_staging/<commit_id>/shard-<n>.json": "repository_shard_summary_key",
    "repository/_staging/<commit_id>/shard-<n>.parquet": "repository_shard_vectors_key",
    "repository/_staging/<commit_id>/publish/<path>": "repository_staged_file_key",
    "repository/_staging/<commit_id>/committed.json": "repository_committed_key",
    "users/<user_id>/<image>": "user_image_key",
    "users/<user_id>/_shown/<YYYY-MM-DD>/run=<run>.parquet": "shown_key",
    "profiles/date=<YYYY-MM-DD>/run=<run>/user_id=<user_id>/profile.parquet": "profile_key",
    "recommendations/date=<YYYY-MM-DD>/run=<run>/user_id=<user_id>/recommendations.parquet": "recommendations_key",
    "recommendations_html/<YYYY-MM-DD>/run=<run>/<user_id>.html": "recommendation_page_key",
}
