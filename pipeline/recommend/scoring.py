"""How well repository items fit a style profile: the scores, the top-k selection and diversification.

Pure numpy on numeric *fashion matrices* (:class:`FashionMatrix`), one row per image: the repository's
items on one side, the user's profile images (rows ``j = 1..m``) on the other. Nothing here reads the
store; :mod:`pipeline.recommend.recommendations` turns Arrow tables into matrices and rankings into tables.

The scores of item ``i`` (``A`` taxonomy attributes, ``c_ia`` its predicted class of attribute ``a``,
``p_ia`` its softmax vector over the attribute's classes in taxonomy order, ``e_i`` its L2-normalised
embedding; the same for profile row ``j``):

``matches`` (the seed project's score)
    ``sum_j sum_a [c_ia == c_ja]``: the number of (profile row, attribute) pairs whose predicted classes
    agree, summed over the profile rows (= m x the mean per row; a null class never matches). Ties are
    broken by ``best_row = max_j sum_a [c_ia == c_ja]`` (the best single profile image), then by
    ``match_probability`` (the mean predicted probability of the item's attributes that match some
    profile row), then by item_id ascending.
``weighted``
    ``(1/m) sum_j sum_a w_a <p_ia, p_ja>``, weights ``w_a >= 0`` normalised to sum to 1. ``<p, q>`` is
    the expected agreement of two predictions: the probability that classes drawn from the two softmax
    vectors are equal. The score is in [0, 1] and, unlike ``matches``, credits a confident near miss
    and discounts a confident-looking match the networks were unsure of.
``embedding``
    ``max_j cos(e_i, e_j)``: cosine similarity to the *nearest* profile image (max, not mean, so a
    user with two styles is served both instead of the average of them). In [-1, 1]; rounded to 6
    decimals, the resolution of the float32 product of a million embeddings.
``hybrid`` (the default)
    ``sum_c W_c z_c(i)`` over the components c = embedding, weighted, matches, a convex combination
    (``W_c >= 0``, sum 1) of the components standardised over the candidate items:
    ``z_c(i) = (s_c(i) - mean_c) / std_c`` with the mean and standard deviation taken over the items
    that may be recommended (after exclusions and filters); a constant component contributes 0. The
    ``matches`` component enters as ``sum_j sum_a [c_ia == c_ja] / (m A)`` (the mean share of matching
    attributes per profile row). Standardising makes ``W_c`` the share of each component in standard
    deviations, whatever its natural range (cosines of one domain span ~0.3, expected agreements ~1).
    Default weights (settings ``recommend.hybrid_weights``): embedding 0.7, weighted 0.2, matches 0.1.

Every kind except ``matches`` orders by its score (rounded to 1e-9, so float noise cannot reorder
equal scores) and then by item_id ascending: equal inputs always give the same list, in any row order.

Diversity: :func:`mmr` re-ranks the best ``pool`` candidates by maximal marginal relevance,
``lambda * rel(i) - (1 - lambda) * max(0, max_{s in selected} sim(i, s))``, with ``rel`` the relevance
scaled to [0, 1] over the pool and ``sim`` the embedding cosine (or, without embeddings, the share of
equal attribute classes). ``lambda = 1`` is the pure relevance order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCORE_KINDS = ("matches", "weighted", "embedding", "hybrid")
HYBRID_COMPONENTS = ("embedding", "weighted", "matches")
DEFAULT_HYBRID_WEIGHTS = {"embedding": 0.7, "weighted": 0.2, "matches": 0.1}  # settings recommend.hybrid_weights
ROUND_DECIMALS = 9
EMBEDDING_DECIMALS = 6
EMBEDDING_BLOCK_ROWS = 16384


class MissingVectors(ValueError):
    """A score needs probability vectors or embeddings that the repository or the profile lacks."""


# -- numeric fashion vectors --------------------------------------------------------------------------
@dataclass(frozen=True)
class FashionMatrix:
    """Fashion vectors of ``n`` images in numeric form.

    ``codes`` (n, A) int16: each attribute's class as its index in the taxonomy's class list, -1 for
    null or a class the taxonomy does not know. ``top_prob`` (n, A) float32: the predicted class's
    probability (``<attr>_prob``), 0 when null. ``probs``: per attribute an (n, C_a) float32 softmax
    matrix (``<attr>_probs``; a null row is all zeros), or None when the table has no such columns
    (or one of them is all null).
    ``embedding`` (n, D) float32 L2-normalised rows (a null is a zero row), or None.
    """

    attributes: tuple[str, ...]
    codes: np.ndarray
    top_prob: np.ndarray
    probs: tuple[np.ndarray, ...] | None
    embedding: np.ndarray | None

    @property
    def n(self) -> int:
        return int(self.codes.shape[0])

    def take(self, rows: np.ndarray | slice) -> FashionMatrix:
        return FashionMatrix(
            self.attributes,
            self.codes[rows],
            self.top_prob[rows],
            None if self.probs is None else tuple(p[rows] for p in self.probs),
            None if self.embedding is None else self.embedding[rows],
        )


@overload
def list_matrix(column: pa.ChunkedArray | pa.Array, width: int, name: str) -> np.ndarray: ...
@overload
def list_matrix(column: pa.ChunkedArray | pa.Array, width: None, name: str) -> np.ndarray | None: ...
def list_matrix(column: pa.ChunkedArray | pa.Array, width: int | None, name: str) -> np.ndarray | None:
    """A list<float> column as an (n, width) float32 matrix, filled chunk by chunk (one copy).

    ``width`` None: taken from the first non-null list. Null lists (and null values inside a list)
    become zeros; a list of another length raises ValueError. Returns None when ``width`` is None and
    every list is null.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    chunks = [c for c in chunks if len(c)]
    n = sum(len(c) for c in chunks)
    if (
        len(chunks) == 1
        and not chunks[0].null_count
        and (pa.types.is_list(chunks[0].type) or pa.types.is_large_list(chunks[0].type))
    ):
        # One chunk without nulls: a read-only view of Arrow's buffer (no copy: a million 2048-d rows
        # are 8 GB), after checking every list has the width.
        lengths = pc.list_value_length(chunks[0])
        width = int(lengths[0].as_py()) if width is None else width
        if pc.all(pc.equal(lengths, width)).as_py() and not chunks[0].flatten().null_count:
            values = chunks[0].flatten().to_numpy(zero_copy_only=False)
            return values.astype(np.float32, copy=False).reshape(n, width)
    out: np.ndarray | None = None
    if width is not None:
        out = np.zeros((n, width), dtype=np.float32)
    row = 0
    for chunk in chunks:
        if not len(chunk):
            continue
        if pa.types.is_fixed_size_list(chunk.type):
            chunk = chunk.cast(pa.list_(chunk.type.value_type))
        if not (pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type)):
            raise ValueError(f"column {name!r} must hold lists of floats, got {chunk.type}")
        lengths = pc.list_value_length(chunk)
        valid = pc.is_valid(chunk).to_numpy(zero_copy_only=False)
        if width is None:
            present = pc.drop_null(lengths)
            if not len(present):
                row += len(chunk)
                continue
            width = int(present[0].as_py())
            out = np.zeros((n, width), dtype=np.float32)
        wrong = pc.fill_null(pc.not_equal(lengths, width), False).to_numpy(zero_copy_only=False)
        if wrong.any():
            bad = int(np.flatnonzero(wrong)[0])
            raise ValueError(f"column {name!r}: row {row + bad} has {lengths[bad].as_py()} values, expected {width}")
        values = chunk.flatten()  # only valid lists' values, respecting slices
        if values.null_count:
            values = pc.fill_null(values, 0.0)
        block = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, width)
        assert out is not None
        if valid.all():
            out[row : row + len(chunk)] = block
        else:
            out[row : row + len(chunk)][valid] = block
        row += len(chunk)
    return out


