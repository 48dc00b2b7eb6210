"""The scores, top-k selection and MMR of pipeline.recommend.scoring, on small hand-made fashion vectors."""

import numpy as np
import pyarrow as pa
import pytest

from pipeline.recommend import scoring
from pipeline.recommend.scoring import (
    FashionMatrix,
    MissingVectors,
    SelectionRule,
    components,
    fashion_matrix,
    hybrid_scores,
    list_matrix,
    mmr,
    normalised_hybrid_weights,
    normalised_weights,
    select,
    standardised,
    top_candidates,
)

TAXONOMY = {"pattern": ("checkered", "striped", "floral"), "shape": ("full-sleeve", "half-sleeve")}


def one_hot(attribute: str, cls: str | None, confidence: float = 1.0) -> list[float] | None:
    if cls is None:
        return None
    classes = TAXONOMY[attribute]
    rest = (1.0 - confidence) / (len(classes) - 1)
    return [confidence if c == cls else rest for c in classes]


def table(rows: list[dict], embeddings: bool = True, probs: bool = True) -> pa.Table:
    """rows: {"pattern", "shape", optional "conf" (softmax confidence), "emb" (list)}."""
    columns: dict[str, list] = {"item_id": [r.get("id", f"i{n}") for n, r in enumerate(rows)]}
    for attribute in TAXONOMY:
        columns[attribute] = [r[attribute] for r in rows]
        columns[f"{attribute}_prob"] = [r.get("conf", 1.0) for r in rows]
        if probs:
            columns[f"{attribute}_probs"] = pa.array(
                [one_hot(attribute, r[attribute], r.get("conf", 1.0)) for r in rows], type=pa.list_(pa.float32())
            )
    if embeddings:
        columns["embedding"] = pa.array([r.get("emb") for r in rows], type=pa.list_(pa.float32()))
    return pa.table(columns)


def unit(*values: float) -> list[float]:
    vector = np.array(values, dtype=np.float64)
    return (vector / np.linalg.norm(vector)).tolist()


# -- conversion -----------------------------------------------------------------------------------------
def test_fashion_matrix_codes_probs_and_embeddings():
    rows = [
        {"pattern": "floral", "shape": "half-sleeve", "conf": 0.8, "emb": unit(3, 4)},
        {"pattern": None, "shape": "full-sleeve", "emb": None},
        {"pattern": "polka", "shape": None, "emb": [0.0, 2.0]},
    ]  # unknown class; unnormalised embedding
    matrix = fashion_matrix(table(rows), TAXONOMY, trust_unit_embeddings=False)
    assert matrix.codes.tolist() == [[2, 1], [-1, 0], [-1, -1]]
    assert matrix.probs[0][0] == pytest.approx([0.1, 0.1, 0.8])
    assert matrix.probs[0][1].tolist() == [0, 0, 0]  # null class, null probs: zeros
    assert np.allclose(matrix.embedding, [[0.6, 0.8], [0.0, 0.0], [0.0, 1.0]])
    assert matrix.top_prob[:, 0] == pytest.approx([0.8, 1.0, 1.0])


def test_fashion_matrix_without_optional_columns():
    matrix = fashion_matrix(table([{"pattern": "floral", "shape": None}], embeddings=False, probs=False), TAXONOMY)
    assert matrix.probs is None and matrix.embedding is None
    with pytest.raises(ValueError, match="lack the class columns"):
        fashion_matrix(pa.table({"pattern": ["floral"]}), TAXONOMY)


def test_list_matrix_over_chunks_slices_and_bad_lengths():
    column = pa.chunked_array(
        [
            pa.array([[1, 2], None], pa.list_(pa.float32())),
            pa.array([[0, 0], [3, 4], [5, 6]], pa.list_(pa.float32())).slice(1),
        ]
    )
    assert list_matrix(column, None, "e").tolist() == [[1, 2], [0, 0], [3, 4], [5, 6]]
    assert list_matrix(pa.chunked_array([pa.array([None], pa.list_(pa.float32()))]), None, "e") is None
    with pytest.raises(ValueError, match="row 1 has 3 values, expected 2"):
        list_matrix(pa.array([[1, 2], [1, 2, 3]], pa.list_(pa.float32())), 2, "e")
    fixed = pa.array([[1, 2]], pa.list_(pa.float32(), 2))
    assert list_matrix(fixed, 2, "e").tolist() == [[1, 2]]


# -- components -----------------------------------------------------------------------------------------
PROFILE = [
    {"pattern": "striped", "shape": "half-sleeve", "emb": unit(1, 0, 0)},
    {"pattern": "striped", "shape": "full-sleeve", "emb": unit(0, 1, 0)},
]


