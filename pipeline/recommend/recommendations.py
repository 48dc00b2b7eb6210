"""Recommendations: a user's photos -> style profile -> the repository items that fit it best.

Each of the user's images (``users/<user_id>/<image>`` in the store, directly under that prefix) is
vectorised by the published attribute networks into one row of the *style profile*: per attribute the
predicted class, its probability and the whole probability vector, plus the image's embedding. The
repository (``pipeline.repository.dataset.read_repository``) is scored against the profile with one of the
scores of :mod:`pipeline.recommend.scoring` (``matches``, ``weighted``, ``embedding`` or the default ``hybrid``),
diversified by maximal marginal relevance, and written per date, run and user (``<run>``: the
Airflow run id made path-safe by :func:`run_partition`):

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
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import store_layout
from pipeline.curation.dedup import colour_thumbnail, mirror_thumbnail, thumbnail_distance
from pipeline.hashing import content_sha256, image_hashes
from pipeline.images import ImageRules, UndecodableImage, check_not_blank, open_image, rules_from_settings
from pipeline.recommend import scoring
from pipeline.recommend.report import render_recommendations_html
from pipeline.settings import CurationSettings, Settings, Taxonomy, get_settings
from pipeline.storage import StoreKeyError, normalize_key
from pipeline.store_layout import (
    RECOMMENDATIONS_KEY_RE,
    RECOMMENDATIONS_PREFIX,
    SHOWN_NAME,
    USERS_PREFIX,
    profile_key,
    recommendation_page_key,
    recommendations_key,
    shown_key,
    shown_prefix,
)

if TYPE_CHECKING:
    from pipeline.storage import ObjectStore

log = logging.getLogger(__name__)

USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
RETAILER_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
MAX_K = 100
MAX_FILTER_VALUES = 50
ITEM_COLUMNS = (
    "retailer",
    "category",
    "title",
    "price",
    "currency",
    "product_url",
    "image_key",
    "crawl_date",
    "crawled_at",
    "inferred_at",
)


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


def _validate_k(k: Any) -> int:
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
    k = _validate_k(config.k if k is None else k)
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


# -- users and their images ---------------------------------------------------------------------------
def user_prefix(user_id: str) -> str:
    """``users/<user_id>/``, with the slash: a key that starts with it is the user's."""
    return f"{store_layout.user_prefix(user_id)}/"


def _is_image_key(key: str) -> bool:
    return key.lower().endswith(IMAGE_EXTENSIONS)


def _validate_user_id(user_id: Any) -> str:
    if not isinstance(user_id, str) or not USER_ID_PATTERN.fullmatch(user_id):
        raise InvalidRequest(f"user_id must be 1-64 characters of letters, digits, '_' or '-', got {user_id!r}")
    return user_id


def _user_image(key: str, user_id: str) -> bool:
    """An image file directly under ``users/<user_id>/`` (not in a subfolder such as ``_shown/``)."""
    prefix = user_prefix(user_id)
    return key.startswith(prefix) and "/" not in key[len(prefix) :] and _is_image_key(key)


