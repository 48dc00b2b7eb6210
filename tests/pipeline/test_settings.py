from pathlib import Path

import pytest

from pipeline.settings import REPO_ROOT, load_settings, load_taxonomy


def test_default_taxonomy_is_the_briefs():
    taxonomy = load_settings({}).taxonomy
    assert taxonomy.names == ["pattern", "fabric", "style", "shape"]
    assert taxonomy.classes("shape") == ("full-sleeve", "half-sleeve", "sleeveless")
    with pytest.raises(KeyError, match="unknown attribute 'colour'"):
        taxonomy.classes("colour")


def test_relative_file_store_is_under_the_repo():
    assert load_settings({}).store_uri == f"file://{REPO_ROOT / 'var/store'}"


def test_environment_overrides_store_endpoint_and_profile():
    settings = load_settings(
        {"FASHIONNET_STORE": "s3://bkt/p", "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "FASHIONNET_PROFILE": "demo"}
    )
    assert settings.store_uri == "s3://bkt/p"
    assert settings.s3_endpoint_url == "http://127.0.0.1:9"
    assert settings.training["backbone"] == "efficientnet_lite0" and settings.training["image_size"] == 128
    assert settings.training["dense_units"] == 512  # untouched keys survive the overlay


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="no file"):
        load_settings({"FASHIONNET_PROFILE": "nope"})


def test_bad_taxonomy_is_rejected(tmp_path: Path):
    bad = tmp_path / "t.yaml"
    bad.write_text("attributes:\n  pattern: [solid]\n")
    with pytest.raises(ValueError, match="at least 2 distinct classes"):
        load_taxonomy(bad)


def test_search_query_defaults_to_class_name():
    settings = load_settings({})
    assert settings.search_query("full-sleeve") == "long sleeve"
    assert settings.search_query("striped") == "striped"