def test_matches_weighted_and_embedding_exact_numbers():
    items = [
        {"pattern": "striped", "shape": "half-sleeve", "emb": unit(1, 0, 0)},  # 2+1, best 2
        {"pattern": "floral", "shape": "full-sleeve", "emb": unit(1, 1, 0)},  # 0+1, best 1
        {"pattern": "striped", "shape": "half-sleeve", "conf": 0.5, "emb": unit(0, 0, 1)},
        {"pattern": None, "shape": None, "emb": None},
    ]
    profile, repository = fashion_matrix(table(PROFILE), TAXONOMY), fashion_matrix(table(items), TAXONOMY)
    parts = components(repository, profile, {"pattern": 3, "shape": 1})
    assert parts.matches.tolist() == [3, 1, 3, 0]
    assert parts.best_row.tolist() == [2, 1, 2, 0]
    assert parts.attribute_hits.tolist() == [[2, 1], [0, 1], [2, 1], [0, 0]]
    assert parts.matches_share.tolist() == pytest.approx([0.75, 0.25, 0.75, 0])
    # weighted = sum_a w_a <p_item, mean_j p_profile>; w = (0.75, 0.25); profile shape mean = (0.5, 0.5)
    assert parts.weighted.tolist() == pytest.approx(
        [0.75 * 1 + 0.25 * 0.5, 0.75 * 0 + 0.25 * 0.5, 0.75 * 0.5 + 0.25 * 0.5, 0.0]
    )
    assert parts.embedding.tolist() == pytest.approx([1.0, np.sqrt(0.5), 0.0, 0.0], abs=1e-6)
    assert parts.match_probability.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0])


def test_weighted_is_expected_agreement():
    """<p, q> is the probability that classes drawn from the two predictions agree."""
    profile = fashion_matrix(table([{"pattern": "striped", "shape": "half-sleeve", "conf": 0.6}]), TAXONOMY)
    item = fashion_matrix(table([{"pattern": "striped", "shape": "half-sleeve", "conf": 0.9}]), TAXONOMY)
    expected_pattern = 0.9 * 0.6 + 2 * 0.05 * 0.2
    expected_shape = 0.9 * 0.6 + 0.1 * 0.4
    weights = normalised_weights(["pattern", "shape"], None)
    assert scoring.weighted_scores(item, profile, weights)[0] == pytest.approx((expected_pattern + expected_shape) / 2)


def test_embedding_is_the_nearest_profile_image_not_the_mean():
    profile = fashion_matrix(table(PROFILE), TAXONOMY)  # two "styles": x and y
    items = fashion_matrix(
        table(
            [
                {"pattern": None, "shape": None, "emb": unit(0, 1, 0)},
                {"pattern": None, "shape": None, "emb": unit(1, 1, 0.3)},
            ]
        ),
        TAXONOMY,
    )
    scores = components(items, profile, need=["embedding"]).embedding
    assert scores[0] == pytest.approx(1.0) and scores[0] > scores[1]


def test_missing_vectors_are_reported_only_when_needed():
    profile = fashion_matrix(table(PROFILE, embeddings=False, probs=False), TAXONOMY)
    items = fashion_matrix(table([{"pattern": "striped", "shape": None}], embeddings=False, probs=False), TAXONOMY)
    parts = components(items, profile, need=["matches"])
    assert parts.weighted is None and parts.embedding is None and parts.matches.tolist() == [2]
    for kind in ("weighted", "embedding", "hybrid"):
        with pytest.raises(MissingVectors):
            components(items, profile, need=[kind])
    other = fashion_matrix(table([{"pattern": "striped", "shape": None, "emb": [1.0, 0.0]}]), TAXONOMY)
    with pytest.raises(MissingVectors, match="different networks"):
        components(other, fashion_matrix(table(PROFILE), TAXONOMY), need=["embedding"])


def test_weights_are_validated_and_normalised():
    assert normalised_weights(["pattern", "shape"], {"pattern": 3}).tolist() == [0.75, 0.25]
    assert normalised_hybrid_weights({"embedding": 2, "weighted": 2}) == {
        "embedding": 0.5,
        "weighted": 0.5,
        "matches": 0,
    }
    assert sum(normalised_hybrid_weights(None).values()) == pytest.approx(1.0)
    for bad in ({"pattern": -1}, {"colour": 1}, {"pattern": 0, "shape": 0}):
        with pytest.raises(ValueError):
            normalised_weights(["pattern", "shape"], bad)
    with pytest.raises(ValueError, match="unknown components"):
        normalised_hybrid_weights({"price": 1})