def _normalise_rows(matrix: np.ndarray, check_only_sample: bool) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero). With ``check_only_sample``, a sample of rows
    is checked first and the matrix is returned as it is when they are unit already (the repository's
    embeddings are normalised at inference; renormalising a million rows would cost as much as scoring)."""
    if check_only_sample and len(matrix):
        sample = matrix[:: max(1, len(matrix) // 512)]
        norms = np.linalg.norm(sample, axis=1)
        if np.all((np.abs(norms - 1.0) < 1e-3) | (norms == 0)):
            return matrix
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))[:, None]  # no (n, d) temporary
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def fashion_matrix(
    table: pa.Table, taxonomy: Mapping[str, Sequence[str]], *, trust_unit_embeddings: bool = True
) -> FashionMatrix:
    """The numeric form of ``table``'s fashion-vector columns (``<attr>``, ``<attr>_prob``, optional
    ``<attr>_probs`` and ``embedding``) for the attributes of ``taxonomy`` (attribute -> class list)."""
    attributes = tuple(taxonomy)
    missing = [a for a in attributes if a not in table.column_names]
    if missing:
        raise ValueError(f"fashion vectors lack the class columns {missing}")
    n = table.num_rows
    codes = np.full((n, len(attributes)), -1, dtype=np.int16)
    top_prob = np.zeros((n, len(attributes)), dtype=np.float32)
    # Probability vectors count only when every attribute has some (a column of nulls is a vectorizer
    # or repository that does not produce them).
    has_probs = all(
        f"{a}_probs" in table.column_names and (not n or table[f"{a}_probs"].null_count < n) for a in attributes
    )
    probs: list[np.ndarray] = []
    for index, attribute in enumerate(attributes):
        classes = pa.array(list(taxonomy[attribute]), type=pa.string())
        found = pc.index_in(table[attribute].cast(pa.string()), value_set=classes)
        codes[:, index] = pc.fill_null(found, -1).to_numpy(zero_copy_only=False)
        if f"{attribute}_prob" in table.column_names:
            top_prob[:, index] = pc.fill_null(table[f"{attribute}_prob"].cast(pa.float32()), 0.0).to_numpy(
                zero_copy_only=False
            )
        if has_probs:
            probs.append(list_matrix(table[f"{attribute}_probs"], len(classes), f"{attribute}_probs"))
    embedding = None
    if "embedding" in table.column_names:
        embedding = list_matrix(table["embedding"], None, "embedding")
        if embedding is not None:
            embedding = _normalise_rows(embedding, check_only_sample=trust_unit_embeddings)
    return FashionMatrix(attributes, codes, top_prob, tuple(probs) if has_probs else None, embedding)


# -- the components -----------------------------------------------------------------------------------
@dataclass
class Components:
    """Score components of n items, each an (n,) array, None when not computed (not needed, or the
    vectors are missing).

    ``matches`` int64 (the seed score), ``best_row`` int64, ``attribute_hits`` (n, A) int64 (how many
    profile rows share the item's class of each attribute; ``matches == attribute_hits.sum(1)``),
    ``match_probability``, ``weighted``, ``embedding`` (max cosine), all float64 but the counts;
    ``profile_rows`` (m, the profile size).
    """

    matches: np.ndarray | None
    best_row: np.ndarray | None
    attribute_hits: np.ndarray | None
    match_probability: np.ndarray | None
    weighted: np.ndarray | None
    embedding: np.ndarray | None
    profile_rows: int

    @property
    def matches_share(self) -> np.ndarray | None:
        """``matches / (m A)``: the mean share of matching attributes per profile row, in [0, 1]."""
        if self.matches is None or self.attribute_hits is None:
            return None
        cells = max(1, self.profile_rows * self.attribute_hits.shape[1])
        return self.matches / cells


def attribute_hits(items: FashionMatrix, profile: FashionMatrix) -> np.ndarray:
    """(n, A): for each item and attribute, how many profile rows predict the item's class."""
    hits = np.zeros(items.codes.shape, dtype=np.int64)
    for a in range(len(items.attributes)):
        profile_codes = profile.codes[:, a]
        size = int(max(items.codes[:, a].max(initial=-1), profile_codes.max(initial=-1))) + 2
        counts = np.bincount(profile_codes[profile_codes >= 0], minlength=size)
        counts = np.append(counts, 0)  # index -1 (a null item class) reads this 0
        hits[:, a] = counts[items.codes[:, a]]
    return hits


def best_row_matches(items: FashionMatrix, profile: FashionMatrix) -> np.ndarray:
    """(n,): ``max_j sum_a [c_ia == c_ja]``, the matches with the best single profile image.

    Bit-packed: per attribute a lookup table maps a class to a 64-bit word holding, in one small
    field per profile row, 1 if that row predicts the class; the sum of the A looked-up words holds
    every row's match count (a field never overflows: it has room for A), and the best row is the
    largest field. Four gathers and a few shifts per item instead of an (n, m) comparison per attribute.
    """
    n, m, n_attributes = items.n, profile.n, len(items.attributes)
    if not m:
        return np.zeros(n, dtype=np.int64)
    bits = max(1, int(n_attributes).bit_length())
    per_word = 64 // bits
    best = np.zeros(n, dtype=np.int64)
    mask = np.uint64((1 << bits) - 1)
    for start in range(0, m, per_word):
        rows = range(start, min(m, start + per_word))
        packed = np.zeros(n, dtype=np.uint64)
        for a in range(n_attributes):
            item_codes = items.codes[:, a]
            size = int(max(item_codes.max(initial=-1), profile.codes[:, a].max(initial=-1))) + 2
            table = np.zeros(size, dtype=np.uint64)  # index -1 (null) is the last entry: 0
            for field, j in enumerate(rows):
                code = int(profile.codes[j, a])
                if code >= 0:
                    table[code] |= np.uint64(1 << (field * bits))
            packed += table[item_codes]
        for field in range(len(rows)):
            np.maximum(best, ((packed >> np.uint64(field * bits)) & mask).astype(np.int64), out=best)
    return best


def _row_max(matrix: np.ndarray) -> np.ndarray:
    """``matrix.max(axis=1)`` for a tall, narrow matrix, column by column (several times faster)."""
    return reduce(np.maximum, (matrix[:, j] for j in range(matrix.shape[1])))


def matching_probability(items: FashionMatrix, hits: np.ndarray) -> np.ndarray:
    """Mean predicted probability of the item's attributes that match some profile row (0 when none)."""
    matched = hits > 0
    count = matched.sum(axis=1)
    total = (items.top_prob.astype(np.float64) * matched).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def normalised_weights(attributes: Sequence[str], weights: Mapping[str, float] | None) -> np.ndarray:
    """Per-attribute weights (missing ones 1.0), non-negative, scaled to sum to 1."""
    weights = dict(weights or {})
    unknown = set(weights) - set(attributes)
    if unknown:
        raise ValueError(f"attribute weights for unknown attributes {sorted(unknown)}")
    values = np.array([float(weights.get(a, 1.0)) for a in attributes], dtype=np.float64)
    if (values < 0).any() or not np.isfinite(values).all() or values.sum() <= 0:
        raise ValueError(f"attribute weights must be finite, >= 0 and not all 0, got {weights}")
    return values / values.sum()


def weighted_scores(items: FashionMatrix, profile: FashionMatrix, weights: np.ndarray) -> np.ndarray:
    """``(1/m) sum_j sum_a w_a <p_ia, p_ja>`` = ``sum_a w_a <p_ia, mean_j p_ja>``: one matrix-vector
    product per attribute. ``weights`` as from :func:`normalised_weights`."""
    if not items.n:
        return np.zeros(0, dtype=np.float64)
    if items.probs is None or profile.probs is None:
        raise MissingVectors("the weighted score needs <attr>_probs columns in the repository and the profile")
    total = np.zeros(items.n, dtype=np.float64)
    if not profile.n:
        return total
    for weight, item_probs, profile_probs in zip(weights, items.probs, profile.probs):
        if weight:  # float64: equal inputs must give equal scores, whatever the row order
            total += weight * (item_probs.astype(np.float64) @ profile_probs.mean(axis=0, dtype=np.float64))
    return total


def _check_embeddings(items: FashionMatrix, profile: FashionMatrix) -> tuple[np.ndarray, np.ndarray]:
    """The items' and the profile's embeddings; raises :class:`MissingVectors` when either is missing
    or their dimensions differ."""
    if items.embedding is None or profile.embedding is None:
        raise MissingVectors("the embedding score needs an embedding column in the repository and the profile")
    if items.embedding.shape[1] != profile.embedding.shape[1]:
        raise MissingVectors(
            f"repository embeddings have {items.embedding.shape[1]} dimensions, the profile's "
            f"{profile.embedding.shape[1]}: they come from different networks (embedding_source)"
        )
    return items.embedding, profile.embedding


def embedding_scores(items: FashionMatrix, profile: FashionMatrix) -> np.ndarray:
    """``max_j cos(e_i, e_j)``: similarity to the nearest profile image, rounded to 6 decimals (the
    resolution of the float32 product, whose last bits may depend on the row's position in the batch)."""
    if not profile.n:
        return np.zeros(items.n, dtype=np.float64)
    if not items.n:
        return np.zeros(0, dtype=np.float64)
    item_embedding, profile_embedding = _check_embeddings(items, profile)
    # Blocks of rows: each block's (rows, m) product stays in cache and is reduced at once (a million
    # rows' full product would be a fresh 40 MB array); the pass is bound by reading the embeddings.
    profile_t = np.ascontiguousarray(profile_embedding.T)
    best = np.empty(items.n, dtype=np.float32)
    block = np.empty((EMBEDDING_BLOCK_ROWS, profile.n), dtype=np.float32)
    for start in range(0, items.n, EMBEDDING_BLOCK_ROWS):
        stop = min(items.n, start + EMBEDDING_BLOCK_ROWS)
        product = block[: stop - start]
        np.matmul(item_embedding[start:stop], profile_t, out=product)
        best[start:stop] = _row_max(product)
    return np.round(best.astype(np.float64), EMBEDDING_DECIMALS)


def components(
    items: FashionMatrix,
    profile: FashionMatrix,
    attribute_weights: Mapping[str, float] | None = None,
    need: Sequence[str] = SCORE_KINDS,
) -> Components:
    """The components the score kinds in ``need`` use, over every item; raises
    :class:`MissingVectors` when one cannot be computed. (``matches`` uses the counts, best row and
    match probability; ``hybrid`` the counts, weighted and embedding.)"""
    wanted = set(need)
    unknown = wanted - set(SCORE_KINDS)
    if unknown:
        raise ValueError(f"unknown score kinds {sorted(unknown)}; known: {SCORE_KINDS}")
    counts = bool(wanted & {"matches", "hybrid"})
    hits = attribute_hits(items, profile) if counts else None
    seed = "matches" in wanted  # implies counts, so hits is not None
    weighted = embedding = None
    if wanted & {"weighted", "hybrid"}:
        weighted = weighted_scores(items, profile, normalised_weights(items.attributes, attribute_weights))
    if wanted & {"embedding", "hybrid"}:
        embedding = embedding_scores(items, profile)
    return Components(
        matches=hits.sum(axis=1) if hits is not None else None,
        best_row=best_row_matches(items, profile) if seed else None,
        attribute_hits=hits,
        match_probability=matching_probability(items, hits) if seed and hits is not None else None,
        weighted=weighted,
        embedding=embedding,
        profile_rows=profile.n,
    )


def available_components(
    items: FashionMatrix, profile: FashionMatrix, attribute_weights: Mapping[str, float] | None = None
) -> Components:
    """Every component the vectors allow (for the few recommended items' output columns); never raises
    :class:`MissingVectors`."""
    need = ["matches"]
    if items.probs is not None and profile.probs is not None:
        need.append("weighted")
    if (
        items.embedding is not None
        and profile.embedding is not None
        and items.embedding.shape[1] == profile.embedding.shape[1]
    ):
        need.append("embedding")
    return components(items, profile, attribute_weights, need)


def normalised_hybrid_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """The hybrid's component weights (unlisted components 0), non-negative, scaled to sum to 1."""
    weights = dict(weights or DEFAULT_HYBRID_WEIGHTS)
    unknown = set(weights) - set(HYBRID_COMPONENTS)
    if unknown:
        raise ValueError(f"hybrid weights for unknown components {sorted(unknown)}; known: {HYBRID_COMPONENTS}")
    values = {c: float(weights.get(c, 0.0)) for c in HYBRID_COMPONENTS}
    total = sum(values.values())
    if any(v < 0 or not np.isfinite(v) for v in values.values()) or total <= 0:
        raise ValueError(f"hybrid weights must be finite, >= 0 and not all 0, got {weights}")
    return {c: v / total for c, v in values.items()}


def standardised(values: np.ndarray, over: np.ndarray) -> np.ndarray:
    """``(values - mean) / std`` with mean and std over the rows where ``over`` is True; 0 when constant."""
    sample = values[over].astype(np.float64)
    if not len(sample):
        return np.zeros(len(values), dtype=np.float64)
    std = float(sample.std())
    if std <= 1e-12:
        return np.zeros(len(values), dtype=np.float64)
    return (values.astype(np.float64) - float(sample.mean())) / std


def hybrid_scores(parts: Components, weights: Mapping[str, float], candidates: np.ndarray) -> np.ndarray:
    """``sum_c W_c z_c``, the components standardised over ``candidates`` (a boolean mask)."""
    weights = normalised_hybrid_weights(weights)
    values = {"embedding": parts.embedding, "weighted": parts.weighted, "matches": parts.matches_share}
    total = np.zeros(len(candidates), dtype=np.float64)
    for component, weight in weights.items():
        if not weight:
            continue
        value = values[component]
        if value is None:
            raise MissingVectors(f"the hybrid score's {component!r} component cannot be computed")
        total += weight * standardised(value, candidates)
    return total


def relevance(
    kind: str, parts: Components, candidates: np.ndarray, hybrid_weights: Mapping[str, float] | None = None
) -> list[np.ndarray]:
    """The ordering keys of ``kind``, most significant first, all descending (item_id ascending comes
    after them). The first key is the score reported for the kind."""
    if kind == "matches":
        if parts.matches is None or parts.best_row is None or parts.match_probability is None:
            raise ValueError("the matches ordering needs components computed with need=['matches']")
        return [parts.matches.astype(np.float64), parts.best_row.astype(np.float64), parts.match_probability]
    if kind == "weighted":
        if parts.weighted is None:
            raise MissingVectors("the weighted score needs <attr>_probs columns in the repository and the profile")
        return [parts.weighted]
    if kind == "embedding":
        if parts.embedding is None:
            raise MissingVectors("the embedding score needs an embedding column in the repository and the profile")
        return [parts.embedding.astype(np.float64)]
    if kind == "hybrid":
        return [hybrid_scores(parts, hybrid_weights or {}, candidates)]
    raise ValueError(f"unknown score kind {kind!r}; known: {SCORE_KINDS}")


# -- selection ----------------------------------------------------------------------------------------
def _string_ranks(values: Sequence[str] | pa.Array | np.ndarray) -> np.ndarray:
    """Ascending ranks of strings (ties share the rank of their first occurrence)."""
    array = pa.array(values, type=pa.string()) if not isinstance(values, (pa.Array, pa.ChunkedArray)) else values
    return pc.rank(pc.fill_null(array.cast(pa.string()), ""), sort_keys="ascending", tiebreaker="min").to_numpy()


def top_candidates(
    keys: Sequence[np.ndarray], item_ids: pa.Array | pa.ChunkedArray | Sequence[str], candidates: np.ndarray, n: int
) -> np.ndarray:
    """Indices of the best ``n`` candidate rows, best first: ``keys`` descending (rounded to 1e-9),
    then item_id ascending. The first key is narrowed with argpartition, so only the best rows and
    those tied with the n-th are sorted."""
    rows = np.flatnonzero(candidates)
    if n <= 0 or not len(rows):
        return np.zeros(0, dtype=np.int64)
    rounded = [np.round(key[rows].astype(np.float64), ROUND_DECIMALS) for key in keys]
    primary = rounded[0]
    if len(rows) > n:
        threshold = primary[np.argpartition(-primary, n - 1)[n - 1]]
        keep = primary >= threshold
        rows, rounded = rows[keep], [key[keep] for key in rounded]
    ids = (
        item_ids.take(pa.array(rows))
        if isinstance(item_ids, (pa.Array, pa.ChunkedArray))
        else [item_ids[int(i)] for i in rows]
    )
    order = np.lexsort((_string_ranks(ids), *[-key for key in reversed(rounded)]))
    return rows[order][:n]


def similarity_matrix(items: FashionMatrix) -> np.ndarray:
    """(n, n) item-item similarity for diversification: embedding cosine, or without embeddings the
    share of attributes whose (non-null) classes agree."""
    if items.embedding is not None:
        return items.embedding @ items.embedding.T
    codes = items.codes
    equal = (codes[:, None, :] == codes[None, :, :]) & (codes[:, None, :] >= 0)
    return equal.mean(axis=2)


def mmr(relevance_scores: np.ndarray, similarity: np.ndarray, k: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Maximal marginal relevance over a pool given best first: (picked positions, their MMR values).

    Greedy: pick ``argmax lam * rel(i) - (1 - lam) * max(0, max_{s in picked} sim(i, s))`` with ``rel``
    the pool's relevance scaled to [0, 1] (min-max; all 1 when constant); the first pick is the most
    relevant, and the picks' MMR values never increase. Ties go to the earlier (more relevant) pool
    position, so the result is deterministic. ``lam = 1`` returns the pool order.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"the MMR lambda must be in [0, 1], got {lam}")
    size = len(relevance_scores)
    k = min(k, size)
    rel = relevance_scores.astype(np.float64)
    spread = float(rel.max() - rel.min()) if size else 0.0
    rel = (rel - rel.min()) / spread if spread > 0 else np.ones(size)
    if lam >= 1.0:
        return np.arange(k), rel[:k]
    closest = np.zeros(size, dtype=np.float64)
    taken = np.zeros(size, dtype=bool)
    picked, values = [], []
    for _step in range(k):
        value = lam * rel - (1.0 - lam) * closest
        value = np.where(taken, -np.inf, value)
        best = int(np.argmax(value))
        picked.append(best)
        values.append(float(value[best]))
        taken[best] = True
        closest = np.maximum(closest, similarity[best])  # from 0: a negative cosine is no bonus
    return np.array(picked, dtype=np.int64), np.array(values, dtype=np.float64)


@dataclass(frozen=True)
class Selection:
    """The chosen rows in recommendation order, with their relevance score and MMR value."""

    rows: np.ndarray
    score: np.ndarray
    mmr_score: np.ndarray
    keys: list[np.ndarray]


@dataclass(frozen=True)
class SelectionRule:
    """How :func:`select` picks: the ``k`` best candidates by ``kind``'s relevance, or with
    ``mmr_lambda`` below 1 the best ``max(pool, k)`` re-ranked by :func:`mmr`; ``hybrid_weights``
    for the hybrid (None: :func:`normalised_hybrid_weights`'s)."""

    kind: str
    k: int
    mmr_lambda: float
    pool: int
    hybrid_weights: Mapping[str, float] | None = None


def select(
    rule: SelectionRule,
    items: FashionMatrix,
    parts: Components,
    item_ids: pa.Array | pa.ChunkedArray | Sequence[str],
    candidates: np.ndarray,
) -> Selection:
    """The ``rule.k`` recommendations among ``candidates`` (a boolean mask over items), picked as
    ``rule`` says."""
    k, mmr_lambda = rule.k, rule.mmr_lambda
    keys = relevance(rule.kind, parts, candidates, rule.hybrid_weights)
    best = top_candidates(keys, item_ids, candidates, k if mmr_lambda >= 1.0 else max(rule.pool, k))
    picked, values = mmr(
        keys[0][best],
        similarity_matrix(items.take(best)) if mmr_lambda < 1.0 and len(best) else np.zeros((0, 0)),
        k,
        mmr_lambda,
    )
    rows = best[picked]
    return Selection(rows=rows, score=keys[0][rows], mmr_score=values, keys=keys)


def nearest_profile_rows(items: FashionMatrix, profile: FashionMatrix) -> np.ndarray:
    """For each item, the profile row it resembles most: highest embedding cosine, or without
    embeddings the most matching attributes (first row on ties); -1 for an empty profile."""
    if not profile.n:
        return np.full(items.n, -1, dtype=np.int64)
    if (
        items.embedding is not None
        and profile.embedding is not None
        and items.embedding.shape[1] == profile.embedding.shape[1]
    ):
        return np.argmax(items.embedding @ profile.embedding.T, axis=1).astype(np.int64)
    per_row = np.zeros((items.n, profile.n), dtype=np.int64)
    for a in range(len(items.attributes)):
        per_row += (items.codes[:, a, None] == profile.codes[None, :, a]) & (items.codes[:, a, None] >= 0)
    return np.argmax(per_row, axis=1).astype(np.int64)


# -- many profiles at once ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ProfileBatch:
    """``U`` users' profiles stacked for one pass over the repository: the profile rows of user ``u``
    are ``offsets[u]:offsets[u + 1]`` of the stacked matrices.

    ``embedding_t`` (D, M) float32, every profile row's embedding as a column (None when a profile
    lacks embeddings); ``mean_probs`` per attribute (C_a, U) float64, each user's mean softmax vector
    (what :func:`weighted_scores` multiplies by); ``class_counts`` per attribute (U, C_a + 1) int64,
    how many of the user's rows predict each class (the last column, read by a null item class, 0);
    ``codes`` (M, A) the stacked class codes.
    """

    attributes: tuple[str, ...]
    offsets: np.ndarray
    codes: np.ndarray
    embedding_t: np.ndarray | None
    mean_probs: tuple[np.ndarray, ...] | None
    class_counts: tuple[np.ndarray, ...]

    @property
    def users(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def profile_batch(profiles: Sequence[FashionMatrix], taxonomy: Mapping[str, Sequence[str]]) -> ProfileBatch:
    """The profiles (each with at least one row) stacked; embeddings and mean probabilities only when
    every profile has them."""
    if not profiles or any(p.n == 0 for p in profiles):
        raise ValueError("a profile batch needs at least one profile, each with at least one row")
    attributes = profiles[0].attributes
    offsets = np.concatenate([[0], np.cumsum([p.n for p in profiles])]).astype(np.int64)
    codes = np.concatenate([p.codes for p in profiles])
    embedding_t = None
    embeddings = [p.embedding for p in profiles if p.embedding is not None]
    if len(embeddings) == len(profiles) and len({e.shape[1] for e in embeddings}) == 1:
        embedding_t = np.ascontiguousarray(np.concatenate(embeddings).T)
    mean_probs = None
    probs = [p.probs for p in profiles if p.probs is not None]
    if len(probs) == len(profiles):
        mean_probs = tuple(
            np.stack([profile_probs[a].mean(axis=0, dtype=np.float64) for profile_probs in probs], axis=1)
            for a in range(len(attributes))
        )
    counts = []
    for a, attribute in enumerate(attributes):
        size = len(taxonomy[attribute]) + 1
        table = np.zeros((len(profiles), size), dtype=np.int64)
        for u, p in enumerate(profiles):
            known = p.codes[:, a][p.codes[:, a] >= 0]
            table[u, : size - 1] = np.bincount(known, minlength=size - 1)[: size - 1]
        counts.append(table)
    return ProfileBatch(attributes, offsets, codes, embedding_t, mean_probs, tuple(counts))


@dataclass
class BatchComponents:
    """:class:`Components` of ``n`` items for ``U`` users: each an (n, U) array (None when not needed),
    computed exactly as the one-user functions compute them."""

    matches: np.ndarray | None
    best_row: np.ndarray | None
    match_probability: np.ndarray | None
    weighted: np.ndarray | None
    embedding: np.ndarray | None
    profile_rows: np.ndarray

    def matches_share(self, attributes: int) -> np.ndarray:
        return self.matches / np.maximum(1, self.profile_rows * attributes)[None, :]


def batch_embedding_scores(items: FashionMatrix, batch: ProfileBatch) -> np.ndarray:
    """(n, U) ``max_j cos(e_i, e_j)`` over each user's rows, rounded as :func:`embedding_scores`: one
    (n, M) float32 matrix product for all users' photos, reduced per user segment."""
    if batch.embedding_t is None or items.embedding is None:
        raise MissingVectors("the embedding score needs an embedding column in the repository and the profile")
    if items.embedding.shape[1] != batch.embedding_t.shape[0]:
        raise MissingVectors(
            f"repository embeddings have {items.embedding.shape[1]} dimensions, the profile's "
            f"{batch.embedding_t.shape[0]}: they come from different networks (embedding_source)"
        )
    product = items.embedding @ batch.embedding_t
    best = np.maximum.reduceat(product, batch.offsets[:-1], axis=1)
    return np.round(best.astype(np.float64), EMBEDDING_DECIMALS)


def batch_components(
    items: FashionMatrix, batch: ProfileBatch, attribute_weights: np.ndarray, need: Sequence[str]
) -> BatchComponents:
    """The components ``need`` (score kinds) uses, for every (item, user) pair; ``attribute_weights``
    as from :func:`normalised_weights`. Keep ``items.n x M`` small (a block of rows): the embedding
    product is that big."""
    wanted = set(need)
    n, users = items.n, batch.users
    counts = bool(wanted & {"matches", "hybrid"})
    seed = "matches" in wanted
    matches = best_row = match_probability = weighted = embedding = None
    if counts:
        matches = np.zeros((n, users), dtype=np.int64)
        matched_count = np.zeros((n, users), dtype=np.int64) if seed else None
        matched_total = np.zeros((n, users), dtype=np.float64) if seed else None
        for a in range(len(batch.attributes)):
            item_codes = items.codes[:, a]  # -1 (null) reads the last, zero column
            hits = batch.class_counts[a][:, item_codes].T
            matches += hits
            if matched_count is not None and matched_total is not None:  # seed
                matched = hits > 0
                matched_count += matched
                matched_total += items.top_prob[:, a].astype(np.float64)[:, None] * matched
        if matched_count is not None and matched_total is not None:  # seed
            match_probability = np.where(matched_count > 0, matched_total / np.maximum(matched_count, 1), 0.0)
    if seed:
        per_row = np.zeros((n, len(batch.codes)), dtype=np.int8)
        for a in range(len(batch.attributes)):
            per_row += (items.codes[:, a, None] == batch.codes[None, :, a]) & (items.codes[:, a, None] >= 0)
        best_row = np.maximum.reduceat(per_row, batch.offsets[:-1], axis=1).astype(np.int64)
    if wanted & {"weighted", "hybrid"}:
        if items.probs is None or batch.mean_probs is None:
            raise MissingVectors("the weighted score needs <attr>_probs columns in the repository and the profile")
        weighted = np.zeros((n, users), dtype=np.float64)
        for weight, item_probs, mean in zip(attribute_weights, items.probs, batch.mean_probs):
            if weight:
                weighted += weight * (item_probs.astype(np.float64) @ mean)
    if wanted & {"embedding", "hybrid"}:
        embedding = batch_embedding_scores(items, batch)
    return BatchComponents(matches, best_row, match_probability, weighted, embedding, batch.sizes)
