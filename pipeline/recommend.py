"""Recommendations: a user's photos -> style profile -> the repository items that fit it best.

Each of the user's images (``users/<user_id>/<image>`` in the store, directly under that prefix) is
vectorised by the published attribute networks into one row of the *style profile*: per attribute the
predicted class, its probability and the whole probability vector, plus the image's embedding. The
repository (``pipeline.repository.read_repository``) is scored against the profile with one of the
scores of :mod:`pipeline.scoring` (``matches``, ``weighted``, ``embedding`` or the default ``hybrid``),
diversified by maximal marginal relevance, and written per date and user:

- ``recommendations/date=<YYYY-MM-DD>/user_id=<user>/recommendations.parquet`` (Hive-partitioned)
- ``profiles/date=<YYYY-MM-DD>/user_id=<user>/profile.parquet`` (Hive-partitioned)
- ``recommendations_html/<YYYY-MM-DD>/<user>.html`` (outside the Parquet datasets)
- ``users/<user>/_shown/<YYYY-MM-DD>.parquet``: what the user was shown that day.

Never recommended: the user's own images and their near copies (same bytes, or pHash within the
curation distance of the image or its mirror image, confirmed by the colour thumbnail), and items the
user was shown on an earlier date. A rerun of a date rewrites that date's keys and ignores its own
earlier output (only earlier dates' shown lists count), so it is idempotent.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from pipeline import scoring
from pipeline.dedup import colour_thumbnail, mirror_thumbnail, thumbnail_distance
from pipeline.hashing import content_sha256, image_hashes
from pipeline.report import render_recommendations_html
from pipeline.settings import get_settings
from pipeline.storage import StoreKeyError, normalize_key

if TYPE_CHECKING:
    from pipeline.storage import ObjectStore

REPOSITORY_PREFIX = "repository/fashion_vectors/"
USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
RETAILER_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
MAX_K = 100
MAX_FILTER_VALUES = 50
ITEM_COLUMNS = ("retailer", "category", "title", "price", "currency", "product_url", "image_key",
                "crawl_date", "crawled_at", "inferred_at")


class InvalidRequest(ValueError):
    """A recommendation request (user, images, k, score, filters, date) rejected before any work."""


class Vectorizer(Protocol):
    """What recommendations need from the attribute networks (``models.inference.FashionVectorizer``)."""

    def vectorize(self, images: list[bytes]) -> list[dict[str, Any]]:
        """One dict per image: per attribute ``<attr>``, ``<attr>_prob``, ``<attr>_model_version`` and
        (for the weighted and embedding scores) ``<attr>_probs``; ``embedding`` (and optionally
        ``embedding_source``) per image."""
        ...


NearCopyCheck = Callable[[int, int], bool]
"""(repository row, profile row) -> True when the two images are the same picture."""


# -- options ----------------------------------------------------------------------------------------
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
        return {"retailers": list(self.retailers), "categories": list(self.categories),
                "price_min": self.price_min, "price_max": self.price_max}


@dataclass(frozen=True)
class Options:
    """How to rank, validated: ``score_kind``, ``mmr_lambda``, ``k``, ``filters``; the rest from
    settings (``recommend:`` in config/settings.yaml)."""

    k: int
    score_kind: str
    mmr_lambda: float
    filters: Filters = field(default_factory=Filters)
    mmr_pool: int = 200
    hybrid_weights: Mapping[str, float] | None = None
    attribute_weights: Mapping[str, float] | None = None


def _validate_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_K:
        raise InvalidRequest(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    return int(k)


def _validate_number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)) or not low <= float(value) <= high:
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
        if not isinstance(value, str) or not value.strip() or len(value) > 128 \
                or (pattern is not None and not pattern.fullmatch(value)):
            raise InvalidRequest(f"{name} has an invalid value {value!r}")
    return tuple(dict.fromkeys(values))


def validate_filters(retailers: Any = None, categories: Any = None, price_min: Any = None,
                     price_max: Any = None) -> Filters:
    low = None if price_min is None else _validate_number("price_min", price_min, 0.0, 1e9)
    high = None if price_max is None else _validate_number("price_max", price_max, 0.0, 1e9)
    if low is not None and high is not None and low > high:
        raise InvalidRequest(f"price_min ({low:g}) is above price_max ({high:g})")
    return Filters(_validate_strings("retailers", retailers, RETAILER_PATTERN),
                   _validate_strings("categories", categories, None), low, high)


def validate_options(k: Any = None, score_kind: Any = None, mmr_lambda: Any = None,
                     filters: Filters | Mapping[str, Any] | None = None) -> Options:
    """Options from a request, the unset ones from settings; raises InvalidRequest."""
    config = get_settings().recommend
    k = _validate_k(config.get("k", 10) if k is None else k)
    kind = config.get("score", "hybrid") if score_kind is None else score_kind
    if kind not in scoring.SCORE_KINDS:
        raise InvalidRequest(f"score must be one of {', '.join(scoring.SCORE_KINDS)}, got {kind!r}")
    lam = _validate_number("mmr_lambda", config.get("mmr_lambda", 1.0) if mmr_lambda is None else mmr_lambda, 0.0, 1.0)
    if filters is None:
        filters = Filters()
    elif not isinstance(filters, Filters):
        unknown = set(filters) - {"retailers", "categories", "price_min", "price_max"}
        if unknown:
            raise InvalidRequest(f"unknown filters {sorted(unknown)}")
        filters = validate_filters(**filters)
    hybrid_weights = config.get("hybrid_weights")
    attribute_weights = config.get("attribute_weights")
    scoring.normalised_hybrid_weights(hybrid_weights)  # a bad configuration fails here, not mid-run
    scoring.normalised_weights(get_settings().taxonomy.names, attribute_weights)
    return Options(k=k, score_kind=kind, mmr_lambda=lam, filters=filters,
                   mmr_pool=int(config.get("mmr_pool", 200)), hybrid_weights=hybrid_weights,
                   attribute_weights=attribute_weights)


def options_from_params(params: Mapping[str, Any]) -> Options:
    """Options from the recommend DAG's Params (``k``, ``score``, ``mmr_lambda``, ``retailers``,
    ``categories``, ``price_min``, ``price_max``; null = the settings' default or no filter)."""
    return validate_options(params.get("k"), params.get("score"), params.get("mmr_lambda"), {
        "retailers": params.get("retailers"), "categories": params.get("categories"),
        "price_min": params.get("price_min"), "price_max": params.get("price_max")})


