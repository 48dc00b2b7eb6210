"""The project's configuration, read once from ``config/`` and the environment.

Every module takes its settings from :func:`get_settings`; nothing else reads the config files or the
``FASHIONNET_*`` environment variables.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "config"


@dataclass(frozen=True)
class Taxonomy:
    """Attributes in training order, each with its ordered class names."""

    attributes: dict[str, tuple[str, ...]]

    @property
    def names(self) -> list[str]:
        return list(self.attributes)

    def classes(self, attribute: str) -> tuple[str, ...]:
        try:
            return self.attributes[attribute]
        except KeyError:
            raise KeyError(f"unknown attribute {attribute!r}; the taxonomy has {self.names}") from None


@dataclass(frozen=True)
class Settings:
    store_uri: str
    s3_endpoint_url: str | None
    taxonomy: Taxonomy
    retailers: dict[str, dict[str, Any]]
    crawl: dict[str, Any]
    curation: dict[str, Any]
    split: dict[str, Any]
    training: dict[str, Any]
    recommend: dict[str, Any]
    review: dict[str, Any] = field(default_factory=dict)
    repository: dict[str, Any] = field(default_factory=dict)

    def search_query(self, class_name: str) -> str:
        """The first configured search phrase for ``class_name`` (see :func:`search_queries`)."""
        return search_queries(self.crawl, class_name)[0]


def search_queries(crawl: dict[str, Any], class_name: str) -> list[str]:
    """The search phrases for ``class_name``: ``crawl.search_queries[class]`` as a string or a list,
    else the class name itself (hyphens as spaces). Blank and repeated entries are dropped."""
    configured = (crawl.get("search_queries") or {}).get(class_name)
    if configured is None:
        return [class_name.replace("-", " ")]
    values = [configured] if isinstance(configured, str) else configured
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"crawl.search_queries.{class_name} must be a string or a list of strings, got {configured!r}")
    queries = list(dict.fromkeys(v.strip() for v in values if v.strip()))
    if not queries:
        raise ValueError(f"crawl.search_queries.{class_name} has no query")
    return queries


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_taxonomy(path: Path) -> Taxonomy:
    raw = yaml.safe_load(path.read_text())
    attributes = raw.get("attributes") if isinstance(raw, dict) else None
    if not isinstance(attributes, dict) or not attributes:
        raise ValueError(f"{path}: expected a mapping 'attributes: {{name: [classes...]}}'")
    parsed: dict[str, tuple[str, ...]] = {}
    for name, classes in attributes.items():
        if not isinstance(classes, list) or len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"{path}: attribute {name!r} needs a list of at least 2 distinct classes")
        parsed[str(name)] = tuple(str(c) for c in classes)
    return Taxonomy(parsed)


def resolve_store_uri(uri: str) -> str:
    """Make a relative ``file://`` URI absolute against the repository root."""
    if uri.startswith("file://"):
        path = Path(uri[len("file://"):])
        if not path.is_absolute():
            path = REPO_ROOT / path
        return "file://" + str(path)
    if "://" not in uri:
        return resolve_store_uri("file://" + uri)
    return uri


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    raw = yaml.safe_load((CONFIG_DIR / "settings.yaml").read_text())
    profile = env.get("FASHIONNET_PROFILE")
    if profile:
        profile_path = CONFIG_DIR / "profiles" / f"{profile}.yaml"
        if not profile_path.exists():
            raise ValueError(f"FASHIONNET_PROFILE={profile!r}: no file {profile_path}")
        raw = deep_merge(raw, yaml.safe_load(profile_path.read_text()) or {})
    retailers = raw.get("retailers", {})
    if env.get("FASHIONNET_SHOP_URL") and "demo-store" in retailers:
        retailers["demo-store"]["base_url"] = env["FASHIONNET_SHOP_URL"].rstrip("/")
    return Settings(
        store_uri=resolve_store_uri(env.get("FASHIONNET_STORE") or raw["store"]),
        s3_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
        taxonomy=load_taxonomy(Path(env.get("FASHIONNET_TAXONOMY", CONFIG_DIR / "taxonomy.yaml"))),
        retailers=retailers,
        crawl=raw.get("crawl", {}),
        curation=raw.get("curation", {}),
        split=raw.get("split", {}),
        training=raw.get("training", {}),
        recommend=raw.get("recommend", {}),
        review=raw.get("review", {}),
        repository=raw.get("repository", {}),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; tests call ``get_settings.cache_clear()``)."""
    return load_settings()
