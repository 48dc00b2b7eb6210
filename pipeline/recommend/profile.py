"""The style profile: one row per user photo with its hashes and the attribute networks' fashion vector."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

from pipeline.hashing import content_sha256, image_hashes
from pipeline.images import ImageRules, UndecodableImage, check_not_blank, open_image, rules_from_settings
from pipeline.settings import get_settings

if TYPE_CHECKING:
    from pipeline.storage import ObjectStore


class Vectorizer(Protocol):
    """What recommendations need from the attribute networks (``models.inference.FashionVectorizer``)."""

    def vectorize(self, images: list[bytes]) -> list[dict[str, Any]]:
        """One dict per image: per attribute ``<attr>``, ``<attr>_prob``, ``<attr>_model_version`` and
        (for the weighted and embedding scores) ``<attr>_probs``; ``embedding`` (and optionally
        ``embedding_source``) per image."""
        ...


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


def profile_source(profile: pa.Table) -> str | None:
    """The networks the profile's embeddings come from (``embedding_source``), None when it does not
    say or names more than one."""
    if "embedding_source" not in profile.column_names:
        return None
    sources = set(profile["embedding_source"].to_pylist()) - {None}
    return sources.pop() if len(sources) == 1 else None