# -- users and their images ---------------------------------------------------------------------------
def user_prefix(user_id: str) -> str:
    return f"users/{user_id}/"


def _is_image_key(key: str) -> bool:
    return key.lower().endswith(IMAGE_EXTENSIONS)


def _validate_user_id(user_id: Any) -> str:
    if not isinstance(user_id, str) or not USER_ID_PATTERN.fullmatch(user_id):
        raise InvalidRequest(
            f"user_id must be 1-64 characters of letters, digits, '_' or '-', got {user_id!r}")
    return user_id


def _user_image(key: str, user_id: str) -> bool:
    """An image file directly under ``users/<user_id>/`` (not in a subfolder such as ``_shown/``)."""
    prefix = user_prefix(user_id)
    return key.startswith(prefix) and "/" not in key[len(prefix):] and _is_image_key(key)


def _validate_image_key(store: "ObjectStore", user_id: str, key: Any) -> str:
    prefix = user_prefix(user_id)
    if not isinstance(key, str):
        raise InvalidRequest(f"image keys must be strings, got {key!r}")
    try:
        clean = normalize_key(key)
    except StoreKeyError as exc:
        raise InvalidRequest(f"image key {key!r} is not a key inside the store: {exc}") from None
    if not clean.startswith(prefix):
        raise InvalidRequest(f"image key {key!r} is not one of user {user_id!r}'s images (under {prefix})")
    if "/" in clean[len(prefix):]:
        raise InvalidRequest(f"image key {key!r} is not directly under {prefix}")
    if not _is_image_key(clean):
        raise InvalidRequest(f"image key {key!r} is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
    if not store.exists(clean):
        raise InvalidRequest(f"image key {key!r} does not exist in {store.uri}")
    return clean


def user_images(store: "ObjectStore", user_id: str) -> list[str]:
    """The image files directly under ``users/<user_id>/``, sorted."""
    return [key for key in store.list(user_prefix(user_id)) if _user_image(key, user_id)]


def list_users(store: "ObjectStore") -> list[str]:
    """Every user with at least one image directly under ``users/<user_id>/`` (valid ids only), sorted."""
    users = set()
    for key in store.list("users/"):
        parts = key.split("/")
        if len(parts) == 3 and USER_ID_PATTERN.fullmatch(parts[1]) and _is_image_key(parts[2]):
            users.add(parts[1])
    return sorted(users)


def validate_request(store: "ObjectStore", user_id: str, image_keys: list[str] | None, k: int) -> list[str]:
    """The user's image keys to profile, after checking the request; raises InvalidRequest.

    Explicit ``image_keys`` must each be an existing image directly under ``users/<user_id>/``; with
    none given, every image there is used. Keys come back normalised, deduplicated, in request order
    (or sorted when listed).
    """
    _validate_user_id(user_id)
    _validate_k(k)
    if image_keys:
        if isinstance(image_keys, str):
            raise InvalidRequest(f"image_keys must be a list of keys, got the string {image_keys!r}")
        keys = [_validate_image_key(store, user_id, key) for key in image_keys]
        return list(dict.fromkeys(keys))
    keys = user_images(store, user_id)
    if not keys:
        raise InvalidRequest(f"user {user_id!r} has no images under {user_prefix(user_id)} (unknown user?)")
    return keys


def plan_requests(store: "ObjectStore", user_id: str | None, image_keys: list[str] | None,
                  options: Options, users_per_batch: int | None = None) -> list[list[dict[str, Any]]]:
    """The run's work in batches of ``{"user_id", "image_keys"}`` requests, everything validated.

    ``user_id`` None or "": every user under ``users/`` (then ``image_keys`` must be empty); batches of
    ``users_per_batch`` users (settings ``recommend.users_per_task``) become one mapped task each.
    """
    del options  # validated by the caller; accepted so the plan and the options are checked together
    if user_id in (None, ""):
        if image_keys:
            raise InvalidRequest("image_keys need a user_id: without one, every user's own images are used")
        users = list_users(store)
        requests = [{"user_id": user, "image_keys": user_images(store, user)} for user in users]
    else:
        requests = [{"user_id": user_id, "image_keys": validate_request(store, user_id, image_keys, 1)}]
    size = int(users_per_batch or get_settings().recommend.get("users_per_task", 25))
    if size < 1:
        raise ValueError(f"recommend.users_per_task must be at least 1, got {size}")
    return [requests[start:start + size] for start in range(0, len(requests), size)]


def _validate_run_date(run_date: Any) -> str:
    """``run_date`` as ``YYYY-MM-DD`` (Airflow's ``ds``); it becomes part of the output keys."""
    if not isinstance(run_date, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_date):
        raise InvalidRequest(f"run_date must be a YYYY-MM-DD date, got {run_date!r}")
    try:
        dt.date.fromisoformat(run_date)
    except ValueError:
        raise InvalidRequest(f"run_date {run_date!r} is not a calendar date") from None
    return run_date


# -- the style profile ------------------------------------------------------------------------------
def profile_schema(attributes: Sequence[str], source: bool = False) -> pa.Schema:
    fields = [pa.field("image_key", pa.string()), pa.field("phash", pa.uint64()),
              pa.field("content_sha256", pa.string()), pa.field("phash_mirror", pa.uint64())]
    for attribute in attributes:
        fields += [pa.field(attribute, pa.string()), pa.field(f"{attribute}_prob", pa.float64()),
                   pa.field(f"{attribute}_probs", pa.list_(pa.float32())),
                   pa.field(f"{attribute}_model_version", pa.string())]
    fields.append(pa.field("embedding", pa.list_(pa.float32())))
    if source:
        fields.append(pa.field("embedding_source", pa.string()))
    return pa.schema(fields)


def _image_phashes(key: str, data: bytes) -> tuple[int, int]:
    """(pHash, pHash of the mirror image): the own-image check also knows a mirrored upload."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            hashes = image_hashes(image)
    except Exception as exc:  # PIL raises many types for a bad file; all mean the same here
        raise ValueError(f"image {key!r} cannot be decoded as an image: {exc}") from exc
    return hashes.phash, hashes.phash_mirror


def _float_list(value: Any) -> list[float] | None:
    if value is None:
        return None
    return [float(v) for v in np.asarray(value, dtype=np.float32).ravel()]


def build_profile(
    store: "ObjectStore",
    user_id: str,
    image_keys: Sequence[str],
    vectorizer: Vectorizer,
    attributes: Sequence[str] | None = None,
) -> pa.Table:
    """The style profile matrix: one row per user image with its hashes and fashion vector.

    Required from the vectorizer per attribute: ``<attr>``, ``<attr>_prob``, ``<attr>_model_version``;
    ``<attr>_probs`` and ``embedding`` are null when it gives none (then only ``matches`` can rank).
    """
    attributes = list(attributes or get_settings().taxonomy.names)
    images = [store.get_bytes(key) for key in image_keys]
    phashes = [_image_phashes(key, data) for key, data in zip(image_keys, images)]
    vectors = vectorizer.vectorize(images)
    if len(vectors) != len(images):
        raise ValueError(f"vectorizer returned {len(vectors)} vectors for {len(images)} images of {user_id!r}")
    columns: dict[str, list[Any]] = {
        "image_key": list(image_keys),
        "phash": [own for own, _ in phashes],
        "content_sha256": [content_sha256(data) for data in images],
        "phash_mirror": [mirror for _, mirror in phashes],
    }
    for attribute in attributes:
        for suffix in ("", "_prob", "_model_version"):
            name = f"{attribute}{suffix}"
            missing = [key for key, vector in zip(image_keys, vectors) if name not in vector]
            if missing:
                raise ValueError(f"vectorizer output lacks {name!r} for {missing[0]!r}")
        columns[attribute] = [vector[attribute] for vector in vectors]
        columns[f"{attribute}_prob"] = [vector[f"{attribute}_prob"] for vector in vectors]
        columns[f"{attribute}_probs"] = [_float_list(vector.get(f"{attribute}_probs")) for vector in vectors]
        columns[f"{attribute}_model_version"] = [vector[f"{attribute}_model_version"] for vector in vectors]
    columns["embedding"] = [_float_list(vector.get("embedding")) for vector in vectors]
    source = any("embedding_source" in vector for vector in vectors)
    if source:
        columns["embedding_source"] = [vector.get("embedding_source") for vector in vectors]
    return pa.Table.from_pydict(columns, schema=profile_schema(attributes, source))


# -- exclusions -------------------------------------------------------------------------------------
def _require_columns(table: pa.Table, names: Sequence[str], what: str) -> None:
    missing = [name for name in names if name not in table.column_names]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}")


def own_image_mask(
    profile: pa.Table,
    repository: pa.Table,
    phash_max_distance: int,
    confirm_near_copy: NearCopyCheck | None = None,
) -> np.ndarray:
    """True for repository items that are one of the profile's images: the same bytes
    (``content_sha256``) or a near copy (pHash within ``phash_max_distance`` bits of the profile
    image's pHash or, when the profile has a ``phash_mirror`` column, of its mirror image's: a
    mirrored upload of a shop photo is still the user's own photo).

    64-bit hashes see shape more than colour, so different garments with one silhouette can fall
    within the distance; ``confirm_near_copy(item_row, profile_row)``, when given, must also agree,
    as curation's thumbnail check does for duplicates.
    """
    _require_columns(repository, ["phash", "content_sha256"], "repository")
    own_sha = pc.is_in(repository["content_sha256"].cast(pa.string()),
                       value_set=pc.drop_null(profile["content_sha256"].cast(pa.string())))
    mask = pc.fill_null(own_sha, False).to_numpy(zero_copy_only=False).astype(bool)
    profile_columns = ["phash", "phash_mirror"] if "phash_mirror" in profile.column_names else ["phash"]
    if not repository.num_rows:
        return mask
    item_phash = repository["phash"].cast(pa.uint64())
    valid = pc.is_valid(item_phash).to_numpy(zero_copy_only=False).astype(bool)
    hashes = pc.fill_null(item_phash, 0).to_numpy().astype(np.uint64)
    for name in profile_columns:
        profile_phash = profile[name].cast(pa.uint64())
        profile_rows = np.flatnonzero(pc.is_valid(profile_phash).to_numpy(zero_copy_only=False))
        for row in profile_rows:
            own = np.uint64(profile_phash[int(row)].as_py())
            close = np.flatnonzero(valid & ~mask & (np.bitwise_count(hashes ^ own) <= phash_max_distance))
            for item in close:
                if confirm_near_copy is None or confirm_near_copy(int(item), int(row)):
                    mask[item] = True
    return mask


def thumbnail_check(store: "ObjectStore", profile: pa.Table, repository: pa.Table, max_mad: float) -> NearCopyCheck:
    """Curation's colour-thumbnail rule (:func:`pipeline.dedup.thumbnail_distance`, tolerant of a
    brightness change) as a :data:`NearCopyCheck`, against the profile image or its mirror image;
    images load once, on demand."""

    @lru_cache(maxsize=None)
    def thumbnail(key: str) -> np.ndarray:
        with Image.open(io.BytesIO(store.get_bytes(key))) as image:
            return colour_thumbnail(image)

    profile_keys = profile["image_key"].to_pylist()
    item_keys = repository["image_key"]

    def same_picture(item_row: int, profile_row: int) -> bool:
        try:
            item, own = thumbnail(item_keys[item_row].as_py()), thumbnail(profile_keys[profile_row])
        except (OSError, ValueError, FileNotFoundError, TypeError):
            return True  # cannot compare: err on the side of never showing users their own photo
        distance = min(float(thumbnail_distance(item, own)), float(thumbnail_distance(item, mirror_thumbnail(own))))
        return distance <= max_mad

    return same_picture


def shown_key(user_id: str, run_date: str) -> str:
    return f"users/{user_id}/_shown/{run_date}.parquet"


def shown_before(store: "ObjectStore", user_id: str, run_date: str) -> list[str]:
    """Item ids the user was shown on dates before ``run_date`` (never the date's own earlier run)."""
    prefix = f"users/{user_id}/_shown/"
    tables = []
    for key in store.list(prefix):
        name = key[len(prefix):]
        match = re.fullmatch(r"(\d{4}-\d{2}-\d{2})\.parquet", name)
        if match and match.group(1) < run_date:
            tables.append(store.read_parquet(key, columns=["item_id"]))
    if not tables:
        return []
    return sorted(set(pa.concat_tables(tables)["item_id"].to_pylist()) - {None})


# -- ranking ------------------------------------------------------------------------------------------
def _taxonomy(attributes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    taxonomy = get_settings().taxonomy
    return {a: taxonomy.classes(a) for a in attributes}


def _column(values: np.ndarray | None, n: int, null: np.ndarray | None = None) -> pa.Array:
    """A float64 column, all null when the component could not be computed (and null where ``null``)."""
    if values is None:
        return pa.nulls(n, type=pa.float64())
    return pa.array(values, type=pa.float64(), mask=null)


def _profile_source(profile: pa.Table) -> str | None:
    if "embedding_source" not in profile.column_names:
        return None
    sources = set(profile["embedding_source"].to_pylist()) - {None}
    return sources.pop() if len(sources) == 1 else None


def foreign_embeddings(profile: pa.Table, repository: pa.Table) -> np.ndarray | None:
    """True for repository items whose ``embedding_source`` is not the profile's (their embeddings come
    from other networks: the models changed and the repository is not refreshed yet); None when
    either side does not say."""
    source = _profile_source(profile)
    if source is None or "embedding_source" not in repository.column_names:
        return None
    same = pc.fill_null(pc.equal(repository["embedding_source"].cast(pa.string()), source), False)
    return ~same.to_numpy(zero_copy_only=False).astype(bool)


def rank(
    profile: pa.Table,
    repository: pa.Table,
    attributes: Sequence[str],
    k: int,
    phash_max_distance: int | None = None,
    confirm_near_copy: NearCopyCheck | None = None,
    *,
    score_kind: str | None = None,
    mmr_lambda: float | None = None,
    exclude_item_ids: Sequence[str] = (),
    options: Options | None = None,
    items: scoring.FashionMatrix | None = None,
) -> pa.Table:
    """The top ``k`` repository items for ``profile``, in recommendation order.

    ``score_kind`` and ``mmr_lambda`` default to ``options`` or settings (see :mod:`pipeline.scoring`
    for the scores and tie-breaks). Left out: the user's own images (:func:`own_image_mask`), the
    ``exclude_item_ids`` (items already shown) and, for ``matches``, items sharing no attribute.
    Columns: rank (from 1), item_id, score (the kind's: for hybrid the combined z-scores), score_kind,
    mmr_score (the MMR value at the pick; the relevance scaled to [0, 1] when lambda is 1), the
    per-item components (score_matches, best_row_matches, matched_attributes, match_probability,
    score_weighted, score_embedding; null when the vectors lack them), nearest_profile_image (by
    embedding, else by matching attributes), per attribute class, prob and model version, and the
    item's retailer, category, title, price, currency, product_url, image_key, crawl_date,
    crawled_at, inferred_at (those the repository has). ``items``: the repository's :func:`scoring.fashion_matrix`
    when the caller already has it (a batch of users converts the repository once).
    """
    options = options or validate_options(k=k, score_kind=score_kind, mmr_lambda=mmr_lambda)
    kind = score_kind or options.score_kind
    lam = options.mmr_lambda if mmr_lambda is None else float(mmr_lambda)
    _require_columns(repository, ["item_id", *attributes], "repository")
    if phash_max_distance is None:
        phash_max_distance = int(get_settings().curation["phash_max_distance"])
    taxonomy = _taxonomy(attributes)
    if items is None:
        items = scoring.fashion_matrix(repository, taxonomy)
    elif items.n != repository.num_rows:
        raise ValueError(f"the fashion matrix has {items.n} rows, the repository {repository.num_rows}")
    mine = scoring.fashion_matrix(profile, taxonomy, trust_unit_embeddings=False)
    eligible = ~own_image_mask(profile, repository, phash_max_distance, confirm_near_copy)
    if exclude_item_ids:
        shown = pc.is_in(repository["item_id"].cast(pa.string()), value_set=pa.array(list(exclude_item_ids), pa.string()))
        eligible &= ~pc.fill_null(shown, False).to_numpy(zero_copy_only=False).astype(bool)
    parts = scoring.components(items, mine, options.attribute_weights, need=[kind])
    foreign = foreign_embeddings(profile, repository)
    if foreign is not None and parts.embedding is not None:
        # Cosines across two networks' embedding spaces mean nothing: such items get the mean of the
        # comparable candidates' (neutral in the hybrid; the embedding score needs some comparable).
        comparable = eligible & ~foreign
        if kind == "embedding" and not comparable.any():
            raise scoring.MissingVectors(
                f"no repository item has embeddings of the profile's networks ({_profile_source(profile)}); "
                "they come after the next repository refresh")
        parts.embedding[foreign] = float(parts.embedding[comparable].mean()) if comparable.any() else 0.0
    if kind == "matches":
        eligible &= parts.matches > 0
    chosen = scoring.select(kind, items, parts, repository["item_id"], eligible, k, lam, options.mmr_pool,
                            options.hybrid_weights)
    rows = chosen.rows
    return ranked_table(kind, attributes, profile, mine, items.take(rows), repository.take(pa.array(rows, type=pa.int64())),
                        chosen.score, chosen.mmr_score, None if foreign is None else foreign[rows], options)


def ranked_table(kind: str, attributes: Sequence[str], profile: pa.Table, mine: scoring.FashionMatrix,
                 picked: scoring.FashionMatrix, picked_rows: pa.Table, score: np.ndarray, mmr_score: np.ndarray,
                 foreign: np.ndarray | None, options: Options) -> pa.Table:
    """The output table of :func:`rank` for the chosen items in order: ``picked`` and ``picked_rows``
    are their fashion matrix and repository rows, ``foreign`` their other-networks flags (or None)."""
    n = picked.n
    shown_parts = scoring.available_components(picked, mine, options.attribute_weights)  # output columns
    nearest = scoring.nearest_profile_rows(picked, mine)
    if foreign is not None and foreign.any():
        by_attributes = scoring.nearest_profile_rows(dataclasses.replace(picked, embedding=None), mine)
        nearest = np.where(foreign, by_attributes, nearest)
    profile_keys = profile["image_key"].to_pylist()
    matched = [",".join(a for a, hit in zip(attributes, hits) if hit) for hits in shown_parts.attribute_hits]
    table = pa.table({
        "rank": pa.array(np.arange(1, n + 1), type=pa.int32()),
        "item_id": picked_rows["item_id"],
        "score": pa.array(score, type=pa.float64()),
        "score_kind": pa.array([kind] * n, type=pa.string()),
        "mmr_score": pa.array(mmr_score, type=pa.float64()),
        "score_matches": pa.array(shown_parts.matches, type=pa.int64()),
        "best_row_matches": pa.array(shown_parts.best_row, type=pa.int64()),
        "matched_attributes": pa.array(matched, type=pa.string()),
        "match_probability": pa.array(shown_parts.match_probability, type=pa.float64()),
        "score_weighted": _column(shown_parts.weighted, n),
        "score_embedding": _column(shown_parts.embedding, n, foreign),
        "nearest_profile_image": pa.array([profile_keys[j] if j >= 0 else None for j in nearest], type=pa.string()),
    })
    for attribute in attributes:
        for name in (attribute, f"{attribute}_prob", f"{attribute}_model_version"):
            if name in picked_rows.column_names:
                table = table.append_column(picked_rows.schema.field(name), picked_rows[name])
    for name in ITEM_COLUMNS:
        if name in picked_rows.column_names:
            table = table.append_column(picked_rows.schema.field(name), picked_rows[name])
    return table


# -- the whole request ------------------------------------------------------------------------------
def recommendations_key(user_id: str, run_date: str) -> str:
    return f"recommendations/date={run_date}/user_id={user_id}/recommendations.parquet"


def profile_key(user_id: str, run_date: str) -> str:
    return f"profiles/date={run_date}/user_id={user_id}/profile.parquet"


def html_key(user_id: str, run_date: str) -> str:
    return f"recommendations_html/{run_date}/{user_id}.html"


def _default_vectorizer(store: "ObjectStore", attributes: Sequence[str]) -> Vectorizer:
    """The published attribute networks; imported here so this module loads without TensorFlow."""
    from models.inference import FashionVectorizer

    return FashionVectorizer.from_registry(store, list(attributes))


def repository_columns(attributes: Sequence[str]) -> list[str]:
    """The repository columns a recommendation reads (the contract's, less dhash and the like)."""
    columns = ["item_id", "phash", "phash_mirror", "content_sha256", *ITEM_COLUMNS]
    for attribute in attributes:
        columns += [attribute, f"{attribute}_prob", f"{attribute}_probs", f"{attribute}_model_version"]
    return columns + ["embedding", "embedding_source"]


def load_repository(store: "ObjectStore", filters: Filters, attributes: Sequence[str]) -> pa.Table:
    """The current repository (one row per item), filtered at read time. Unsorted (file order): the
    ranking does not depend on row order (ties go by item_id), and the sort would copy the embeddings."""
    from pipeline.repository import read_repository

    return read_repository(store, columns=repository_columns(attributes), filter=filters.expression(), sort=False)


def repository_vectors(repository: pa.Table, attributes: Sequence[str]) -> tuple[scoring.FashionMatrix, pa.Table]:
    """The repository's fashion matrix, and the table without the list columns it was made from (the
    ranking's output does not need them; a million 2048-d embeddings are 8 GB, kept once, not twice)."""
    matrix = scoring.fashion_matrix(repository, _taxonomy(attributes))
    lists = [name for name in (*(f"{a}_probs" for a in attributes), "embedding") if name in repository.column_names]
    return matrix, repository.drop_columns(lists)


def _summary_row(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("rank", "item_id", "title", "retailer", "category", "price", "currency", "product_url", "image_key",
            "score", "score_kind", "score_matches", "score_weighted", "score_embedding", "matched_attributes")
    return {key: row.get(key) for key in keys}


def recommend_for_user(
    store: "ObjectStore",
    user_id: str,
    image_keys: list[str] | None,
    k: int | None,
    run_date: str,
    vectorizer: Vectorizer | None = None,
    *,
    score_kind: str | None = None,
    mmr_lambda: float | None = None,
    filters: Filters | Mapping[str, Any] | None = None,
    options: Options | None = None,
    repository: pa.Table | None = None,
    repository_matrix: scoring.FashionMatrix | None = None,
) -> dict[str, Any]:
    """Validate, profile, score, rank and write one user's recommendations for ``run_date``.

    ``options`` (already validated) wins over ``k``/``score_kind``/``mmr_lambda``/``filters``;
    ``repository`` (already filtered) and its ``repository_matrix`` save re-reading and re-converting
    it for every user of a batch. Writes the four
    keys of the module docstring (fixed per date and user, so a rerun replaces them) and returns a
    JSON-serialisable summary for the Airflow task.
    """
    options = options or validate_options(k, score_kind, mmr_lambda, filters)
    keys = validate_request(store, user_id, image_keys, options.k)
    run_date = _validate_run_date(run_date)
    settings = get_settings()
    attributes = settings.taxonomy.names
    if repository is None:
        repository = load_repository(store, options.filters, attributes)
    if repository_matrix is None:
        repository_matrix, repository = repository_vectors(repository, attributes)
    vectorizer = vectorizer if vectorizer is not None else _default_vectorizer(store, attributes)
    profile = build_profile(store, user_id, keys, vectorizer, attributes)
    shown = shown_before(store, user_id, run_date)
    foreign = foreign_embeddings(profile, repository)
    ranked = rank(profile, repository, attributes, options.k, int(settings.curation["phash_max_distance"]),
                  thumbnail_check(store, profile, repository, float(settings.curation["thumbnail_max_mad"])),
                  exclude_item_ids=shown, options=options, items=repository_matrix)

    return write_outputs(store, user_id, run_date, keys, profile, ranked, shown, options, repository.num_rows,
                         0 if foreign is None else int(foreign.sum()))


def write_outputs(store: "ObjectStore", user_id: str, run_date: str, image_keys: list[str], profile: pa.Table,
                  ranked: pa.Table, shown: list[str], options: Options, n_items_scored: int,
                  n_foreign: int) -> dict[str, Any]:
    """Write one user's four keys (module docstring) and return the task's JSON-serialisable summary."""
    attributes = get_settings().taxonomy.names
    keys = image_keys
    written = {
        "recommendations": store.write_parquet(recommendations_key(user_id, run_date), ranked),
        "profile": store.write_parquet(profile_key(user_id, run_date), profile),
    }
    top_rows = ranked.to_pylist()
    context = {"run_date": run_date, "score_kind": options.score_kind, "mmr_lambda": options.mmr_lambda,
               "filters": options.filters.describe(), "n_items_scored": n_items_scored,
               "n_excluded_shown": len(shown)}
    page = render_recommendations_html(user_id, profile.to_pylist(), top_rows, store.get_bytes, attributes,
                                       context=context)
    written["html"] = store.put_bytes(html_key(user_id, run_date), page.encode("utf-8"))
    shown_today = pa.table({
        "item_id": ranked["item_id"], "rank": ranked["rank"], "score_kind": ranked["score_kind"],
        "shown_on": pa.array([run_date] * ranked.num_rows, type=pa.string()),
    })
    written["shown"] = store.write_parquet(shown_key(user_id, run_date), shown_today)
    return {
        "user_id": user_id,
        "run_date": run_date,
        "keys": written,
        "profile_images": keys,
        "score_kind": options.score_kind,
        "mmr_lambda": options.mmr_lambda,
        "filters": options.filters.describe(),
        "n_items_scored": n_items_scored,
        "n_excluded_shown": len(shown),
        "n_foreign_embeddings": n_foreign,
        "n_recommended": ranked.num_rows,
        "top_k": [_summary_row(row) for row in top_rows],
    }


def recommend_for_users(
    store: "ObjectStore",
    requests: Sequence[Mapping[str, Any]],
    run_date: str,
    options: Options,
    vectorizer: Vectorizer | None = None,
) -> list[dict[str, Any]]:
    """One batch of ``plan_requests``: the repository is read (and converted to a fashion matrix) and
    the networks load once for all its users. A user whose request fails does not stop the others; the
    batch raises at the end, naming them."""
    if not requests:
        return []
    attributes = get_settings().taxonomy.names
    matrix, repository = repository_vectors(load_repository(store, options.filters, attributes), attributes)
    vectorizer = vectorizer if vectorizer is not None else _default_vectorizer(store, attributes)
    summaries, failures = [], []
    for request in requests:
        try:
            summaries.append(recommend_for_user(store, request["user_id"], request.get("image_keys"), None, run_date,
                                                vectorizer, options=options, repository=repository,
                                                repository_matrix=matrix))
        except Exception as error:  # noqa: BLE001 - reported below, after the other users are served
            print(f"[fashionnet] recommend {request['user_id']}: FAILED: {error}", flush=True)
            failures.append((request["user_id"], error))
    if failures:
        names = ", ".join(user for user, _ in failures)
        raise RuntimeError(f"recommendations failed for {len(failures)} user(s): {names}") from failures[0][1]
    return summaries
