"""Recommendations: a user's photos -> style profile -> the repository items that match it best.

The similarity is the seed project's attribute-match count. Each of the user's images is vectorised
into one class per taxonomy attribute (a row of the *style profile*); a repository item scores one
point for every (profile row, attribute) pair whose classes agree. Ties are broken deterministically
(see :func:`rank`), and the user's own images, exact or near copies, are never recommended.
"""
from __future__ import annotations

import datetime as dt
import io
import posixpath
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from pipeline.dedup import colour_thumbnail, mirror_thumbnail, thumbnail_distance
from pipeline.hashing import content_sha256, hamming, image_hashes
from pipeline.report import render_recommendations_html
from pipeline.settings import get_settings
from pipeline.storage import StoreKeyError, normalize_key

if TYPE_CHECKING:
    from pipeline.storage import ObjectStore

REPOSITORY_KEY = "repository/fashion_vectors.parquet"
USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
MAX_K = 100


class InvalidRequest(ValueError):
    """A recommendation request (user, images, k, date) that is rejected before any work."""


class Vectorizer(Protocol):
    """What recommendations need from the attribute networks (``models.inference``)."""

    def vectorize(self, images: list[bytes]) -> list[dict[str, Any]]:
        """One dict per image with ``<attr>``, ``<attr>_prob``, ``<attr>_model_version`` per attribute."""
        ...


NearCopyCheck = Callable[[int, int], bool]
"""(repository row, profile row) -> True when the two images are the same picture."""


class MatchScores(NamedTuple):
    """Per repository item: ``score`` (sum of matches over profile rows), ``best_row`` (the best single
    profile row's match count) and ``attribute_hits`` (items x attributes: how many profile rows share
    the item's class of that attribute; ``score == attribute_hits.sum(axis=1)``)."""

    score: np.ndarray
    best_row: np.ndarray
    attribute_hits: np.ndarray


# -- request validation -----------------------------------------------------------------------------
def user_prefix(user_id: str) -> str:
    return f"users/{user_id}/"


def _is_image_key(key: str) -> bool:
    return key.lower().endswith(IMAGE_EXTENSIONS)


def _validate_user_id(user_id: Any) -> str:
    if not isinstance(user_id, str) or not USER_ID_PATTERN.fullmatch(user_id):
        raise InvalidRequest(
            f"user_id must be 1-64 characters of letters, digits, '_' or '-', got {user_id!r}")
    return user_id


