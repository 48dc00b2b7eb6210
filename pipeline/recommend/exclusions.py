"""What is never recommended to a user: their own photos and near copies of them (same bytes, or pHash within
the curation distance of the photo or its mirror image, confirmed by the colour thumbnail), and the items
they were shown on an earlier date."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.curation.dedup import colour_thumbnail, mirror_thumbnail, thumbnail_distance
from pipeline.images import open_image
from pipeline.recommend.items import require_columns
from pipeline.store_layout import (
    SHOWN_NAME,
    shown_prefix,
)

if TYPE_CHECKING:
    from pipeline.storage import ObjectStore

NearCopyCheck = Callable[[int, int], bool]
"""(repository row, profile row) -> True when the two images are the same picture."""


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
    require_columns(repository, ["phash", "content_sha256"], "repository")
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
