"""What a recommendation run asks, checked before any work: the options (``k``, the score, MMR lambda, the
filters; the unset ones from settings ``recommend:``), the run date and the run's key partition."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc

from pipeline.hashing import content_sha256
from pipeline.recommend import scoring
from pipeline.settings import get_settings

RETAILER_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MAX_K = 100
MAX_FILTER_VALUES = 50


class InvalidRequest(ValueError):
    """A recommendation request (user, images, k, score, filters, date) rejected before any work."""


@dataclass(frozen=True)
class Filters:
    """Optional repository filters; empty lists and None bounds filter nothing. An item without a price
    never passes a price bound."""

    retailers: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None

    def expression(self) -> pc.Expression | None:
        """The filter as a pyarrow expression (pushed down to the Parquet read), or None."""
        parts = []
        if self.retailers:
            parts.append(pc.field("retailer").isin(list(self.retailers)))
        if self.categories:
            parts.append(pc.field("category").isin(list(self.categories)))
        if self.price_min is not None:
            parts.append(pc.field("price") >= self.price_min)
        if self.price_max is not None:
            parts.append(pc.field("price") <= self.price_max)
        expression = None
        for part in parts:
            expression = part if expression is None else expression & part
        return expression

    def describe(self) -> dict[str, Any]:
        return {
            "retailers": list(self.retailers),
            "categories": list(self.categories),
            "price_min": self.price_min,
            "price_max": self.price_max,
        }


@dataclass(frozen=True)
class Options:
    """How to rank, validated: ``score_kind``, ``mmr_lambda``, ``k``, ``filters``; the rest from
    settings (``recommend:`` in config/settings.yaml)."""

    k: int
    score_kind: str
    mmr_lambda: float
    mmr_pool: int
    filters: Filters = field(default_factory=Filters)
    hybrid_weights: Mapping[str, float] | None = None
    attribute_weights: Mapping[str, float] | None = None


def validate_k(k: Any) -> int:
    """``k`` as an int from 1 to :data:`MAX_K`; raises InvalidRequest."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_K:
        raise InvalidRequest(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    return int(k)


def _validate_number(name: str, value: Any, low: float, high: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not math.isfinite(float(value))
        or not low <= float(value) <= high
    ):
        raise InvalidRequest(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _validate_strings(name: str, values: Any, pattern: re.Pattern[str] | None) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise InvalidRequest(f"{name} must be a list of strings, got {values!r}")
    if len(values) > MAX_FILTER_VALUES:
        raise InvalidRequest(f"{name} may hold at most {MAX_FILTER_VALUES} values, got {len(values)}")
    for value in values:
        if (
            not isinstance(value, str)
            or not value.strip()
            or len(value) > 128
            or (pattern is not None and not pattern.fullmatch(value))
        ):
            raise InvalidRequest(f"{name} has an invalid value {value!r}")
    return tuple(dict.fromkeys(values))


def validate_filters(
    retailers: Any = None, categories: Any = None, price_min: Any = None, price_max: Any = None
) -> Filters:
    low = None if price_min is None else _validate_number("price_min", price_min, 0.0, 1e9)
    high = None if price_max is None else _validate_number("price_max", price_max, 0.0, 1e9)
    if low is not None and high is not None and low > high:
        raise InvalidRequest(f"price_min ({low:g}) is above price_max ({high:g})")
    return Filters(
        _validate_strings("retailers", retailers, RETAILER_PATTERN),
        _validate_strings("categories", categories, None),
        low,
        high,
    )


def validate_options(
    k: Any = None, score_kind: Any = None, mmr_lambda: Any = None, filters: Filters | Mapping[str, Any] | None = None
) -> Options:
    """Options from a request, the unset ones from settings; raises InvalidRequest."""
    settings = get_settings()
    config = settings.recommend
    k = validate_k(config.k if k is None else k)
    kind = config.score if score_kind is None else score_kind
    if kind not in scoring.SCORE_KINDS:
        raise InvalidRequest(f"score must be one of {', '.join(scoring.SCORE_KINDS)}, got {kind!r}")
    lam = _validate_number("mmr_lambda", config.mmr_lambda if mmr_lambda is None else mmr_lambda, 0.0, 1.0)
    if filters is None:
        filters = Filters()
    elif not isinstance(filters, Filters):
        unknown = set(filters) - {"retailers", "categories", "price_min", "price_max"}
        if unknown:
            raise InvalidRequest(f"unknown filters {sorted(unknown)}")
        filters = validate_filters(**filters)
    hybrid_weights = config.hybrid_weights
    attribute_weights = config.attribute_weights
    scoring.normalised_hybrid_weights(hybrid_weights)  # a bad configuration fails here, not mid-run
    scoring.normalised_weights(settings.taxonomy.names, attribute_weights)
    return Options(
        k=k,
        score_kind=kind,
        mmr_lambda=lam,
        filters=filters,
        mmr_pool=config.mmr_pool,
        hybrid_weights=hybrid_weights,
        attribute_weights=attribute_weights,
    )


def options_from_params(params: Mapping[str, Any]) -> Options:
    """Options from the recommend DAG's Params (``k``, ``score``, ``mmr_lambda``, ``retailers``,
    ``categories``, ``price_min``, ``price_max``; null = the settings' default or no filter)."""
    return validate_options(
        params.get("k"),
        params.get("score"),
        params.get("mmr_lambda"),
        {
            "retailers": params.get("retailers"),
            "categories": params.get("categories"),
            "price_min": params.get("price_min"),
            "price_max": params.get("price_max"),
        },
    )


def validate_run_date(run_date: Any) -> str:
    """``run_date`` as ``YYYY-MM-DD`` (Airflow's ``ds``); it becomes part of the output keys."""
    if not isinstance(run_date, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_date):
        raise InvalidRequest(f"run_date must be a YYYY-MM-DD date, got {run_date!r}")
    try:
        dt.date.fromisoformat(run_date)
    except ValueError:
        raise InvalidRequest(f"run_date {run_date!r} is not a calendar date") from None
    return run_date


RUN_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]")


def run_partition(run_id: Any) -> str:
    """The run's value in the output keys: ``run_id`` with every character but letters, digits, ``_``,
    ``.`` and ``-`` (and a leading ``.``) replaced by ``-``, followed by ``-`` and 8 hex digits of the
    id's SHA-1 when anything was replaced, so two runs never share a key (Airflow's
    ``manual__2026-12-01T10:22:33+00:00`` -> ``manual__2026-12-01T10-22-33-00-00-1a2b3c4d``)."""
    if not isinstance(run_id, str) or not run_id.strip() or len(run_id) > 250:
        raise InvalidRequest(f"the run id must be a non-empty string of at most 250 characters, got {run_id!r}")
    clean = RUN_CHARACTERS.sub("-", run_id)
    if clean.startswith("."):
        clean = "-" + clean[1:]
    if clean != run_id:
        clean += "-" + content_sha256(run_id.encode("utf-8"))[:8]
    return clean


def adhoc_run_id() -> str:
    """The run id of a call that names none (a script, a test): the UTC time to the microsecond."""
    return f"adhoc__{dt.datetime.now(dt.UTC):%Y-%m-%dT%H%M%S.%fZ}"