def _validate_image_key(store: ObjectStore, user_id: str, key: Any) -> str:
    prefix = user_prefix(user_id)
    if not isinstance(key, str):
        raise InvalidRequest(f"image keys must be strings, got {key!r}")
    try:
        clean = normalize_key(key)
    except StoreKeyError as exc:
        raise InvalidRequest(f"image key {key!r} is not a key inside the store: {exc}") from None
    if not clean.startswith(prefix):
        raise InvalidRequest(f"image key {key!r} is not one of user {user_id!r}'s images (under {prefix})")
    if "/" in clean[len(prefix) :]:
        raise InvalidRequest(f"image key {key!r} is not directly under {prefix}")
    if not _is_image_key(clean):
        raise InvalidRequest(f"image key {key!r} is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
    if not store.exists(clean):
        raise InvalidRequest(f"image key {key!r} does not exist in {store.uri}")
    return clean


def user_images(store: ObjectStore, user_id: str) -> list[str]:
    """The image files directly under ``users/<user_id>/``, sorted."""
    return [key for key in store.list(user_prefix(user_id)) if _user_image(key, user_id)]


def list_users(store: ObjectStore) -> list[str]:
    """Every user with at least one image directly under ``users/<user_id>/`` (valid ids only), sorted."""
    users = set()
    for key in store.list(USERS_PREFIX):
        parts = key.split("/")
        if len(parts) == 3 and USER_ID_PATTERN.fullmatch(parts[1]) and _is_image_key(parts[2]):
            users.add(parts[1])
    return sorted(users)


def validate_request(store: ObjectStore, user_id: str, image_keys: Sequence[str] | None, k: int) -> list[str]:
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


def plan_requests(
    store: ObjectStore,
    user_id: str | None,
    image_keys: list[str] | None,
    options: Options,
    users_per_batch: int | None = None,
) -> list[list[dict[str, Any]]]:
    """The run's work in batches of ``{"user_id", "image_keys"}`` requests, everything validated.

    ``user_id`` None or "": every user under ``users/`` (then ``image_keys`` must be empty); batches of
    ``users_per_batch`` users (settings ``recommend.users_per_task``) become one mapped task each.
    """
    del options  # validated by the caller; accepted so the plan and the options are checked together
    config = get_settings().recommend
    if user_id in (None, ""):
        if image_keys:
            raise InvalidRequest("image_keys need a user_id: without one, every user's own images are used")
        users = list_users(store)
        requests = [{"user_id": user, "image_keys": user_images(store, user)} for user in users]
    else:
        requests = [{"user_id": user_id, "image_keys": validate_request(store, user_id, image_keys, 1)}]
    size = batch_size(
        len(requests),
        int(users_per_batch or config.users_per_task),
        config.max_mapped_tasks,
        config.max_users_per_task,
    )
    return [requests[start : start + size] for start in range(0, len(requests), size)]


def batch_size(users: int, users_per_task: int, max_tasks: int, max_users_per_task: int) -> int:
    """Users per mapped task: ``users_per_task``, or more when that would make more than
    ``max_tasks`` tasks (Airflow refuses a mapping beyond ``max_map_length``); raises ValueError when
    even ``max_users_per_task`` users per task would need more than ``max_tasks`` tasks."""
    if users_per_task < 1 or max_tasks < 1 or max_users_per_task < users_per_task:
        raise ValueError(
            f"recommend: need 1 <= users_per_task ({users_per_task}) <= max_users_per_task "
            f"({max_users_per_task}) and max_mapped_tasks ({max_tasks}) >= 1"
        )
    size = max(users_per_task, math.ceil(users / max_tasks))
    if size > max_users_per_task:
        raise ValueError(
            f"{users} users need {size} users per task to stay within {max_tasks} mapped tasks, "
            f"above recommend.max_users_per_task ({max_users_per_task}): raise one of them"
        )
    return size


def _validate_run_date(run_date: Any) -> str:
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


# -- the style profile ------------------------------------------------------------------------------
def profile_schema(attributes: Sequence[str], source: bool = False) -> pa.Schema:
    fields = [
        pa.field("image_key", pa.string()),
        pa.field("phash", pa.uint64()),
        pa.field("content_sha256", pa.string()),
        pa.field("phash_mirror", pa.uint64()),
    ]
    for attribute in attributes:
        fields += [
            pa.field(attribute, pa.string()),
            pa.field(f"{attribute}_prob", pa.float64()),
            pa.field(f"{attribute}_probs", pa.list_(pa.float32())),
            pa.field(f"{attribute}_model_version", pa.string()),
        ]
    fields.append(pa.field("embedding", pa.list_(pa.float32())))
    if source:
        fields.append(pa.field("embedding_source", pa.string()))
    return pa.schema(fields)


def _image_phashes(key: str, data: bytes, rules: ImageRules) -> tuple[int, int]:
    """(pHash, pHash of the mirror image): the own-image check also knows a mirrored upload.

    The photo is decoded and checked by curation's ``rules`` (:mod:`pipeline.images`: pixel limit, EXIF
    orientation, not blank), so a rotated phone photo hashes like the upright shop image; a photo those
    rules refuse raises :class:`UndecodableImage` naming ``key`` and the reason."""
    try:
        image = open_image(data, max_pixels=rules.max_pixels)
        check_not_blank(image, rules.blank_std)
    except UndecodableImage as exc:
        raise exc.for_key(key) from exc
    hashes = image_hashes(image)
    return hashes.phash, hashes.phash_mirror


def _float_list(value: Any) -> list[float] | None:
    if value is None:
        return None
    return [float(v) for v in np.asarray(value, dtype=np.float32).ravel()]


def build_profile(
    store: ObjectStore,
    user_id: str,
    image_keys: Sequence[str],
    vectorizer: Vectorizer,
    attributes: Sequence[str] | None = None,
    image_rules: ImageRules | None = None,
) -> pa.Table:
    """The style profile matrix: one row per user image with its hashes and fashion vector.

    Required from the vectorizer per attribute: ``<attr>``, ``<attr>_prob``, ``<attr>_model_version``;
    ``<attr>_probs`` and ``embedding`` are null when it gives none (then only ``matches`` can rank).
    ``attributes`` (default: the taxonomy's) and ``image_rules`` (how the photos are decoded; default:
    settings ``curation``) come from the caller's settings when it has them.
    """
    if not attributes or image_rules is None:
        settings = get_settings()
        attributes = attributes or settings.taxonomy.names
        if image_rules is None:
            image_rules = rules_from_settings(settings.curation)
    attributes = list(attributes)
    images = [store.get_bytes(key) for key in image_keys]
    phashes = [_image_phashes(key, data, image_rules) for key, data in zip(image_keys, images)]
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
    own_sha = pc.is_in(
        repository["content_sha256"].cast(pa.string()),
        value_set=pc.drop_null(profile["content_sha256"].cast(pa.string())),
    )
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


def thumbnail_check(
    store: ObjectStore, profile: pa.Table, repository: pa.Table, max_mad: float, max_pixels: int
) -> NearCopyCheck:
    """Curation's colour-thumbnail rule (:func:`pipeline.curation.dedup.thumbnail_distance`, tolerant of a
    brightness change) as a :data:`NearCopyCheck`, against the profile image or its mirror image;
    images load once, on demand, decoded as curation decodes them (:func:`pipeline.images.open_image`,
    at most ``max_pixels``)."""

    @cache
    def thumbnail(key: str) -> np.ndarray:
        return colour_thumbnail(open_image(store.get_bytes(key), max_pixels=max_pixels))

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


def shown_before(store: ObjectStore, user_id: str, run_date: str) -> list[str]:
    """Item ids the user was shown on dates before ``run_date``, by any run (never the date's own
    runs); ``<date>.parquet`` files of the layout before runs count too."""
    prefix = f"{shown_prefix(user_id)}/"
    tables = []
    for key in store.list(prefix):
        name = key[len(prefix) :]
        match = SHOWN_NAME.fullmatch(name)
        if match and match.group(1) < run_date:
            tables.append(store.read_parquet(key, columns=["item_id"]))
    if not tables:
        return []
    return sorted(set(pa.concat_tables(tables)["item_id"].to_pylist()) - {None})


# -- ranking ------------------------------------------------------------------------------------------
def _taxonomy(taxonomy: Taxonomy, attributes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The classes of ``attributes`` (the networks' order), as :func:`scoring.fashion_matrix` reads them."""
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
    _require_columns(repository, ["item_id", *attributes], "repository")
    taxonomy = _taxonomy(settings.taxonomy, attributes)
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
                f"no repository item has embeddings of the profile's networks ({_profile_source(profile)}); "
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


# -- the whole request ------------------------------------------------------------------------------
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


def _default_vectorizer(store: ObjectStore, attributes: Sequence[str]) -> Vectorizer:
    """The published attribute networks; imported here so this module loads without TensorFlow."""
    from models.inference import FashionVectorizer

    return FashionVectorizer.from_registry(store, list(attributes))


def repository_columns(attributes: Sequence[str]) -> list[str]:
    """The repository columns a recommendation reads (the contract's, less dhash and the like)."""
    columns = ["item_id", "phash", "phash_mirror", "content_sha256", *ITEM_COLUMNS]
    for attribute in attributes:
        columns += [attribute, f"{attribute}_prob", f"{attribute}_probs", f"{attribute}_model_version"]
    return columns + ["embedding", "embedding_source"]


def load_repository(store: ObjectStore, filters: Filters, attributes: Sequence[str]) -> pa.Table:
    """The current repository (one row per item), filtered at read time. Unsorted (file order): the
    ranking does not depend on row order (ties go by item_id), and the sort would copy the embeddings."""
    from pipeline.repository.dataset import read_repository

    return read_repository(store, columns=repository_columns(attributes), filter=filters.expression(), sort=False)


def repository_vectors(
    repository: pa.Table, taxonomy: Taxonomy, attributes: Sequence[str]
) -> tuple[scoring.FashionMatrix, pa.Table]:
    """The repository's fashion matrix (``attributes``' classes from ``taxonomy``), and the table without
    the list columns it was made from (the ranking's output does not need them; a million 2048-d
    embeddings are 8 GB, kept once, not twice)."""
    matrix = scoring.fashion_matrix(repository, _taxonomy(taxonomy, attributes))
    lists = [name for name in (*(f"{a}_probs" for a in attributes), "embedding") if name in repository.column_names]
    return matrix, repository.drop_columns(lists)


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


RepositoryVectors = tuple[scoring.FashionMatrix, pa.Table]
"""A loaded repository as :func:`repository_vectors` gives it: (fashion matrix, table without the lists)."""


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
        repository = _loaded_repository(store, request.options.filters, settings.taxonomy)
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
    run_date = _validate_run_date(request.run_date)
    run = run_partition(request.run_id if request.run_id is not None else adhoc_run_id())
    return keys, run_date, run


def _loaded_repository(store: ObjectStore, filters: Filters, taxonomy: Taxonomy) -> RepositoryVectors:
    attributes = taxonomy.names
    return repository_vectors(load_repository(store, filters, attributes), taxonomy, attributes)


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


# -- many users in one pass over the repository -----------------------------------------------------
SCAN_BLOCK_CELLS = 8_000_000  # (item rows x profile photos) per embedding product: 32 MB of float32


@dataclass
class _User:
    """One user of a batch: the profile and exclusions, then the running candidates of the pass."""

    user_id: str
    image_keys: list[str]
    profile: pa.Table
    mine: scoring.FashionMatrix
    shown: list[str]
    source: str | None
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # global scan rows
    keys: list[np.ndarray] = field(default_factory=list)  # their ordering keys, raw (unrounded)
    foreign_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n_foreign: int = 0


def _chunk_matrix(
    chunk: pa.Table, taxonomy: Mapping[str, Sequence[str]], dims: int | None, seen: dict[str, bool]
) -> scoring.FashionMatrix:
    """:func:`scoring.fashion_matrix` of a chunk with the whole repository's shapes: a chunk whose
    probability vectors or embeddings are all null gets zeros (as those rows are in the one-matrix
    path); ``seen`` records which list columns held any value, so the caller can tell, after the
    pass, that the repository has none (then the one-user path raises :class:`scoring.MissingVectors`)."""
    matrix = scoring.fashion_matrix(chunk, taxonomy)
    probs = matrix.probs
    if all(f"{a}_probs" in chunk.column_names for a in taxonomy):
        for a in taxonomy:
            seen[f"{a}_probs"] = seen.get(f"{a}_probs", False) or chunk[f"{a}_probs"].null_count < chunk.num_rows
        if probs is None:
            probs = tuple(scoring.list_matrix(chunk[f"{a}_probs"], len(taxonomy[a]), f"{a}_probs") for a in taxonomy)
    embedding = matrix.embedding
    if "embedding" in chunk.column_names:
        seen["embedding"] = seen.get("embedding", False) or embedding is not None
        if embedding is None and dims is not None:
            embedding = np.zeros((chunk.num_rows, dims), dtype=np.float32)
    return scoring.FashionMatrix(matrix.attributes, matrix.codes, matrix.top_prob, probs, embedding)


def _repository_chunks(
    store: ObjectStore, filters: Filters, attributes: Sequence[str], chunk_rows: int
) -> tuple[Any, list[str]]:
    """A scanner over the current repository files: the recommendation columns only, the run's filters
    pushed down to partitions and row groups, at most ``chunk_rows`` rows per batch and one batch read
    ahead (so memory is set by the chunk, not the catalogue)."""
    from pipeline.repository.dataset import repository_dataset

    dataset = repository_dataset(store, list(attributes))
    columns = [name for name in repository_columns(attributes) if name in dataset.schema.names]
    scanner = dataset.scanner(
        columns=columns, filter=filters.expression(), batch_size=chunk_rows, batch_readahead=1, fragment_readahead=1
    )
    return scanner, columns


class _Exclusions:
    """Which (chunk row, user) pairs may not be recommended: the user's own images (same bytes, or a
    pHash near copy confirmed by the thumbnail check, as :func:`own_image_mask`) and items shown before.
    One hash index over every user's profile hashes and one set lookup per chunk serve the batch;
    ``curation``: the pHash distance, the thumbnail rule and the image limits (settings ``curation``)."""

    def __init__(self, store: ObjectStore, users: Sequence[_User], curation: CurationSettings):
        from pipeline.curation.hash_index import MIN_INDEXED_FOR_MIH, HashIndex, MultiIndexHashing

        self.store, self.users = store, users
        self.distance, self.max_mad = curation.phash_max_distance, float(curation.thumbnail_max_mad)
        self.max_pixels = rules_from_settings(curation).max_pixels
        self.sha_users = self._index(lambda u: pc.drop_null(u.profile["content_sha256"].cast(pa.string())).to_pylist())
        self.shown_users = self._index(lambda u: u.shown)
        hashes, owners = [], []
        for column, user in enumerate(users):
            names = ["phash", "phash_mirror"] if "phash_mirror" in user.profile.column_names else ["phash"]
            for name in names:
                values = user.profile[name].cast(pa.uint64())
                for row in np.flatnonzero(pc.is_valid(values).to_numpy(zero_copy_only=False)):
                    hashes.append(values[int(row)].as_py())
                    owners.append((column, int(row)))
        self.owners = np.array(owners, dtype=np.int64).reshape(-1, 2)
        hashes_np = np.array(hashes, dtype=np.uint64)
        self.hash_index = (
            (MultiIndexHashing(hashes_np) if len(hashes_np) >= MIN_INDEXED_FOR_MIH else HashIndex(hashes_np))
            if len(hashes_np)
            else None
        )

    def _index(self, values_of: Callable[[_User], list[str]]) -> tuple[pa.Array, list[list[int]]]:
        owners: dict[str, list[int]] = {}
        for column, user in enumerate(self.users):
            for value in dict.fromkeys(values_of(user)):
                owners.setdefault(value, []).append(column)
        return pa.array(list(owners), type=pa.string()), list(owners.values())

    @staticmethod
    def _mark(excluded: np.ndarray, values: pa.ChunkedArray, index: tuple[pa.Array, list[list[int]]]) -> None:
        value_set, owners = index
        if not len(value_set):
            return
        found = pc.index_in(values.cast(pa.string()), value_set=value_set).to_numpy(zero_copy_only=False)
        for row in np.flatnonzero(~np.isnan(found.astype(np.float64))):
            excluded[row, owners[int(found[row])]] = True

    def excluded(self, chunk: pa.Table) -> np.ndarray:
        """(chunk rows, users) True where the pair is excluded."""
        excluded = np.zeros((chunk.num_rows, len(self.users)), dtype=bool)
        self._mark(excluded, chunk["content_sha256"], self.sha_users)
        self._mark(excluded, chunk["item_id"], self.shown_users)
        if self.hash_index is None or not chunk.num_rows:
            return excluded
        item_phash = chunk["phash"].cast(pa.uint64())
        valid = np.flatnonzero(pc.is_valid(item_phash).to_numpy(zero_copy_only=False))
        hashes = pc.fill_null(item_phash, 0).to_numpy().astype(np.uint64)[valid]
        queries, indexed, _ = self.hash_index.query(hashes, self.distance)
        checks: dict[int, NearCopyCheck] = {}
        for query, hit in zip(queries, indexed):
            item = int(valid[query])
            column, profile_row = (int(v) for v in self.owners[hit])
            if excluded[item, column]:
                continue
            if column not in checks:
                checks[column] = thumbnail_check(
                    self.store, self.users[column].profile, chunk, self.max_mad, self.max_pixels
                )
            if checks[column](item, profile_row):
                excluded[item, column] = True
        return excluded


def _foreign_matrix(chunk: pa.Table, users: Sequence[_User]) -> np.ndarray | None:
    """(chunk rows, users) True where the item's embeddings come from other networks than the user's
    profile (:func:`foreign_embeddings`); None when no pair is foreign."""
    if "embedding_source" not in chunk.column_names or all(u.source is None for u in users):
        return None
    sources = chunk["embedding_source"].cast(pa.string())
    foreign = np.zeros((chunk.num_rows, len(users)), dtype=bool)
    by_source: dict[str, np.ndarray] = {}
    for column, user in enumerate(users):
        if user.source is not None:
            if user.source not in by_source:
                same = pc.fill_null(pc.equal(sources, user.source), False)
                by_source[user.source] = ~same.to_numpy(zero_copy_only=False).astype(bool)
            foreign[:, column] = by_source[user.source]
    return foreign if foreign.any() else None


def _computed(values: np.ndarray | None, component: str) -> np.ndarray:
    """A component :func:`scoring.batch_components` computed for the score kind; raises ValueError when
    it was not (the kind does not use it)."""
    if values is None:
        raise ValueError(f"the {component!r} component was not computed for this score kind")
    return values


class _Moments:
    """Per-user count, mean and sum of squared deviations of a value, merged block by block (Chan et
    al.), for the hybrid score's standardisation over each user's candidates."""

    def __init__(self, users: int) -> None:
        self.n = np.zeros(users, dtype=np.float64)
        self.mean = np.zeros(users, dtype=np.float64)
        self.m2 = np.zeros(users, dtype=np.float64)

    def add(self, values: np.ndarray, mask: np.ndarray) -> None:
        count = mask.sum(axis=0).astype(np.float64)
        if not count.any():
            return
        safe = np.maximum(count, 1.0)
        block_mean = np.where(mask, values, 0.0).sum(axis=0) / safe
        block_m2 = np.where(mask, (values - block_mean[None, :]) ** 2, 0.0).sum(axis=0)
        total = self.n + count
        delta = block_mean - self.mean
        share = np.divide(count, total, out=np.zeros_like(total), where=total > 0)
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + block_m2 + delta**2 * self.n * share
        self.n = total

    def _std(self) -> tuple[np.ndarray, np.ndarray]:
        std = np.sqrt(np.divide(self.m2, self.n, out=np.zeros_like(self.m2), where=self.n > 0))
        usable = (self.n > 0) & (std > 1e-12)
        return usable, np.where(usable, std, 1.0)

    def standardise(self, values: np.ndarray) -> np.ndarray:
        """``(values - mean) / std`` per user column, 0 for a user whose value is constant (as
        :func:`scoring.standardised`)."""
        usable, std = self._std()
        return np.where(usable[None, :], (values - self.mean[None, :]) / std[None, :], 0.0)


def _concat_matrices(parts: Sequence[scoring.FashionMatrix]) -> scoring.FashionMatrix:
    first = parts[0]
    all_probs = [p.probs for p in parts if p.probs is not None]
    probs = (
        None
        if len(all_probs) < len(parts)
        else tuple(np.concatenate([part_probs[a] for part_probs in all_probs]) for a in range(len(first.attributes)))
    )
    embeddings = [p.embedding for p in parts if p.embedding is not None]
    embedding = None if len(embeddings) < len(parts) else np.concatenate(embeddings)
    return scoring.FashionMatrix(
        first.attributes,
        np.concatenate([p.codes for p in parts]),
        np.concatenate([p.top_prob for p in parts]),
        probs,
        embedding,
    )


class _BatchScorer:
    """One pass (two for ``hybrid``: the moments, then the ranking) of a batch of users over the
    repository's chunks, keeping per user the best ``pool`` eligible rows by the kind's full order
    (:func:`scoring.top_candidates`'s), and the repository rows any user may still need."""

    def __init__(
        self,
        store: ObjectStore,
        users: list[_User],
        options: Options,
        settings: Settings,
        chunk_rows: int,
        chunks: Callable[[], Iterable[pa.Table]] | None = None,
    ) -> None:
        """``settings``: the run's (the taxonomy's attributes are scored; ``curation`` says what is
        the user's own image). ``chunks``: where the repository's chunks come from (default: the
        store's current files through :func:`_repository_chunks`); bench/recommend_batch.py streams
        synthetic ones."""
        self.store, self.users, self.options, self.settings = store, users, options, settings
        self.attributes = settings.taxonomy.names
        self.kind = options.score_kind
        self.taxonomy = _taxonomy(settings.taxonomy, self.attributes)
        self.chunk_rows = chunk_rows
        self.chunks = chunks
        self.pool = options.k if options.mmr_lambda >= 1.0 else max(options.mmr_pool, options.k)
        self.batch = scoring.profile_batch([u.mine for u in users], self.taxonomy)
        self.dims = None if self.batch.embedding_t is None else int(self.batch.embedding_t.shape[0])
        self.weights = scoring.normalised_weights(self.batch.attributes, options.attribute_weights)
        self.exclusions = _Exclusions(store, users, settings.curation)
        photos = int(self.batch.offsets[-1])
        self.block_rows = max(64, SCAN_BLOCK_CELLS // max(photos, len(users), 1))
        self.n_items = 0
        self.seen: dict[str, bool] = {}
        self.moments: dict[str, _Moments] = {}
        self.comparable = _Moments(len(users))  # the embedding over eligible items of the user's networks
        self.foreign_eligible = np.zeros(len(users), dtype=np.float64)
        self.foreign_value = np.zeros(len(users), dtype=np.float64)
        self._reset_kept()
        self.columns: list[str] = []

    # -- the pass --
    def run(self) -> None:
        if self.kind == "hybrid":
            self.moments = {c: _Moments(len(self.users)) for c in scoring.HYBRID_COMPONENTS}
            self._scan(collect=False)
            self._finish_moments()
            self.comparable = _Moments(len(self.users))
        self._scan(collect=True)

    def _scan(self, collect: bool) -> None:
        if self.chunks is None:
            scanner, self.columns = _repository_chunks(
                self.store, self.options.filters, self.attributes, self.chunk_rows
            )
            source: Iterable[Any] = scanner.to_batches()
        else:
            source = self.chunks()
        users = len(self.users)
        self.threshold = np.full(users, -np.inf)
        self.foreign_threshold: list[str | None] = [None] * users
        self.pending: list[tuple[np.ndarray, np.ndarray, list[np.ndarray]]] = []
        self.foreign_pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_size = 0
        self.n_items = 0
        self._reset_kept()
        for user in self.users:
            user.n_foreign = 0
            user.rows, user.keys = np.zeros(0, dtype=np.int64), []
            user.foreign_rows = np.zeros(0, dtype=np.int64)
        offset = 0
        for record_batch in source:
            if not record_batch.num_rows:
                continue
            chunk = record_batch if isinstance(record_batch, pa.Table) else pa.Table.from_batches([record_batch])
            self._chunk(chunk, offset, collect)
            offset += chunk.num_rows
            self.n_items = offset
            del chunk, record_batch
            if self.pending_size > self.pool * len(self.users) // 2:
                self._merge()  # after the chunk is released: the merge's copies do not stack on it
        if collect:
            self._merge()
        self._check_vectors()

    def _check_vectors(self) -> None:
        if not self.n_items:
            return
        if self.kind in ("weighted", "hybrid") and not all(self.seen.get(f"{a}_probs") for a in self.attributes):
            raise scoring.MissingVectors(
                "the weighted score needs <attr>_probs columns in the repository and the profile"
            )
        if self.kind in ("embedding", "hybrid") and not self.seen.get("embedding"):
            raise scoring.MissingVectors(
                "the embedding score needs an embedding column in the repository and the profile"
            )

    def _chunk(self, chunk: pa.Table, offset: int, collect: bool) -> None:
        matrix = _chunk_matrix(chunk, self.taxonomy, self.dims, self.seen)
        eligible = ~self.exclusions.excluded(chunk)
        foreign = _foreign_matrix(chunk, self.users)
        if collect and foreign is not None:
            for column, count in enumerate(foreign.sum(axis=0)):
                self.users[column].n_foreign += int(count)
        self._chunk_exact(chunk, matrix, eligible, foreign, offset, collect)

    def _chunk_exact(
        self,
        chunk: pa.Table,
        matrix: scoring.FashionMatrix,
        eligible: np.ndarray,
        foreign: np.ndarray | None,
        offset: int,
        collect: bool,
    ) -> None:
        ids = None
        taken: list[np.ndarray] = []
        for start in range(0, chunk.num_rows, self.block_rows):
            stop = min(chunk.num_rows, start + self.block_rows)
            parts = scoring.batch_components(matrix.take(slice(start, stop)), self.batch, self.weights, [self.kind])
            ok = eligible[start:stop]
            block_foreign = None if foreign is None else foreign[start:stop]
            if not collect:
                self._add_moments(parts, ok, block_foreign)
                continue
            keys, ok, foreign_ok = self._keys(parts, ok, block_foreign)
            rounded = np.round(keys[0], scoring.ROUND_DECIMALS)
            floor = self.threshold
            if stop - start > self.pool:
                # A row below the block's own pool-th best cannot be among the user's best pool.
                ranked = np.where(ok, rounded, -np.inf)
                floor = np.maximum(floor, -np.partition(-ranked, self.pool - 1, axis=0)[self.pool - 1])
            passed = ok & (rounded >= floor[None, :])
            user_of, row_of = np.nonzero(passed.T)
            if len(row_of):
                self.pending.append((user_of, row_of + start + offset, [key[row_of, user_of] for key in keys]))
                self.pending_size += len(row_of)
                taken.append(row_of + start)
            if foreign_ok is not None and foreign_ok.any():
                if ids is None:
                    ids = np.array(chunk["item_id"].cast(pa.string()).to_pylist(), dtype=object)
                block_ids = ids[start:stop]
                for column in np.flatnonzero(foreign_ok.any(axis=0)):
                    rows = np.flatnonzero(foreign_ok[:, column])
                    limit = self.foreign_threshold[column]
                    if limit is not None:
                        rows = rows[block_ids[rows] <= limit]
                    if len(rows):
                        self.foreign_pending.append((np.full(len(rows), column), rows + start + offset))
                        self.pending_size += len(rows)
                        taken.append(rows + start)
        if taken:
            self._keep(chunk, matrix, np.unique(np.concatenate(taken)), offset)

    def _embedding_values(self, parts: scoring.BatchComponents, foreign: np.ndarray | None) -> np.ndarray:
        embedding = _computed(parts.embedding, "embedding")
        if foreign is None:
            return embedding
        return np.where(foreign, self.foreign_value[None, :], embedding)

    def _add_moments(self, parts: scoring.BatchComponents, ok: np.ndarray, foreign: np.ndarray | None) -> None:
        self.comparable.add(_computed(parts.embedding, "embedding"), ok if foreign is None else ok & ~foreign)
        if foreign is not None:
            self.foreign_eligible += (ok & foreign).sum(axis=0)
        self.moments["weighted"].add(_computed(parts.weighted, "weighted"), ok)
        self.moments["matches"].add(parts.matches_share(len(self.attributes)), ok)

    def _finish_moments(self) -> None:
        """After the moments pass: the value of other networks' items (the mean of the comparable
        candidates', 0 without any, as :func:`rank` sets it) and the embedding moments over all
        candidates (those items sit at that mean, so they add to the count only)."""
        comparable = self.comparable
        self.foreign_value = np.where(comparable.n > 0, comparable.mean, 0.0)
        embedding = _Moments(len(self.users))
        embedding.n = comparable.n + self.foreign_eligible
        embedding.mean = self.foreign_value.copy()
        embedding.m2 = np.where(comparable.n > 0, comparable.m2, 0.0)
        self.moments["embedding"] = embedding

    def _keys(
        self, parts: scoring.BatchComponents, ok: np.ndarray, foreign: np.ndarray | None
    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray | None]:
        """The kind's ordering keys for the block, the eligible pairs ranked by them, and (embedding
        score) the eligible pairs of other networks, ranked by item_id once their value is known."""
        if self.kind == "matches":
            matches = _computed(parts.matches, "matches")
            return (
                [
                    matches.astype(np.float64),
                    _computed(parts.best_row, "best_row").astype(np.float64),
                    _computed(parts.match_probability, "match_probability"),
                ],
                ok & (matches > 0),
                None,
            )
        if self.kind == "weighted":
            return [_computed(parts.weighted, "weighted")], ok, None
        if self.kind == "embedding":
            embedding = _computed(parts.embedding, "embedding")
            self.comparable.add(embedding, ok if foreign is None else ok & ~foreign)
            if foreign is None:
                return [embedding.astype(np.float64)], ok, None
            return [embedding.astype(np.float64)], ok & ~foreign, ok & foreign
        weights = scoring.normalised_hybrid_weights(self.options.hybrid_weights)
        values = {
            "embedding": self._embedding_values(parts, foreign),
            "weighted": _computed(parts.weighted, "weighted"),
            "matches": parts.matches_share(len(self.attributes)),
        }
        total = np.zeros(ok.shape, dtype=np.float64)
        for component, weight in weights.items():
            if weight:
                total += weight * self.moments[component].standardise(values[component])
        return [total], ok, None

    # -- the rows the running candidates need --
    def _reset_kept(self) -> None:
        """The kept rows: per chunk a piece (global rows, the rows without their list columns, their
        fashion matrix), so a compaction copies one piece at a time and the Arrow list columns (a
        1280-d embedding is 5 KB a row) are not held twice."""
        self.pieces: list[tuple[np.ndarray, pa.Table, scoring.FashionMatrix]] = []
        self.kept_rows = np.zeros(0, dtype=np.int64)  # sorted global rows of every piece
        self.kept_at = np.zeros((0, 2), dtype=np.int64)  # (piece, local row) of each, same order
        self.kept_ids = pa.array([], type=pa.string())

    def _index_kept(self) -> None:
        rows = [piece[0] for piece in self.pieces]
        if not rows:
            self.kept_rows, self.kept_at = np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.int64)
            self.kept_ids = pa.array([], type=pa.string())
            return
        every = np.concatenate(rows)
        at = np.concatenate([np.stack([np.full(len(r), p), np.arange(len(r))], axis=1) for p, r in enumerate(rows)])
        ids = pa.concat_arrays([piece[1]["item_id"].combine_chunks().cast(pa.string()) for piece in self.pieces])
        order = np.argsort(every, kind="stable")
        self.kept_rows, self.kept_at = every[order], at[order]
        self.kept_ids = ids.take(pa.array(order, type=pa.int64()))

    def _keep(self, chunk: pa.Table, matrix: scoring.FashionMatrix, local: np.ndarray, offset: int) -> None:
        """Keep chunk rows ``local`` (sorted, unique) that are not kept yet."""
        rows = local + offset
        known = np.searchsorted(self.kept_rows, rows)
        fresh = (
            (known >= len(self.kept_rows)) | (self.kept_rows[np.minimum(known, len(self.kept_rows) - 1)] != rows)
            if len(self.kept_rows)
            else np.ones(len(rows), dtype=bool)
        )
        local = local[fresh]
        if not len(local):
            return
        lists = [name for name in (*(f"{a}_probs" for a in self.attributes), "embedding") if name in chunk.column_names]
        table = chunk.drop_columns(lists).take(pa.array(local, type=pa.int64()))
        self.pieces.append((local + offset, table, matrix.take(local)))
        self._index_kept()

    def _positions(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.kept_rows, rows)

    def _ids(self, rows: np.ndarray) -> pa.Array:
        return self.kept_ids.take(pa.array(self._positions(rows), type=pa.int64()))

    def _kept_take(self, rows: np.ndarray) -> tuple[pa.Table, scoring.FashionMatrix]:
        """The kept table rows (without list columns) and fashion matrix of global ``rows``, in order."""
        if not len(rows):
            first = self.pieces[0]
            return first[1].slice(0, 0), first[2].take(np.zeros(0, dtype=np.int64))
        at = self.kept_at[self._positions(rows)]
        tables, matrices, order = [], [], []
        for piece in np.unique(at[:, 0]):
            mine = np.flatnonzero(at[:, 0] == piece)
            local = at[mine, 1]
            tables.append(self.pieces[piece][1].take(pa.array(local, type=pa.int64())))
            matrices.append(self.pieces[piece][2].take(local))
            order.append(mine)
        back = np.empty(len(rows), dtype=np.int64)
        back[np.concatenate(order)] = np.arange(len(rows))
        table = pa.concat_tables(tables).take(pa.array(back, type=pa.int64()))
        return table, _concat_matrices(matrices).take(back)

    # -- the running candidates --
    def _merge(self) -> None:
        """Fold the pending candidates into each user's best ``pool`` (exact: the full order of
        :func:`scoring.top_candidates`), raise the users' thresholds, and drop rows nobody needs."""
        if self.pending:
            user_of = np.concatenate([p[0] for p in self.pending])
            rows = np.concatenate([p[1] for p in self.pending])
            keys = [np.concatenate([p[2][k] for p in self.pending]) for k in range(len(self.pending[0][2]))]
            order = np.argsort(user_of, kind="stable")
            bounds = np.searchsorted(user_of[order], np.arange(len(self.users) + 1))
            for column, user in enumerate(self.users):
                mine = order[bounds[column] : bounds[column + 1]]
                if not len(mine):
                    continue
                all_rows = np.concatenate([user.rows, rows[mine]])
                all_keys = (
                    [np.concatenate([old, new[mine]]) for old, new in zip(user.keys, keys)]
                    if user.keys
                    else [new[mine] for new in keys]
                )
                best = scoring.top_candidates(
                    all_keys, self._ids(all_rows), np.ones(len(all_rows), dtype=bool), self.pool
                )
                user.rows, user.keys = all_rows[best], [key[best] for key in all_keys]
                if len(user.rows) >= self.pool:
                    self.threshold[column] = float(np.round(user.keys[0], scoring.ROUND_DECIMALS).min())
        if self.foreign_pending:
            user_of = np.concatenate([p[0] for p in self.foreign_pending])
            rows = np.concatenate([p[1] for p in self.foreign_pending])
            for column in np.unique(user_of):
                user = self.users[column]
                all_rows = np.unique(np.concatenate([user.foreign_rows, rows[user_of == column]]))
                ids = self._ids(all_rows)
                best = scoring.top_candidates(
                    [np.zeros(len(all_rows))], ids, np.ones(len(all_rows), dtype=bool), self.pool
                )
                user.foreign_rows = all_rows[best]
                if len(best) >= self.pool:
                    self.foreign_threshold[column] = ids[int(best[-1])].as_py()
        self.pending, self.foreign_pending, self.pending_size = [], [], 0
        needed = np.unique(
            np.concatenate([self.kept_rows[:0]] + [u.rows for u in self.users] + [u.foreign_rows for u in self.users])
        )
        if len(needed) < len(self.kept_rows):
            # In place, a piece at a time: each old piece is released as soon as its copy exists (a
            # new list beside the old one held every kept row twice at the merge's peak).
            for index, (rows, table, matrix) in enumerate(self.pieces):
                keep = np.isin(rows, needed)
                if not keep.all():
                    local = np.flatnonzero(keep)
                    self.pieces[index] = (
                        rows[local],
                        table.take(pa.array(local, type=pa.int64())),
                        matrix.take(local),
                    )
                del rows, table, matrix
            self.pieces = [piece for piece in self.pieces if len(piece[0])]
            self._index_kept()

    # -- the end --
    def ranked(self, column: int) -> pa.Table:
        """User ``column``'s output table, as :func:`rank` makes it."""
        user = self.users[column]
        rows, keys = user.rows, user.keys
        if self.kind == "embedding" and len(user.foreign_rows):
            if not self.comparable.n[column]:
                raise scoring.MissingVectors(
                    f"no repository item has embeddings of the profile's networks ({user.source}); "
                    "they come after the next repository refresh"
                )
            rows = np.concatenate([rows, user.foreign_rows])
            keys = [
                np.concatenate(
                    [
                        keys[0] if keys else np.zeros(0),
                        np.full(len(user.foreign_rows), float(self.comparable.mean[column])),
                    ]
                )
            ]
        if not self.pieces:
            empty = _empty_repository(self.store, self.attributes)
            return rank(RankRequest(user.profile, self.options), empty, self.attributes, settings=self.settings)
        if len(rows):
            best = scoring.top_candidates(keys, self._ids(rows), np.ones(len(rows), dtype=bool), self.pool)
            rows, primary = rows[best], keys[0][best]
        else:
            primary = np.zeros(0)
        picked_rows, matrix = self._kept_take(rows)
        if not all(self.seen.get(f"{a}_probs") for a in self.attributes):
            matrix = dataclasses.replace(matrix, probs=None)
        if not self.seen.get("embedding"):
            matrix = dataclasses.replace(matrix, embedding=None)
        lam = self.options.mmr_lambda
        similarity = scoring.similarity_matrix(matrix) if lam < 1.0 and len(rows) else np.zeros((0, 0))
        picked, values = scoring.mmr(primary, similarity, self.options.k, lam)
        foreign = foreign_embeddings(user.profile, picked_rows)
        chosen = PickedItems(
            matrix=matrix.take(picked),
            rows=picked_rows.take(pa.array(picked, type=pa.int64())),
            score=primary[picked],
            mmr_score=values,
            foreign=None if foreign is None else foreign[picked],
        )
        return ranked_table(chosen, RankedFor(user.profile, user.mine, self.attributes, self.options))


def _empty_repository(store: ObjectStore, attributes: Sequence[str]) -> pa.Table:
    scanner, columns = _repository_chunks(store, Filters(), attributes, 1024)
    return scanner.projected_schema.empty_table()


def _missing_profile_vectors(kind: str, mine: scoring.FashionMatrix, dims: int | None) -> str | None:
    """Why ``kind`` cannot score this profile (the one-user path's message), or None."""
    if kind in ("weighted", "hybrid") and mine.probs is None:
        return "the weighted score needs <attr>_probs columns in the repository and the profile"
    if kind in ("embedding", "hybrid"):
        if mine.embedding is None:
            return "the embedding score needs an embedding column in the repository and the profile"
        if dims is not None and mine.embedding.shape[1] != dims:
            return (
                f"the profile's embeddings have {mine.embedding.shape[1]} dimensions, the batch's {dims}: "
                "they come from different networks (embedding_source)"
            )
    return None


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
        run_date=_validate_run_date(run_date),
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
) -> list[_User]:
    """The batch's users with their validated images, profiles and exclusions; a failing one is
    reported to ``failures`` and left out."""
    settings = run.settings
    attributes = settings.taxonomy.names
    taxonomy = _taxonomy(settings.taxonomy, attributes)
    image_rules = rules_from_settings(settings.curation)
    users: list[_User] = []
    for request in requests:
        user_id = request["user_id"]
        try:
            keys = validate_request(store, user_id, request.get("image_keys"), run.options.k)
            profile = build_profile(store, user_id, keys, vectorizer, attributes, image_rules)
            mine = scoring.fashion_matrix(profile, taxonomy, trust_unit_embeddings=False)
            shown = shown_before(store, user_id, run.run_date)
            users.append(_User(user_id, keys, profile, mine, shown, _profile_source(profile)))
        except Exception as error:  # noqa: BLE001 - reported at the end, after the other users are served
            failures.add(user_id, error)
    return users


def _scorable_users(users: list[_User], kind: str, failures: _BatchFailures) -> list[_User]:
    """The users whose profiles have the vectors ``kind`` needs, with the batch's most common
    embedding width; the others are reported to ``failures`` as :class:`scoring.MissingVectors`."""
    dims_seen = [u.mine.embedding.shape[1] for u in users if u.mine.embedding is not None]
    dims = max(set(dims_seen), key=dims_seen.count) if dims_seen else None
    ready = []
    for user in users:
        reason = _missing_profile_vectors(kind, user.mine, dims)
        if reason:
            failures.add(user.user_id, scoring.MissingVectors(reason))
        else:
            ready.append(user)
    return ready


def _score_and_write(
    store: ObjectStore, ready: list[_User], run: _BatchRun, chunk_rows: int, failures: _BatchFailures
) -> dict[str, dict[str, Any]]:
    """One pass of the batch scorer over the repository, then each user's outputs written; the
    summaries by user. A repository that cannot be scored fails every user."""
    scorer = _BatchScorer(store, ready, run.options, run.settings, chunk_rows)
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
