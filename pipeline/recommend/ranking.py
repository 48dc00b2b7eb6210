"""One user's ranking: the repository scored against the style profile (:mod:`pipeline.recommend.scoring`),
the exclusions left out, diversified by MMR, as the output table."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.recommend import scoring
from pipeline.recommend.exclusions import NearCopyCheck, own_image_mask
from pipeline.recommend.items import ITEM_COLUMNS, attribute_classes, require_columns
from pipeline.recommend.options import Options
from pipeline.recommend.profile import profile_source
from pipeline.settings import Settings, get_settings

if TYPE_CHECKING:
    pass


def _column(values: np.ndarray | None, n: int, null: np.ndarray | None = None) -> pa.Array:
    """A float64 column, all null when the component could not be computed (and null where ``null``)."""
    if values is None:
        return pa.nulls(n, type=pa.float64())
    return pa.array(values, type=pa.float64(), mask=null)


def foreign_embeddings(profile: pa.Table, repository: pa.Table) -> np.ndarray | None:
    """True for repository items whose ``embedding_source`` is not the profile's (their embeddings come
    from other networks: the models changed and the repository is not refreshed yet); None when
    either side does not say."""
    source = profile_source(profile)
    if source is None or "embedding_source" not in repository.column_names:
        return None
    same = pc.fill_null(pc.equal(repository["embedding_source"].cast(pa.string()), source), False)
    return ~same.to_numpy(zero_copy_only=False).astype(bool)


@dataclass(frozen=True)
class RankRequest:
    """What one ranking asks: the top ``options.k`` items for ``profile`` (a :func:`build_profile`
    table), scored and diversified as ``options`` say (validated: :func:`validate_options`), leaving
    out ``exclude_item_ids`` (items already shown) and the user's own images: pHash within
    ``phash_max_distance`` bits (default: settings ``curation.phash_max_distance``) that
    ``confirm_near_copy`` (when given) confirms (:func:`own_image_mask`)."""

    profile: pa.Table
    options: Options
    exclude_item_ids: Sequence[str] = ()
    phash_max_distance: int | None = None
    confirm_near_copy: NearCopyCheck | None = None


def rank(
    request: RankRequest,
    repository: pa.Table,
    attributes: Sequence[str],
    items: scoring.FashionMatrix | None = None,
    settings: Settings | None = None,
) -> pa.Table:
    """The top ``k`` repository items for the request's profile, in recommendation order.

    See :mod:`pipeline.recommend.scoring` for the scores and tie-breaks. Left out: the user's own images
    (:func:`own_image_mask`), the ``exclude_item_ids`` (items already shown) and, for ``matches``,
    items sharing no attribute.
    Columns: rank (from 1), item_id, score (the kind's: for hybrid the combined z-scores), score_kind,
    mmr_score (the MMR value at the pick; the relevance scaled to [0, 1] when lambda is 1), the
    per-item components (score_matches, best_row_matches, matched_attributes, match_probability,
    score_weighted, score_embedding; null when the vectors lack them), nearest_profile_image (by
    embedding, else by matching attributes), per attribute class, prob and model version, and the
    item's retailer, category, title, price, currency, product_url, image_key, crawl_date,
    crawled_at, inferred_at (those the repository has). ``items``: the repository's :func:`scoring.fashion_matrix`
    when the caller already has it (a batch of users converts the repository once). ``settings``: the
    caller's (default: :func:`get_settings`), for the taxonomy and the request's unset pHash distance.
    """
    settings = settings if settings is not None else get_settings()
    options = request.options
    kind = options.score_kind
    require_columns(repository, ["item_id", *attributes], "repository")
    taxonomy = attribute_classes(settings.taxonomy, attributes)
    items = _items_matrix(repository, taxonomy, items)
    mine = scoring.fashion_matrix(request.profile, taxonomy, trust_unit_embeddings=False)
    phash_max_distance = request.phash_max_distance
    if phash_max_distance is None:
        phash_max_distance = settings.curation.phash_max_distance
    eligible = _eligible(request, repository, phash_max_distance)
    parts = scoring.components(items, mine, options.attribute_weights, need=[kind])
    foreign = _neutral_foreign_embeddings(kind, request.profile, repository, parts, eligible)
    if kind == "matches":
        if parts.matches is None:  # components(need=["matches"]) computes them
            raise ValueError("the matches ordering needs the match counts")
        eligible &= parts.matches > 0
    chosen = scoring.select(_selection_rule(options), items, parts, repository["item_id"], eligible)
    rows = chosen.rows
    picked = PickedItems(
        matrix=items.take(rows),
        rows=repository.take(pa.array(rows, type=pa.int64())),
        score=chosen.score,
        mmr_score=chosen.mmr_score,
        foreign=None if foreign is None else foreign[rows],
    )
    return ranked_table(picked, RankedFor(request.profile, mine, attributes, options))


def _selection_rule(options: Options) -> scoring.SelectionRule:
    """How :func:`scoring.select` picks for ``options``: the kind, ``k``, MMR and the hybrid's weights."""
    return scoring.SelectionRule(
        kind=options.score_kind,
        k=options.k,
        mmr_lambda=options.mmr_lambda,
        pool=options.mmr_pool,
        hybrid_weights=options.hybrid_weights,
    )


def _items_matrix(
    repository: pa.Table, taxonomy: dict[str, tuple[str, ...]], items: scoring.FashionMatrix | None
) -> scoring.FashionMatrix:
    """The repository's fashion matrix: ``items`` when the caller has it (checked), else converted."""
    if items is None:
        return scoring.fashion_matrix(repository, taxonomy)
    if items.n != repository.num_rows:
        raise ValueError(f"the fashion matrix has {items.n} rows, the repository {repository.num_rows}")
    return items


def _eligible(request: RankRequest, repository: pa.Table, phash_max_distance: int) -> np.ndarray:
    """True for the repository rows the request may recommend: not the user's own images (pHash within
    ``phash_max_distance`` bits, confirmed by the request's check), not shown."""
    eligible = ~own_image_mask(request.profile, repository, phash_max_distance, request.confirm_near_copy)
    if request.exclude_item_ids:
        shown = pc.is_in(
            repository["item_id"].cast(pa.string()), value_set=pa.array(list(request.exclude_item_ids), pa.string())
        )
        eligible &= ~pc.fill_null(shown, False).to_numpy(zero_copy_only=False).astype(bool)
    return eligible


def _neutral_foreign_embeddings(
    kind: str, profile: pa.Table, repository: pa.Table, parts: scoring.Components, eligible: np.ndarray
) -> np.ndarray | None:
    """The rows whose embeddings come from other networks than the profile's (or None), their
    embedding cosines in ``parts`` set to the mean of the comparable candidates' (in place)."""
    foreign = foreign_embeddings(profile, repository)
    if foreign is not None and parts.embedding is not None:
        # Cosines across two networks' embedding spaces mean nothing: such items get the mean of the
        # comparable candidates' (neutral in the hybrid; the embedding score needs some comparable).
        comparable = eligible & ~foreign
        if kind == "embedding" and not comparable.any():
            raise scoring.MissingVectors(
                f"no repository item has embeddings of the profile's networks ({profile_source(profile)}); "
                "they come after the next repository refresh"
            )
        parts.embedding[foreign] = float(parts.embedding[comparable].mean()) if comparable.any() else 0.0
    return foreign


@dataclass(frozen=True)
class PickedItems:
    """The chosen items, in recommendation order: their fashion matrix, repository rows, the kind's
    score and the MMR value at each pick, and (or None) whether their embeddings come from other
    networks than the profile's (:func:`foreign_embeddings`)."""

    matrix: scoring.FashionMatrix
    rows: pa.Table
    score: np.ndarray
    mmr_score: np.ndarray
    foreign: np.ndarray | None


@dataclass(frozen=True)
class RankedFor:
    """Whom the picked items are for: the ``profile`` table and its fashion matrix ``mine``, the
    ``attributes`` of the output columns and the ranking's ``options``."""

    profile: pa.Table
    mine: scoring.FashionMatrix
    attributes: Sequence[str]
    options: Options


def ranked_table(picked: PickedItems, ranked_for: RankedFor) -> pa.Table:
    """The output table of :func:`rank` for the picked items: the ranking's columns, then the items'
    attribute and item columns (those the repository has)."""
    table = _ranking_columns(picked, ranked_for)
    return _with_item_columns(table, picked.rows, ranked_for.attributes)


def _nearest_profile_images(picked: PickedItems, ranked_for: RankedFor) -> list[str | None]:
    """Per picked item the profile image it resembles most: by embedding, by matching attributes for
    items whose embeddings come from other networks."""
    nearest = scoring.nearest_profile_rows(picked.matrix, ranked_for.mine)
    foreign = picked.foreign
    if foreign is not None and foreign.any():
        by_attributes = scoring.nearest_profile_rows(
            dataclasses.replace(picked.matrix, embedding=None), ranked_for.mine
        )
        nearest = np.where(foreign, by_attributes, nearest)
    profile_keys = ranked_for.profile["image_key"].to_pylist()
    return [profile_keys[j] if j >= 0 else None for j in nearest]


def _ranking_columns(picked: PickedItems, ranked_for: RankedFor) -> pa.Table:
    """rank, item_id, the scores, the per-item components and the nearest profile image."""
    n = picked.matrix.n
    kind = ranked_for.options.score_kind
    shown_parts = scoring.available_components(picked.matrix, ranked_for.mine, ranked_for.options.attribute_weights)
    if shown_parts.attribute_hits is None:  # available_components always computes the matches
        raise ValueError("the output columns need the attribute hits")
    attributes = ranked_for.attributes
    matched = [",".join(a for a, hit in zip(attributes, hits) if hit) for hits in shown_parts.attribute_hits]
    return pa.table(
        {
            "rank": pa.array(np.arange(1, n + 1), type=pa.int32()),
            "item_id": picked.rows["item_id"],
            "score": pa.array(picked.score, type=pa.float64()),
            "score_kind": pa.array([kind] * n, type=pa.string()),
            "mmr_score": pa.array(picked.mmr_score, type=pa.float64()),
            "score_matches": pa.array(shown_parts.matches, type=pa.int64()),
            "best_row_matches": pa.array(shown_parts.best_row, type=pa.int64()),
            "matched_attributes": pa.array(matched, type=pa.string()),
            "match_probability": pa.array(shown_parts.match_probability, type=pa.float64()),
            "score_weighted": _column(shown_parts.weighted, n),
            "score_embedding": _column(shown_parts.embedding, n, picked.foreign),
            "nearest_profile_image": pa.array(_nearest_profile_images(picked, ranked_for), type=pa.string()),
        }
    )


def _with_item_columns(table: pa.Table, picked_rows: pa.Table, attributes: Sequence[str]) -> pa.Table:
    """``table`` with the picked rows' attribute columns (class, prob, model version) and item columns."""
    for attribute in attributes:
        for name in (attribute, f"{attribute}_prob", f"{attribute}_model_version"):
            if name in picked_rows.column_names:
                table = table.append_column(picked_rows.schema.field(name), picked_rows[name])
    for name in ITEM_COLUMNS:
        if name in picked_rows.column_names:
            table = table.append_column(picked_rows.schema.field(name), picked_rows[name])
    return table
