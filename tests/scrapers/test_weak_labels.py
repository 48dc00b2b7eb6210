"""Weak labels from material, name and description: the configured table and the matching rules."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.settings import get_settings
from scrapers.spiders.query import search_queries
from scrapers.weak_labels import WeakLabel, WeakLabeller, keyword_pattern


@pytest.fixture(scope="module")
def labeller() -> WeakLabeller:
    return WeakLabeller.from_settings()


def labels(labeller: WeakLabeller, **product: str) -> set[tuple[str, str, str]]:
    return {(w.attribute, w.label, w.source) for w in labeller.labels(product)}


@pytest.mark.parametrize(
    ("material", "label"),
    [
        ("100% Cotton", "cotton"),
        ("95% Baumwolle, 5% Elasthan", "cotton"),
        ("coton biologique", "cotton"),
        ("Algodón 100%", "cotton"),
        ("algodão", "cotton"),
        ("Chiffon", "chiffon"),
        ("Lace", "lace"),
        ("Dentelle", "lace"),
        ("Merino wool", "wool"),
        ("Wolle", "wool"),
        ("Silk", "silk"),
        ("Seide", "silk"),
        ("Soie", "silk"),
    ],
)
def test_material_to_fabric_with_the_material_as_source(labeller, material, label):
    assert labels(labeller, material=material) == {("fabric", label, f"material:{material}")}


def test_material_without_a_known_fabric_or_with_two_gives_no_fabric(labeller):
    assert labels(labeller, material="100% Polyester") == set()
    assert labels(labeller, material="70% wool, 30% silk") == set()


def test_material_wins_over_the_name(labeller):
    assert labels(labeller, material="Silk", title="Cotton-look top") == {("fabric", "silk", "material:Silk")}


@pytest.mark.parametrize(
    ("title", "label", "keyword"),
    [
        ("Striped Shirt", "striped", "striped"),
        ("Camisa de rayas", "striped", "rayas"),
        ("Pinstripe blazer", "striped", "pinstripe"),
        ("Gingham dress", "checkered", "gingham"),
        ("Plaid flannel shirt", "checkered", "plaid"),
        ("Check shirt", "checkered", "check"),
        ("Floral midi dress", "floral", "floral"),
        ("Flower print blouse", "floral", "flower"),
        ("Logo hoodie", "graphic", "logo"),
        ("Graphic tee", "graphic", "graphic"),
        ("Printed top", "graphic", "printed"),
        ("Plain crew neck", "solid", "plain"),
        ("T-SHIRT CÔTELÉ UNI", "solid", "uni"),
    ],
)
def test_name_to_pattern(labeller, title, label, keyword):
    assert ("pattern", label, f"name:{keyword}") in labels(labeller, title=title)


@pytest.mark.parametrize(
    ("title", "label", "keyword"),
    [
        ("Long sleeve top", "full-sleeve", "long sleeve"),
        ("Long-sleeved shirt", "full-sleeve", "long sleeved"),
        ("LONGSLEEVE", "full-sleeve", "long sleeve"),
        ("Short sleeve shirt", "half-sleeve", "short sleeve"),
        ("Basic T-shirt", "half-sleeve", "t-shirt"),
        ("Sleeveless top", "sleeveless", "sleeveless"),
        ("Tank top", "sleeveless", "tank"),
        ("Strappy dress", "sleeveless", "strappy"),
        ("Robe sans manches", "sleeveless", "sans manches"),
        ("Langarm-Shirt", "full-sleeve", "langarm"),
    ],
)
def test_name_to_shape(labeller, title, label, keyword):
    assert ("shape", label, f"name:{keyword}") in labels(labeller, title=title)


def test_word_boundaries(labeller):
    # "sleeve" alone is not a class; "sleeveless" must not also count as a "short sleeve"/"long sleeve" hit.
    assert labels(labeller, title="Sleeveless long top") == {("shape", "sleeveless", "name:sleeveless")}
    # "check" is not inside "checkout", "tee" not inside "teenager", "uni" not inside "unisex".
    assert labels(labeller, title="Checkout teenager unisex hoodie") == set()
    assert keyword_pattern("long sleeve").search("long-sleeve") and keyword_pattern("long sleeve").search("longsleeve")
    assert not keyword_pattern("sleeve").search("sleeveless")


def test_ignored_phrases(labeller):
    assert labels(labeller, title="Lace-up ankle boots") == set()
    assert labels(labeller, title="Lace up boots with lace trim") == {("fabric", "lace", "name:lace")}


def test_weak_keywords_only_when_no_keyword_hits(labeller):
    # A t-shirt is half-sleeve unless the name says otherwise; a floral print is floral, not graphic.
    assert ("shape", "full-sleeve", "name:long sleeve") in labels(labeller, title="Long sleeve T-shirt")
    assert ("pattern", "floral", "name:floral") in labels(labeller, title="Floral print dress")
    assert ("pattern", "graphic", "name:print") in labels(labeller, title="Print dress")


def test_conflicting_hits_give_no_label_and_the_name_decides_before_the_description(labeller):
    assert labels(labeller, title="Striped check shirt") == set()
    # The name has a conflict: the description is not consulted for that attribute.
    assert labels(labeller, title="Striped check shirt", description="A floral shirt") == set()
    # The name has no pattern word: the description decides.
    assert labels(labeller, title="Shirt", description="A floral shirt.") == {
        ("pattern", "floral", "description:floral")
    }


def test_labels_are_taxonomy_classes_with_sources(labeller):
    taxonomy = get_settings().taxonomy
    found = labeller.labels({"title": "Striped long sleeve cotton shirt", "material": "silk"})
    assert found == [
        WeakLabel("fabric", "silk", "material:silk"),
        WeakLabel("pattern", "striped", "name:striped"),
        WeakLabel("shape", "full-sleeve", "name:long sleeve"),
    ]
    assert all(w.label in taxonomy.classes(w.attribute) for w in found)


def test_table_is_validated_against_the_taxonomy():
    taxonomy = get_settings().taxonomy
    with pytest.raises(ValueError, match="not a class"):
        WeakLabeller({"keywords": {"pattern": {"polka": ["dots"]}}}, taxonomy)
    with pytest.raises(KeyError, match="unknown attribute"):
        WeakLabeller({"keywords": {"sleeves": {"long": ["long"]}}}, taxonomy)
    with pytest.raises(ValueError, match="list of keywords"):
        WeakLabeller({"keywords": {"pattern": {"striped": "stripe"}}}, taxonomy)
    with pytest.raises(ValueError, match="unknown fields"):
        WeakLabeller({"fields": {"pattern": ["sku"]}}, taxonomy)


def test_search_queries_string_list_or_default():
    crawl = dataclasses.replace(
        get_settings().crawl,
        search_queries={
            "striped": ["striped shirt", "striped dress", "striped shirt", " "],
            "full-sleeve": "long sleeve",
        },
    )
    assert search_queries(crawl, "striped") == ["striped shirt", "striped dress"]
    assert search_queries(crawl, "full-sleeve") == ["long sleeve"]
    assert search_queries(crawl, "half-sleeve") == ["half sleeve"]
    with pytest.raises(ValueError):
        search_queries(dataclasses.replace(crawl, search_queries={"striped": [3]}), "striped")
    with pytest.raises(ValueError):
        search_queries(dataclasses.replace(crawl, search_queries={"striped": []}), "striped")