def test_hybrid_is_a_convex_combination_of_standardised_components():
    items = [
        {"pattern": "striped", "shape": "half-sleeve", "emb": unit(1, 0, 0)},
        {"pattern": "floral", "shape": "full-sleeve", "emb": unit(1, 1, 0)},
        {"pattern": "striped", "shape": "full-sleeve", "conf": 0.5, "emb": unit(0, 0, 1)},
        {"pattern": "checkered", "shape": "half-sleeve", "emb": unit(0, 1, 1)},
    ]
    parts = components(fashion_matrix(table(items), TAXONOMY), fashion_matrix(table(PROFILE), TAXONOMY))
    everything = np.ones(4, dtype=bool)
    weights = {"embedding": 0.5, "weighted": 0.3, "matches": 0.2}
    expected = sum(
        w * (v - v.mean()) / v.std()
        for w, v in [(0.5, parts.embedding.astype(float)), (0.3, parts.weighted), (0.2, parts.matches_share)]
    )
    assert hybrid_scores(parts, weights, everything) == pytest.approx(expected)
    # standardised over the candidates only; a constant component adds nothing
    assert standardised(np.array([1.0, 2.0, 3.0, 100.0]), np.array([True, True, True, False]))[:3] == pytest.approx(
        [-1.2247449, 0, 1.2247449]
    )
    assert standardised(np.array([2.0, 2.0]), np.array([True, True])).tolist() == [0, 0]
    only_matches = hybrid_scores(parts, {"matches": 1}, everything)
    assert np.argsort(-only_matches, kind="stable").tolist() == np.argsort(-parts.matches, kind="stable").tolist()


# -- selection -------------------------------------------------------------------------------------------
def test_top_candidates_orders_by_keys_then_item_id_and_keeps_threshold_ties():
    primary = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 2.0])
    secondary = np.array([0.0, 1.0, 5.0, 1.0, 1.0, 5.0])
    ids = ["f", "e", "d", "c", "b", "a"]
    everyone = np.ones(6, dtype=bool)
    assert top_candidates([primary, secondary], ids, everyone, 6).tolist() == [3, 1, 5, 2, 4, 0]
    # n = 3 cuts inside the three-way tie at 2.0: the tie is resolved by the keys, not by partition order
    assert top_candidates([primary, secondary], ids, everyone, 3).tolist() == [3, 1, 5]
    assert top_candidates([primary], pa.array(ids), everyone, 4).tolist() == [3, 1, 5, 4]
    assert top_candidates([primary], ids, np.array([1, 0, 1, 0, 0, 0], dtype=bool), 5).tolist() == [2, 0]
    assert top_candidates([primary], ids, everyone, 0).tolist() == []


def test_float_noise_does_not_reorder_equal_scores():
    primary = np.array([0.3, 0.1 + 0.2])  # 0.3 vs 0.30000000000000004
    assert top_candidates([primary], ["b", "a"], np.ones(2, dtype=bool), 2).tolist() == [1, 0]


def test_selection_is_the_same_for_any_row_order():
    rng = np.random.default_rng(3)
    rows = [
        {
            "id": f"item-{n:03d}",
            "pattern": str(rng.choice(TAXONOMY["pattern"])),
            "shape": str(rng.choice(TAXONOMY["shape"])),
            "conf": float(rng.choice([0.6, 0.9])),
            "emb": unit(*rng.integers(0, 3, 3).astype(float) + 0.01),
        }
        for n in range(60)
    ]
    profile = fashion_matrix(table(PROFILE), TAXONOMY)
    results = {}
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(rows))
        shuffled = table([rows[i] for i in order])
        items = fashion_matrix(shuffled, TAXONOMY)
        parts = components(items, profile)
        for kind in scoring.SCORE_KINDS:
            for lam in (1.0, 0.5):
                chosen = select(
                    SelectionRule(kind, 10, lam, 30), items, parts, shuffled["item_id"], np.ones(len(rows), dtype=bool)
                )
                ids = shuffled["item_id"].take(pa.array(chosen.rows)).to_pylist()
                assert results.setdefault((kind, lam), ids) == ids, (kind, lam, seed)


def test_mmr_trades_relevance_for_diversity():
    relevance = np.array([1.0, 0.95, 0.9, 0.2])
    similarity = np.array([[1, 0.99, 0.1, 0.0], [0.99, 1, 0.1, 0.0], [0.1, 0.1, 1, 0.0], [0, 0, 0, 1.0]])
    assert mmr(relevance, similarity, 3, 1.0)[0].tolist() == [0, 1, 2]
    picked, values = mmr(relevance, similarity, 3, 0.7)
    assert picked.tolist() == [0, 2, 1]  # the near-copy of the first pick waits
    assert values[0] == pytest.approx(0.7)
    assert mmr(relevance, similarity, 4, 0.0)[0].tolist()[:2] == [0, 3]
    assert mmr(relevance, similarity, 10, 0.5)[0].shape == (4,)
    with pytest.raises(ValueError, match="lambda"):
        mmr(relevance, similarity, 3, 1.5)


