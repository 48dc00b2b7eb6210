"""One user's run written to the store (the four keys of :mod:`pipeline.recommend.recommendations`), and
which of a user's runs is the latest."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.images import rules_from_settings
from pipeline.recommend.options import Options
from pipeline.recommend.report import render_recommendations_html
from pipeline.settings import Settings
from pipeline.store_layout import (
    RECOMMENDATIONS_KEY_RE,
    RECOMMENDATIONS_PREFIX,
    profile_key,
    recommendation_page_key,
    recommendations_key,
    shown_key,
)

if TYPE_CHECKING:
    from pipeline.storage import ObjectStore


def latest_run(store: ObjectStore, user_id: str) -> tuple[str, str] | None:
    """``(run_date, run)`` of the user's latest recommendations: the latest date, and of that date's
    runs the one written last (its ``generated_at``); None when the user has none."""
    runs: dict[str, list[str]] = {}
    for key in store.list(RECOMMENDATIONS_PREFIX):
        match = RECOMMENDATIONS_KEY_RE.fullmatch(key)
        if match and match.group(3) == user_id:
            runs.setdefault(match.group(1), []).append(match.group(2))
    if not runs:
        return None
    run_date = max(runs)

    def written_at(run: str) -> dt.datetime:
        table = store.read_parquet(recommendations_key(user_id, run_date, run), columns=["generated_at"])
        stamps = [t for t in table["generated_at"].to_pylist() if t is not None]
        return max(stamps, default=dt.datetime.min.replace(tzinfo=dt.UTC))

    return run_date, max(sorted(runs[run_date]), key=written_at)


def _summary_row(row: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "rank",
        "item_id",
        "title",
        "retailer",
        "category",
        "price",
        "currency",
        "product_url",
        "image_key",
        "score",
        "score_kind",
        "score_matches",
        "score_weighted",
        "score_embedding",
        "matched_attributes",
    )
    return {key: row.get(key) for key in keys}


@dataclass(frozen=True)
class UserOutputs:
    """What one user's run produced, to write: the ``profile`` of ``image_keys`` and the ``ranked``
    table for ``run_date`` and run partition ``run``, ranked as ``options`` say among
    ``n_items_scored`` items, leaving out the ``shown`` items; ``n_foreign``: the items whose
    embeddings come from other networks than the profile's."""

    user_id: str
    run_date: str
    run: str
    image_keys: list[str]
    profile: pa.Table
    ranked: pa.Table
    shown: list[str]
    options: Options
    n_items_scored: int
    n_foreign: int


def write_outputs(store: ObjectStore, outputs: UserOutputs, settings: Settings) -> dict[str, Any]:
    """Write one user's four keys for run ``outputs.run`` (module docstring) and return the task's
    JSON-serialisable summary. The recommendations get a ``generated_at`` column (UTC, the write
    time), by which a reader picks a date's latest run; the page shows the taxonomy's attributes, its
    images decoded by the ``curation`` settings."""
    written = _write_tables(store, outputs)
    top_rows = outputs.ranked.to_pylist()
    written["html"] = _write_page(store, outputs, top_rows, settings)
    written["shown"] = _write_shown(store, outputs)
    return _summary(outputs, written, top_rows)


def _write_tables(store: ObjectStore, outputs: UserOutputs) -> dict[str, str]:
    """The recommendations (stamped ``generated_at``) and the profile; their written keys."""
    ranked, user_id, run_date, run = outputs.ranked, outputs.user_id, outputs.run_date, outputs.run
    generated_at = pa.array([dt.datetime.now(dt.UTC)] * ranked.num_rows, type=pa.timestamp("us", "UTC"))
    return {
        "recommendations": store.write_parquet(
            recommendations_key(user_id, run_date, run), ranked.append_column("generated_at", generated_at)
        ),
        "profile": store.write_parquet(profile_key(user_id, run_date, run), outputs.profile),
    }


def _run_context(outputs: UserOutputs) -> dict[str, Any]:
    """The run as the page header and the summary describe it."""
    options = outputs.options
    return {
        "run_date": outputs.run_date,
        "score_kind": options.score_kind,
        "mmr_lambda": options.mmr_lambda,
        "filters": options.filters.describe(),
        "n_items_scored": outputs.n_items_scored,
        "n_excluded_shown": len(outputs.shown),
    }


def _write_page(store: ObjectStore, outputs: UserOutputs, top_rows: list[dict[str, Any]], settings: Settings) -> str:
    """The recommendations page (:func:`render_recommendations_html`); its written key."""
    page = render_recommendations_html(
        outputs.user_id,
        outputs.profile.to_pylist(),
        top_rows,
        store.get_bytes,
        settings.taxonomy.names,
        context=_run_context(outputs),
        max_pixels=rules_from_settings(settings.curation).max_pixels,
    )
    key = recommendation_page_key(outputs.user_id, outputs.run_date, outputs.run)
    return store.put_bytes(key, page.encode("utf-8"))


def _write_shown(store: ObjectStore, outputs: UserOutputs) -> str:
    """What the user was shown by this run (read back by later dates' :func:`shown_before`); its key."""
    ranked = outputs.ranked
    shown_today = pa.table(
        {
            "item_id": ranked["item_id"],
            "rank": ranked["rank"],
            "score_kind": ranked["score_kind"],
            "shown_on": pa.array([outputs.run_date] * ranked.num_rows, type=pa.string()),
        }
    )
    return store.write_parquet(shown_key(outputs.user_id, outputs.run_date, outputs.run), shown_today)


def _summary(outputs: UserOutputs, written: dict[str, str], top_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The Airflow task's JSON-serialisable summary of one user's run."""
    options = outputs.options
    return {
        "user_id": outputs.user_id,
        "run_date": outputs.run_date,
        "run": outputs.run,
        "keys": written,
        "profile_images": outputs.image_keys,
        "score_kind": options.score_kind,
        "mmr_lambda": options.mmr_lambda,
        "filters": options.filters.describe(),
        "n_items_scored": outputs.n_items_scored,
        "n_excluded_shown": len(outputs.shown),
        "n_foreign_embeddings": outputs.n_foreign,
        "n_recommended": outputs.ranked.num_rows,
        "top_k": [_summary_row(row) for row in top_rows],
    }