def _validate_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_K:
        raise InvalidRequest(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    return int(k)


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
    if not _is_image_key(clean):
        raise InvalidRequest(f"image key {key!r} is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
    if not store.exists(clean):
        raise InvalidRequest(f"image key {key!r} does not exist in {store.uri}")
    return clean


def validate_request(store: "ObjectStore", user_id: str, image_keys: list[str] | None, k: int) -> list[str]:
    """The user's image keys to profile, after checking the whole request; raises InvalidRequest.

    Explicit ``image_keys`` must each be an existing image under ``users/<user_id>/``; with none given,
    every image under that prefix is used. Keys come back normalised, deduplicated, in request order
    (or sorted when listed).
    """
    _validate_user_id(user_id)
    _validate_k(k)
    prefix = user_prefix(user_id)
    if image_keys:
        if isinstance(image_keys, str):
            raise InvalidRequest(f"image_keys must be a list of keys, got the string {image_keys!r}")
        keys = [_validate_image_key(store, user_id, key) for key in image_keys]
        return list(dict.fromkeys(keys))
    keys = [key for key in store.list(prefix) if key.startswith(prefix) and _is_image_key(key)]
    if not keys:
        raise InvalidRequest(f"user {user_id!r} has no images under {prefix}")
    return keys


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
def profile_schema(attributes: Sequence[str]) -> pa.Schema:
    fields = [pa.field("image_key", pa.string()), pa.field("phash", pa.uint64()),
              pa.field("content_sha256", pa.string()), pa.field("phash_mirror", pa.uint64())]
    for attribute in attributes:
        fields += [pa.field(attribute, pa.string()), pa.field(f"{attribute}_prob", pa.float64()),
                   pa.field(f"{attribute}_model_version", pa.string())]
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


def build_profile(
    store: "ObjectStore",
    user_id: str,
    image_keys: Sequence[str],
    vectorizer: Vectorizer,
    attributes: Sequence[str] | None = None,
) -> pa.Table:
    """The style profile matrix: one row per user image with its hashes and predicted attributes."""
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
            columns[name] = [vector[name] for vector in vectors]
    return pa.Table.from_pydict(columns, schema=profile_schema(attributes))


# -- scoring and ranking ----------------------------------------------------------------------------
def _require_columns(table: pa.Table, names: Sequence[str], what: str) -> None:
    missing = [name for name in names if name not in table.column_names]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}")


def _class_codes(profile_column: pa.ChunkedArray, repository_column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of both columns' classes in one shared vocabulary; -1 for null or unseen.

    Only the profile's classes get codes, so a repository class no profile row has never matches.
    """
    profile_strings = profile_column.cast(pa.string())
    vocabulary = pc.drop_null(pc.unique(profile_strings))

    def codes(column: pa.ChunkedArray) -> np.ndarray:
        index = pc.index_in(column.cast(pa.string()), value_set=vocabulary)
        return pc.fill_null(index, -1).to_numpy().astype(np.int64)

    return codes(profile_strings), codes(repository_column)


def score_matches(profile: pa.Table, repository: pa.Table, attributes: Sequence[str]) -> MatchScores:
    """Attribute-match scores of every repository item against the style profile.

    For item ``i`` and profile row ``j``, ``matches[i, j]`` is the number of attributes whose predicted
    classes agree (null never matches). ``score[i]`` is the sum over profile rows, equivalently mean
    matches x profile size, so an item that matches several of the user's images scores higher than
    one matching a single image equally well. ``best_row[i]`` is ``max_j matches[i, j]``, used to break
    ties. Vectorised: one (items x profile rows) comparison per attribute.
    """
    _require_columns(profile, attributes, "profile")
    _require_columns(repository, attributes, "repository")
    n_items, n_rows = repository.num_rows, profile.num_rows
    matches = np.zeros((n_items, n_rows), dtype=np.int64)
    hits = np.zeros((n_items, len(attributes)), dtype=np.int64)
    for a, attribute in enumerate(attributes):
        profile_codes, item_codes = _class_codes(profile[attribute], repository[attribute])
        equal = (item_codes[:, None] == profile_codes[None, :]) & (item_codes[:, None] >= 0)
        matches += equal
        hits[:, a] = equal.sum(axis=1)
    best = matches.max(axis=1) if n_rows else np.zeros(n_items, dtype=np.int64)
    return MatchScores(score=matches.sum(axis=1), best_row=best, attribute_hits=hits)


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
        if not len(profile_rows):
            continue
        profile_hashes = profile_phash.to_numpy(zero_copy_only=False)[profile_rows].astype(np.uint64)
        close = valid[:, None] & (hamming(hashes[:, None], profile_hashes[None, :]) <= phash_max_distance)
        for item, column in zip(*np.nonzero(close & ~mask[:, None])):
            if confirm_near_copy is None or confirm_near_copy(int(item), int(profile_rows[column])):
                mask[item] = True
    return mask


def _matching_probability(repository: pa.Table, hits: np.ndarray, attributes: Sequence[str]) -> np.ndarray:
    """Mean predicted probability of the item's attributes that match the profile (0 when none)."""
    probs = np.column_stack([
        pc.fill_null(repository[f"{a}_prob"].cast(pa.float64()), 0.0).to_numpy() for a in attributes
    ]) if repository.num_rows else np.zeros((0, len(attributes)))
    matched = hits > 0
    count = matched.sum(axis=1)
    return np.where(count > 0, (probs * matched).sum(axis=1) / np.maximum(count, 1), 0.0)


def rank(
    profile: pa.Table,
    repository: pa.Table,
    attributes: Sequence[str],
    k: int,
    phash_max_distance: int | None = None,
    confirm_near_copy: NearCopyCheck | None = None,
) -> pa.Table:
    """The top ``k`` repository items for ``profile``, best first.

    Order: score desc, best single-row matches desc, mean predicted probability of the matching
    attributes desc, item_id asc, so equal inputs always give the same list. The user's own images
    (see :func:`own_image_mask`) and items sharing no attribute with the profile are left out.
    Columns: rank (from 1), item_id, score, best_row_matches, matched_attributes (comma-separated,
    the attributes any profile row shares), match_probability, then the item's other columns.
    """
    _require_columns(repository, ["item_id", *(f"{a}_prob" for a in attributes)], "repository")
    if phash_max_distance is None:
        phash_max_distance = int(get_settings().curation["phash_max_distance"])
    scores = score_matches(profile, repository, attributes)
    probability = _matching_probability(repository, scores.attribute_hits, attributes)
    eligible = ~own_image_mask(profile, repository, phash_max_distance, confirm_near_copy) & (scores.score > 0)
    id_order = pc.rank(pc.fill_null(repository["item_id"].cast(pa.string()), ""),
                       sort_keys="ascending", tiebreaker="dense").to_numpy()
    # lexsort: the last key is the primary one.
    order = np.lexsort((id_order, -probability, -scores.best_row, -scores.score))
    top = order[eligible[order]][:k]
    matched = [",".join(a for a, hit in zip(attributes, scores.attribute_hits[i]) if hit) for i in top]
    items = repository.take(pa.array(top, type=pa.int64())).drop_columns(["item_id"])
    head = pa.table({
        "rank": pa.array(np.arange(1, len(top) + 1), type=pa.int32()),
        "item_id": repository["item_id"].take(pa.array(top, type=pa.int64())),
        "score": pa.array(scores.score[top], type=pa.int64()),
        "best_row_matches": pa.array(scores.best_row[top], type=pa.int64()),
        "matched_attributes": pa.array(matched, type=pa.string()),
        "match_probability": pa.array(probability[top], type=pa.float64()),
    })
    for name in items.column_names:
        head = head.append_column(items.schema.field(name), items[name])
    return head


def thumbnail_check(store: "ObjectStore", profile: pa.Table, repository: pa.Table, max_mad: float) -> NearCopyCheck:
    """Curation's colour-thumbnail rule (:func:`pipeline.dedup.thumbnail_distance`, tolerant of a
    brightness change) as a :data:`NearCopyCheck`, against the profile image or its mirror image;
    images load once, on demand."""

    @lru_cache(maxsize=None)
    def thumbnail(key: str) -> np.ndarray:
        with Image.open(io.BytesIO(store.get_bytes(key))) as image:
            return colour_thumbnail(image)

    profile_keys = profile["image_key"].to_pylist()
    item_keys = repository["image_key"].to_pylist()

    def same_picture(item_row: int, profile_row: int) -> bool:
        try:
            item, own = thumbnail(item_keys[item_row]), thumbnail(profile_keys[profile_row])
        except (OSError, ValueError, FileNotFoundError):
            return True  # cannot compare: err on the side of never showing users their own photo
        distance = min(float(thumbnail_distance(item, own)), float(thumbnail_distance(item, mirror_thumbnail(own))))
        return distance <= max_mad

    return same_picture


# -- the whole request ------------------------------------------------------------------------------
def output_prefix(user_id: str, run_date: str) -> str:
    return f"recommendations/{user_id}/{run_date}/"


def _default_vectorizer(store: "ObjectStore", attributes: Sequence[str]) -> Vectorizer:
    """The published attribute networks; imported here so this module loads without TensorFlow."""
    from models.inference import FashionVectorizer

    return FashionVectorizer.from_registry(store, list(attributes))


def _summary_row(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("rank", "item_id", "title", "retailer", "price", "currency", "product_url", "image_key",
            "score", "best_row_matches", "matched_attributes")
    return {key: row.get(key) for key in keys}


def recommend_for_user(
    store: "ObjectStore",
    user_id: str,
    image_keys: list[str] | None,
    k: int,
    run_date: str,
    vectorizer: Vectorizer | None = None,
) -> dict[str, Any]:
    """Validate, profile, score, rank and write ``recommendations/<user_id>/<run_date>/``.

    Writes ``recommendations.parquet``, ``profile.parquet`` and ``index.html`` (fixed keys, so a rerun
    overwrites them) and returns a JSON-serialisable summary for the Airflow task.
    """
    keys = validate_request(store, user_id, image_keys, k)
    run_date = _validate_run_date(run_date)
    if not store.exists(REPOSITORY_KEY):
        raise FileNotFoundError(
            f"no fashion-vector repository at {REPOSITORY_KEY!r} in {store.uri}: run batch inference first")
    settings = get_settings()
    attributes = settings.taxonomy.names
    repository = store.read_parquet(REPOSITORY_KEY)
    vectorizer = vectorizer if vectorizer is not None else _default_vectorizer(store, attributes)
    profile = build_profile(store, user_id, keys, vectorizer, attributes)
    ranked = rank(profile, repository, attributes, k, int(settings.curation["phash_max_distance"]),
                  thumbnail_check(store, profile, repository, float(settings.curation["thumbnail_max_mad"])))

    prefix = output_prefix(user_id, run_date)
    written = {
        "recommendations": store.write_parquet(posixpath.join(prefix, "recommendations.parquet"), ranked),
        "profile": store.write_parquet(posixpath.join(prefix, "profile.parquet"), profile),
    }
    top_rows = ranked.to_pylist()
    page = render_recommendations_html(user_id, profile.to_pylist(), top_rows, store.get_bytes, attributes)
    written["html"] = store.put_bytes(posixpath.join(prefix, "index.html"), page.encode("utf-8"))
    return {
        "user_id": user_id,
        "run_date": run_date,
        "keys": written,
        "profile_images": keys,
        "n_items_scored": repository.num_rows,
        "n_recommended": ranked.num_rows,
        "top_k": [_summary_row(row) for row in top_rows],
    }
