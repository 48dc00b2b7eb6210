"""The demo catalog: deterministic, uniform and independent labels, shop text that names them (mostly)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from fashionnet_tools.demo_store.catalog import ATTRIBUTES, NOISE_RATE, generate_catalog
from fashionnet_tools.demo_store.server import search_matches, words
from pipeline.settings import get_settings


def test_catalog_is_deterministic_per_seed():
    assert generate_catalog(50, seed=3) == generate_catalog(50, seed=3)
    assert generate_catalog(50, seed=3) != generate_catalog(50, seed=4)


def test_products_have_shop_fields_and_unique_skus():
    products = generate_catalog(120, seed=1)
    assert len({p.sku for p in products}) == 120
    assert len({p.image for p in products}) == 120
    for p in products:
        assert p.currency == "EUR" and 0 < p.price < 100 and p.title and p.description
        assert set(p.public()) == {"sku", "title", "description", "price", "currency", "category", "image"}
        for attribute in ATTRIBUTES:
            assert getattr(p, attribute) in get_settings().taxonomy.classes(attribute)


def test_labels_are_uniform_and_independent():
    products = generate_catalog(3000, seed=5)
    taxonomy = get_settings().taxonomy
    for attribute in ATTRIBUTES:
        counts = Counter(getattr(p, attribute) for p in products)
        expected = len(products) / len(taxonomy.classes(attribute))
        assert set(counts) == set(taxonomy.classes(attribute))
        assert all(abs(c - expected) < 0.2 * expected for c in counts.values()), (attribute, counts)
    # Independence: every pair of attributes has a joint table close to the product of its marginals.
    for a, b in itertools.combinations(ATTRIBUTES, 2):
        joint = Counter((getattr(p, a), getattr(p, b)) for p in products)
        expected = len(products) / (len(taxonomy.classes(a)) * len(taxonomy.classes(b)))
        assert len(joint) == len(taxonomy.classes(a)) * len(taxonomy.classes(b))
        assert all(abs(c - expected) < 0.45 * expected for c in joint.values()), (a, b, joint)


def _matching_classes(product, attribute: str) -> set[str]:
    settings = get_settings()
    public = product.public()
    return {c for c in settings.taxonomy.classes(attribute) if search_matches(public, settings.search_query(c))}


def test_faithful_products_are_found_by_exactly_their_own_class_queries():
    products = generate_catalog(400, seed=2)
    faithful = [p for p in products if not p.noise]
    assert faithful
    for p in faithful:
        for attribute in ATTRIBUTES:
            assert _matching_classes(p, attribute) == {getattr(p, attribute)}, (p.title, attribute)


def test_shape_words_follow_the_configured_search_queries():
    products = [p for p in generate_catalog(200, seed=9) if not p.noise]
    titles = {p.shape: p.title.lower() for p in products}
    assert "long sleeve" in titles["full-sleeve"]
    assert "short sleeve" in titles["half-sleeve"]
    assert "sleeveless" in titles["sleeveless"]
    assert "sleeve" not in words(titles["sleeveless"])


def test_a_seeded_share_of_products_has_noisy_text():
    products = generate_catalog(500, seed=8)
    noisy = [p for p in products if p.noise]
    assert len(noisy) == round(500 * NOISE_RATE)
    for p in noisy:
        # The noisy attribute's search no longer finds exactly the true class.
        assert _matching_classes(p, p.noise) != {getattr(p, p.noise)}, p
        others = [a for a in ATTRIBUTES if a != p.noise]
        assert all(_matching_classes(p, a) == {getattr(p, a)} for a in others), p


def test_negative_size_is_rejected():
    with pytest.raises(ValueError):
        generate_catalog(-1, seed=0)