def test_mmr_without_embeddings_uses_attribute_agreement():
    items = fashion_matrix(
        table(
            [
                {"pattern": "striped", "shape": "half-sleeve"},
                {"pattern": "striped", "shape": "full-sleeve"},
                {"pattern": "floral", "shape": "full-sleeve"},
            ],
            embeddings=False,
        ),
        TAXONOMY,
    )
    assert scoring.similarity_matrix(items).tolist() == [[1, 0.5, 0], [0.5, 1, 0.5], [0, 0.5, 1]]


def test_select_diversifies_within_the_pool_and_reports_scores():
    items_rows = [
        {"id": "a", "pattern": "striped", "shape": "half-sleeve", "emb": unit(1, 0, 0)},
        {"id": "b", "pattern": "striped", "shape": "half-sleeve", "emb": unit(1, 0.01, 0)},
        {"id": "c", "pattern": "striped", "shape": "full-sleeve", "emb": unit(0, 1, 0)},
    ]
    items, profile = fashion_matrix(table(items_rows), TAXONOMY), fashion_matrix(table(PROFILE), TAXONOMY)
    parts = components(items, profile)
    everyone = np.ones(3, dtype=bool)
    plain = select(SelectionRule("matches", 2, 1.0, pool=200), items, parts, ["a", "b", "c"], everyone)
    assert plain.rows.tolist() == [0, 1] and plain.score.tolist() == [3, 3]
    diverse = select(SelectionRule("matches", 2, 0.3, pool=3), items, parts, ["a", "b", "c"], everyone)
    assert diverse.rows.tolist() == [0, 2]
    assert scoring.nearest_profile_rows(items, profile).tolist() == [0, 0, 1]


def test_empty_inputs():
    items = fashion_matrix(table([]), TAXONOMY)
    profile = fashion_matrix(table(PROFILE), TAXONOMY)
    parts = components(items, profile)
    for kind in scoring.SCORE_KINDS:
        assert (
            select(SelectionRule(kind, 5, 0.5, pool=200), items, parts, [], np.zeros(0, dtype=bool)).rows.tolist() == []
        )
    assert isinstance(items, FashionMatrix) and items.n == 0


@pytest.mark.parametrize("profile_size", [1, 7, 21, 22, 50])
def test_bit_packed_best_row_equals_the_plain_comparison(profile_size):
    rng = np.random.default_rng(profile_size)
    attributes = ("a", "b", "c", "d")

    def matrix(n):
        codes = rng.integers(-1, 4, (n, len(attributes))).astype(np.int16)
        return FashionMatrix(attributes, codes, np.ones(codes.shape, np.float32), None, None)

    items, profile = matrix(500), matrix(profile_size)
    plain = ((items.codes[:, None, :] == profile.codes[None, :, :]) & (items.codes[:, None, :] >= 0)).sum(2).max(1)
    assert scoring.best_row_matches(items, profile).tolist() == plain.tolist()
    hits = ((items.codes[:, None, :] == profile.codes[None, :, :]) & (items.codes[:, None, :] >= 0)).sum(1)
    assert scoring.attribute_hits(items, profile).tolist() == hits.tolist()


def test_a_single_chunk_becomes_a_view_and_other_layouts_a_copy():
    column = pa.chunked_array([pa.array([[1, 2], [3, 4]], pa.list_(pa.float32()))])
    view = list_matrix(column, None, "e")
    assert view.tolist() == [[1, 2], [3, 4]] and not view.flags.owndata
    assert list_matrix(pa.chunked_array([pa.array([[1, 2], [3, None]], pa.list_(pa.float32()))]), 2, "e").tolist() == [
        [1, 2],
        [3, 0],
    ]
    with pytest.raises(ValueError, match="expected 2"):
        list_matrix(pa.chunked_array([pa.array([[1, 2], [3]], pa.list_(pa.float32()))]), None, "e")


def test_blocked_embedding_scores_equal_the_full_product(monkeypatch):
    rng = np.random.default_rng(0)

    def matrix(n):
        emb = rng.standard_normal((n, 8)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        return FashionMatrix(("a",), np.zeros((n, 1), np.int16), np.ones((n, 1), np.float32), None, emb)

    items, profile = matrix(1000), matrix(3)
    monkeypatch.setattr(scoring, "EMBEDDING_BLOCK_ROWS", 64)  # 15 full blocks and a partial one
    expected = np.round((items.embedding @ profile.embedding.T).max(axis=1).astype(np.float64), 6)
    assert np.abs(scoring.embedding_scores(items, profile) - expected).max() <= 1e-6


def test_mmr_values_never_increase_even_with_negative_similarities():
    rng = np.random.default_rng(7)
    embedding = rng.standard_normal((40, 6))
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    relevance = np.sort(rng.random(40))[::-1]
    picked, values = mmr(relevance, embedding @ embedding.T, 15, 0.5)
    assert picked[0] == 0 and len(set(picked.tolist())) == 15
    assert np.all(np.diff(values) <= 1e-12)
