"""Recommendations: a user's photos -> style profile -> the repository items that fit it best.

Each of the user's images (``users/<user_id>/<image>`` in the store, directly under that prefix) is
vectorised by the published attribute networks into one row of the *style profile*: per attribute the
predicted class, its probability and the whole probability vector, plus the image's embedding. The
repository (``pipeline.repository.dataset.read_repository``) is scored against the profile with one of the
scores of :mod:`pipeline.recommend.scoring` (``matches``, ``weighted``, ``embedding`` or the default ``hybrid``),
diversified by maximal marginal relevance, and written per date, run and user (``<run>``: the
Airflow run id made path-safe by :func:`pipeline.recommend.options.run_partition`):

- ``recommendations/date=<YYYY-MM-DD>/run=<run>/user_id=<user>/recommendations.parquet`` (Hive-partitioned;
  its ``generated_at`` column says which run of a date is the latest)
- ``profiles/date=<YYYY-MM-DD>/run=<run>/user_id=<user>/profile.parquet`` (Hive-partitioned)
- ``recommendations_html/<YYYY-MM-DD>/run=<run>/<user>.html`` (outside the Parquet datasets)
- ``users/<user>/_shown/<YYYY-MM-DD>/run=<run>.parquet``: what the user was shown by that run.

Never recommended: the user's own images and their near copies (same bytes, or pHash within the
curation distance of the image or its mirror image, confirmed by the colour thumbnail), and items the
user was shown on an earlier date. A manual run and the scheduled one on the same date keep both
outputs; a retry of the same run rewrites its own keys; every run ignores its own date's output
(only earlier dates' shown lists count), so the same inputs give the same lists.

This module runs the stage for one user or a batch; each step has its module in
``pipeline.recommend``: ``options`` (the request's options, run date and run key), ``users`` (users,
their photos, the run's plan), ``profile``, ``exclusions``, ``items`` (the repository as read),
``ranking`` (one user's list), ``batch`` (many users in one pass) and ``outputs`` (the written keys).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.images import rules_from_settings
from pipeline.recommend import scoring
from pipeline.recommend.batch import BatchScorer, BatchUser, missing_profile_vectors
from pipeline.recommend.exclusions import shown_before, thumbnail_check
from pipeline.recommend.items import RepositoryVectors, attribute_classes, loaded_repository
from pipeline.recommend.options import Options, adhoc_run_id, run_partition, validate_run_date
from pipeline.recommend.outputs import UserOutputs, write_outputs
from pipeline.recommend.profile import Vectorizer, build_profile, profile_source
from pipeline.recommend.ranking import RankRequest, foreign_embeddings, rank
from pipeline.recommend.users import validate_request
from pipeline.settings import Settings, get_settings

if TYPE_CHECKING:
    from pipeline.storage import ObjectStore

log = logging.getLogger(__name__)


def _default_vectorizer(store: ObjectStore, attributes: Sequence[str]) -> Vectorizer:
    """The published attribute networks; imported here so this module loads without TensorFlow."""
    from models.inference import FashionVectorizer

    return FashionVectorizer.from_registry(store, list(attributes))


@dataclass(frozen=True)
class UserRequest:
    """One user's request: recommendations for ``user_id`` from ``image_keys`` (None or empty: every
    image directly under ``users/<user_id>/``), ranked as ``options`` say (validated where the input
    enters: :func:`validate_options`, :func:`options_from_params`), for ``run_date`` (``YYYY-MM-DD``)
    and run ``run_id`` (the Airflow run id; None: :func:`adhoc_run_id`). The user, the images and the
    date are checked against the store by :func:`recommend_for_user` (:class:`InvalidRequest`)."""

    user_id: str
    image_keys: Sequence[str] | None
    run_date: str
    options: Options
    run_id: str | None = None


def recommend_for_user(
    store: ObjectStore,
    request: UserRequest,
    vectorizer: Vectorizer | None = None,
    repository: RepositoryVectors | None = None,
) -> dict[str, Any]:
    """Validate, profile, score, rank and write one user's recommendations for the request's date and run.

    ``repository``: the request's repository (filtered by its options) already loaded and converted,
    which saves re-reading and re-converting it for every user of a batch. Writes the four keys of the
    module docstring (fixed per date and user, so a rerun replaces them) and returns a
    JSON-serialisable summary for the Airflow task.
    """
    keys, run_date, run = _checked_request(store, request)
    settings = get_settings()
    attributes = settings.taxonomy.names
    curation = settings.curation
    image_rules = rules_from_settings(curation)
    if repository is None:
        repository = loaded_repository(store, request.options.filters, settings.taxonomy)
    matrix, table = repository
    vectorizer = vectorizer if vectorizer is not None else _default_vectorizer(store, attributes)
    profile = build_profile(store, request.user_id, keys, vectorizer, attributes, image_rules)
    shown = shown_before(store, request.user_id, run_date)
    foreign = foreign_embeddings(profile, table)
    rank_request = RankRequest(
        profile,
        request.options,
        exclude_item_ids=shown,
        phash_max_distance=curation.phash_max_distance,
        confirm_near_copy=thumbnail_check(
            store, profile, table, float(curation.thumbnail_max_mad), image_rules.max_pixels
        ),
    )
    ranked = rank(rank_request, table, attributes, items=matrix, settings=settings)
    outputs = UserOutputs(
        user_id=request.user_id,
        run_date=run_date,
        run=run,
        image_keys=keys,
        profile=profile,
        ranked=ranked,
        shown=shown,
        options=request.options,
        n_items_scored=table.num_rows,
        n_foreign=0 if foreign is None else int(foreign.sum()),
    )
    return write_outputs(store, outputs, settings)


def _checked_request(store: ObjectStore, request: UserRequest) -> tuple[list[str], str, str]:
    """(the image keys to profile, the run date, the run's key partition), or InvalidRequest."""
    keys = validate_request(store, request.user_id, request.image_keys, request.options.k)
    run_date = validate_run_date(request.run_date)
    run = run_partition(request.run_id if request.run_id is not None else adhoc_run_id())
    return keys, run_date, run


def recommend_for_users(
    store: ObjectStore,
    requests: Sequence[Mapping[str, Any]],
    run_date: str,
    options: Options,
    vectorizer: Vectorizer | None = None,
    *,
    chunk_rows: int | None = None,
    run_id: str | None = None,
) -> list[dict[str, Any]]:
    """One batch of ``plan_requests`` in one pass over the repository (two for ``hybrid``): the
    networks load once, every user's profile photos are scored against a chunk of items as one matrix
    product, and each user keeps a running list of the best candidates; exclusions, tie-breaks and MMR
    then give exactly :func:`recommend_for_user`'s lists. The repository is streamed in chunks of
    ``chunk_rows`` (settings ``recommend.scoring_chunk_rows``), so memory is bounded by the chunk and
    the batch, not the catalogue. ``run_id``: the Airflow run id of the output keys (default
    :func:`adhoc_run_id`). A user whose request fails does not stop the others; the batch raises at
    the end, naming them."""
    if not requests:
        return []
    settings = get_settings()
    run = _BatchRun(
        run_date=validate_run_date(run_date),
        run=run_partition(run_id if run_id is not None else adhoc_run_id()),
        options=options,
        settings=settings,
    )
    chunk_rows = int(chunk_rows or settings.recommend.scoring_chunk_rows)
    vectorizer = vectorizer if vectorizer is not None else _default_vectorizer(store, settings.taxonomy.names)
    failures = _BatchFailures()
    users = _profiled_users(store, requests, vectorizer, run, failures)
    ready = _scorable_users(users, options.score_kind, failures)
    summaries = _score_and_write(store, ready, run, chunk_rows, failures) if ready else {}
    failures.raise_if_any()
    return [summaries[r["user_id"]] for r in requests]


@dataclass(frozen=True)
class _BatchRun:
    """What every user of a batch shares: the run's date and key partition, the options, the settings."""

    run_date: str
    run: str
    options: Options
    settings: Settings


class _BatchFailures:
    """The users of a batch whose requests failed: logged as they fail, raised together at the end
    (one user's failure does not stop the others)."""

    def __init__(self) -> None:
        self.failures: list[tuple[str, BaseException]] = []

    def add(self, user_id: str, error: BaseException) -> None:
        log.error("[fashionnet] recommend %s: FAILED: %s", user_id, error)
        self.failures.append((user_id, error))

    def raise_if_any(self) -> None:
        if self.failures:
            names = ", ".join(user for user, _ in self.failures)
            raise RuntimeError(f"recommendations failed for {len(self.failures)} user(s): {names}") from self.failures[
                0
            ][1]


def _profiled_users(
    store: ObjectStore,
    requests: Sequence[Mapping[str, Any]],
    vectorizer: Vectorizer,
    run: _BatchRun,
    failures: _BatchFailures,
) -> list[BatchUser]:
    """The batch's users with their validated images, profiles and exclusions; a failing one is
    reported to ``failures`` and left out."""
    settings = run.settings
    attributes = settings.taxonomy.names
    taxonomy = attribute_classes(settings.taxonomy, attributes)
    image_rules = rules_from_settings(settings.curation)
    users: list[BatchUser] = []
    for request in requests:
        user_id = request["user_id"]
        try:
            keys = validate_request(store, user_id, request.get("image_keys"), run.options.k)
            profile = build_profile(store, user_id, keys, vectorizer, attributes, image_rules)
            mine = scoring.fashion_matrix(profile, taxonomy, trust_unit_embeddings=False)
            shown = shown_before(store, user_id, run.run_date)
            users.append(BatchUser(user_id, keys, profile, mine, shown, profile_source(profile)))
        except Exception as error:  # noqa: BLE001 - reported at the end, after the other users are served
            failures.add(user_id, error)
    return users


def _scorable_users(users: list[BatchUser], kind: str, failures: _BatchFailures) -> list[BatchUser]:
    """The users whose profiles have the vectors ``kind`` needs, with the batch's most common
    embedding width; the others are reported to ``failures`` as :class:`scoring.MissingVectors`."""
    dims_seen = [u.mine.embedding.shape[1] for u in users if u.mine.embedding is not None]
    dims = max(set(dims_seen), key=dims_seen.count) if dims_seen else None
    ready = []
    for user in users:
        reason = missing_profile_vectors(kind, user.mine, dims)
        if reason:
            failures.add(user.user_id, scoring.MissingVectors(reason))
        else:
            ready.append(user)
    return ready


def _score_and_write(
    store: ObjectStore, ready: list[BatchUser], run: _BatchRun, chunk_rows: int, failures: _BatchFailures
) -> dict[str, dict[str, Any]]:
    """One pass of the batch scorer over the repository, then each user's outputs written; the
    summaries by user. A repository that cannot be scored fails every user."""
    scorer = BatchScorer(store, ready, run.options, run.settings, chunk_rows)
    try:
        scorer.run()
    except Exception as error:  # noqa: BLE001 - the repository cannot serve any of them
        for user in ready:
            failures.add(user.user_id, error)
        return {}
    summaries: dict[str, dict[str, Any]] = {}
    for column, user in enumerate(ready):
        try:
            outputs = UserOutputs(
                user_id=user.user_id,
                run_date=run.run_date,
                run=run.run,
                image_keys=user.image_keys,
                profile=user.profile,
                ranked=scorer.ranked(column),
                shown=user.shown,
                options=run.options,
                n_items_scored=scorer.n_items,
                n_foreign=user.n_foreign,
            )
            summaries[user.user_id] = write_outputs(store, outputs, run.settings)
        except Exception as error:  # noqa: BLE001 - reported at the end, after the other users are served
            failures.add(user.user_id, error)
    return summaries
