"""The users and their photos in the store (``users/<user_id>/<image>``, directly under that prefix), and a
run's plan: the validated requests, in batches of users per mapped task."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline import store_layout
from pipeline.recommend.options import InvalidRequest, Options, validate_k
from pipeline.settings import get_settings
from pipeline.storage import StoreKeyError, normalize_key
from pipeline.store_layout import USERS_PREFIX

if TYPE_CHECKING:
    from pipeline.storage import ObjectStore

USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


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
    validate_k(k)
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
