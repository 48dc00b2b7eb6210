"""The project's configuration, read once from ``config/`` and the environment.

Every module takes its settings from :func:`get_settings`; nothing else reads the config files or the
``FASHIONNET_*`` environment variables.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import os
import re
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


# -- typed sections -----------------------------------------------------------------------------------------
#: Where a settings error points the reader.
WHERE = "config/settings.yaml, or the FASHIONNET_PROFILE overlay"


class SettingsError(ValueError):
    """A key of the settings is unknown, missing or of the wrong type; the message names section and key."""


class MissingSettingError(SettingsError, KeyError):
    """A key every configuration must have is absent (a ValueError and, as a failed look-up, a KeyError)."""

    def __str__(self) -> str:  # KeyError's own str() is the repr of its argument
        return str(self.args[0])


@dataclass(frozen=True)
class Section:
    """A section of ``config/settings.yaml``: one field per key, no defaults (the YAML holds them); built and
    checked by :func:`build_section` when the settings load."""

    def as_dict(self) -> dict[str, Any]:
        """The section as the mapping the YAML gave (nested sections as mappings too)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ProductSpiderSettings(Section):
    """``crawl.product_spider``: the product spider on a listing page."""

    product_link_pattern: str
    pagination_pattern: str
    max_listing_pages: int


@dataclass(frozen=True)
class WeakLabelSettings(Section):
    """``crawl.weak_labels``: weak labels from a product's structured data (scrapers.weak_labels, which
    checks the classes against the taxonomy)."""

    fields: dict[str, list[str]]
    keywords: dict[str, dict[str, list[str]]]
    weak_keywords: dict[str, dict[str, list[str]]]
    ignore: dict[str, list[str]]
    in_query_spider: bool


@dataclass(frozen=True)
class CrawlSettings(Section):
    user_agent: str
    obey_robots_txt: bool
    concurrent_requests_per_domain: int
    download_delay_s: float
    autothrottle_start_delay_s: float
    log_level: str
    timeout_s: float
    timeout_grace_s: float
    max_failed_share: float
    max_page_bytes: int
    max_image_bytes: int
    concurrent_requests: int
    concurrent_items: int
    download_timeout_s: float
    retry_times: int
    retry_http_codes: list[int]
    retry_backoff_base_s: float
    retry_backoff_max_s: float
    images_min_width: int
    images_min_height: int
    incremental: bool
    shopify_max_pages: int
    shopify_max_bad_pages: int
    catalog_max_listing_pages: int
    query_max_result_pages: int
    max_listed_pages_without_product: int
    search_queries: dict[str, str | list[str]]
    product_spider: ProductSpiderSettings
    weak_labels: WeakLabelSettings


@dataclass(frozen=True)
class CurationSettings(Section):
    min_side_px: int
    max_aspect_ratio: float
    max_image_pixels: int
    blank_std_threshold: float
    phash_max_distance: int
    dhash_max_distance: int
    thumbnail_max_mad: float
    cross_run_kinds: list[str]
    review_policy: str


@dataclass(frozen=True)
class SplitSettings(Section):
    train: float
    validation: float
    test: float
    salt: str
    report_tolerance: float


@dataclass(frozen=True)
class TrainingSettings(Section):
    """``training``: the recipe models.train runs (:func:`validate_training` checks the values) and the
    publish step's ``promotion_tolerance`` (models.registry.promote)."""

    backbone: str
    weights: str | None
    image_size: int | dict[str, int]
    batch_size: int
    dense_units: int
    pooling: str
    dropout: float
    weight_decay: float
    label_smoothing: float
    lr_schedule: str
    warmup_epochs: int
    mirror_augment: bool
    unfreeze_from: str | dict[str, str]
    head_init: str
    image_fit: str
    probe: bool
    selection_margin: float
    mixed_precision: str
    augment_translation: float
    augment_zoom: float
    augment_brightness: float
    augment_contrast: float
    frozen_epochs: int
    unfrozen_epochs: int
    head_learning_rate: float
    finetune_learning_rate: float
    patience: int
    shared_backbone: bool
    promotion_tolerance: float
    seed: int

    def input_size(self) -> int:
        """``image_size`` for this section's backbone: the square side in pixels the network is trained on.

        Raises ValueError when a mapping does not name the backbone (there is no code default to fall
        back on: config/settings.yaml names the size of every backbone it lists)."""
        if not isinstance(self.image_size, dict):
            return int(self.image_size)
        try:
            return int(self.image_size[self.backbone])
        except KeyError:
            raise ValueError(
                f"training.image_size names no size for backbone {self.backbone!r} "
                f"(it has {sorted(self.image_size)}; config/settings.yaml)"
            ) from None

    def unfreeze_prefix(self) -> str:
        """``unfreeze_from`` for this section's backbone ("all" when a mapping does not name it)."""
        if isinstance(self.unfreeze_from, dict):
            return str(self.unfreeze_from.get(self.backbone, "all"))
        return str(self.unfreeze_from)


@dataclass(frozen=True)
class RecommendSettings(Section):
    k: int
    score: str
    hybrid_weights: dict[str, float]
    attribute_weights: dict[str, float]
    mmr_lambda: float
    mmr_pool: int
    users_per_task: int
    max_mapped_tasks: int
    max_users_per_task: int
    scoring_chunk_rows: int


@dataclass(frozen=True)
class RepositorySettings(Section):
    shard_size: int
    max_shards: int
    inference_batch_size: int
    row_group_rows: int
    max_file_rows: int


@dataclass(frozen=True)
class ReviewSettings(Section):
    page_url: str | None
    max_login_body_bytes: int
    max_body_bytes: int
    max_concurrent_password_checks: int
    max_password_checks_per_client: int
    password_check_wait_s: float
    free_login_failures: int
    login_delay_s: float
    login_max_delay_s: float
    login_failure_memory_s: float
    client_address_header: str | None


def _describe(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and not typing.get_args(tp):
        return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
            tp, "a mapping" if dataclasses.is_dataclass(tp) else tp.__name__
        )
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return f"a mapping of {_describe(args[0]).removeprefix('a ')} -> {_describe(args[1]).removeprefix('a ')}"
    return str(tp)


def _checked(value: Any, tp: Any, where: str) -> Any:
    """``value`` if it is of type ``tp`` (nested sections built, containers checked item by item); else a
    :class:`SettingsError` naming ``where``. An integer is a number (float); a boolean is neither."""
    if isinstance(tp, type) and issubclass(tp, Section):
        return build_section(tp, value, where)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    ok = True
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _checked(value, option, where)
            except SettingsError:
                continue
        ok = False
    elif origin is list:
        if isinstance(value, list):
            return [_checked(v, args[0], f"{where}[{n}]") for n, v in enumerate(value)]
        ok = False
    elif origin is dict:
        if isinstance(value, dict):
            return {_checked(k, args[0], where): _checked(v, args[1], f"{where}.{k}") for k, v in value.items()}
        ok = False
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp in (int, str):
        ok = isinstance(value, tp) and not isinstance(value, bool)
    else:  # pragma: no cover - a field type this checker does not know is a programming error
        raise TypeError(f"{where}: no check for the type {tp!r}")
    if not ok:
        raise SettingsError(f"{where}: needs {_describe(tp)}, got {value!r} ({WHERE})")
    return value


S = typing.TypeVar("S", bound=Section)


def build_section(cls: type[S], raw: Any, section: str) -> S:
    """The section ``cls`` from the mapping ``raw``: every field's key present, no other key, each value of
    its field's type. Raises :class:`SettingsError` (:class:`MissingSettingError` for absent keys) naming
    ``section`` and the key."""
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(raw, dict):
        raise SettingsError(f"{section}: needs a mapping, got {raw!r}; {section} has {', '.join(names)} ({WHERE})")
    unknown = sorted(set(raw) - set(names), key=str)
    if unknown:
        raise SettingsError(
            f"{section}.{unknown[0]}: unknown key (a typo?); {section} has {', '.join(names)} ({WHERE})"
        )
    missing = [name for name in names if name not in raw]
    if missing:
        raise MissingSettingError(
            f"{', '.join(f'{section}.{name}' for name in missing)}: missing; every key of {section} must be set"
            f" ({WHERE}: config/settings.yaml is the one home of the defaults)"
        )
    hints = typing.get_type_hints(cls)
    return cls(**{name: _checked(raw[name], hints[name], f"{section}.{name}") for name in names})


@dataclass(frozen=True)
class Settings:
    store_uri: str
    s3_endpoint_url: str | None
    taxonomy: Taxonomy
    #: Validated retailer entries, kept as mappings (:func:`validate_retailer`; the spiders read them so).
    retailers: dict[str, dict[str, Any]]
    crawl: CrawlSettings
    curation: CurationSettings
    split: SplitSettings
    training: TrainingSettings
    recommend: RecommendSettings
    review: ReviewSettings
    repository: RepositorySettings

    def search_query(self, class_name: str) -> str:
        """The first configured search phrase for ``class_name`` (see :func:`search_queries`)."""
        return search_queries(self.crawl, class_name)[0]


#: The top-level keys of config/settings.yaml: the store, the retailers and the typed sections.
SECTIONS: dict[str, type[Section]] = {
    "crawl": CrawlSettings,
    "curation": CurationSettings,
    "split": SplitSettings,
    "training": TrainingSettings,
    "recommend": RecommendSettings,
    "review": ReviewSettings,
    "repository": RepositorySettings,
}
TOP_LEVEL_KEYS = ("store", "retailers", *SECTIONS)


def search_queries(crawl: CrawlSettings, class_name: str) -> list[str]:
    """The search phrases for ``class_name``: ``crawl.search_queries[class]`` as a string or a list,
    else the class name itself (hyphens as spaces). Blank and repeated entries are dropped."""
    configured = crawl.search_queries.get(class_name)
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


# -- retailers ----------------------------------------------------------------------------------------------
RETAILER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
RETAILER_KINDS = ("demo", "sitemap", "listing", "urls", "shopify")
#: Kinds whose catalogue starts at entry points (urls: or at urls_file); demo and shopify start at base_url.
KINDS_WITH_ENTRY_POINTS = ("sitemap", "listing", "urls")
#: Every key of a retailer entry and its value when absent.
RETAILER_DEFAULTS: dict[str, Any] = {
    "kind": None,
    "base_url": None,
    "search_url": None,
    "entry_points": [],
    "urls_file": None,
    "url_pattern": None,
    "allowed_hosts": [],
    "crawl": {},
}
#: Optional keys read by single spiders (present only when set): product_link_css (the demo and query
#: spiders' product links), listing_link_css (the catalog spider), currency (shopify, when the store's
#: /meta.json does not say).
RETAILER_SPIDER_KEYS = ("product_link_css", "listing_link_css", "currency")
#: The top-level ``crawl:`` settings a retailer may override for its own crawls.
RETAILER_CRAWL_OVERRIDES: dict[str, type | tuple[type, ...]] = {
    "user_agent": str,
    "obey_robots_txt": bool,
    "concurrent_requests": int,
    "concurrent_requests_per_domain": int,
    "download_delay_s": (int, float),
    "autothrottle_start_delay_s": (int, float),
    "download_timeout_s": (int, float),
    "retry_times": int,
    "retry_backoff_base_s": (int, float),
    "retry_backoff_max_s": (int, float),
    "timeout_s": (int, float),
    "incremental": bool,
    "images_min_width": int,
    "images_min_height": int,
    "max_page_bytes": int,
    "max_image_bytes": int,
}
HOST_ENTRY = re.compile(
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?"
)
DEFAULT_PORTS = {"http": 80, "https": 443}


class RetailerConfigError(ValueError):
    """A retailer entry of the settings is wrong; the message names the retailer and the field."""

    def __init__(self, retailer: str, field_name: str, problem: str) -> None:
        super().__init__(f"retailers.{retailer}.{field_name}: {problem} (config/settings.yaml)")
        self.retailer, self.field = retailer, field_name


def site_of(url: str) -> tuple[str, int]:
    """(lower-case host without a leading "www.", port with the scheme's default filled in) of a URL."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    host = host[4:] if host.startswith("www.") else host
    return host, parts.port or DEFAULT_PORTS.get(parts.scheme, 0)


def _check_http_url(retailer: str, field_name: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s\x00-\x1f\x7f]+", value):
        raise RetailerConfigError(retailer, field_name, f"needs an absolute http:// or https:// URL, got {value!r}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as error:
        raise RetailerConfigError(retailer, field_name, f"{value!r} is not a valid URL: {error}") from None
    if not parts.hostname:
        raise RetailerConfigError(retailer, field_name, f"{value!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise RetailerConfigError(retailer, field_name, f"{value!r} carries credentials; a shop's pages are public")
    return value


def allowed_sites(entry: dict[str, Any]) -> set[tuple[str, int | None]]:
    """The (host, port) pairs a retailer's crawl may fetch: its base URL's site and its ``allowed_hosts``
    (port None: the default port of the URL's scheme)."""
    sites: set[tuple[str, int | None]] = {site_of(entry["base_url"])}
    for value in entry.get("allowed_hosts") or []:
        found = HOST_ENTRY.fullmatch(value)
        if found:
            host = found["host"].lower().strip("[]")
            sites.add((host[4:] if host.startswith("www.") else host, int(found["port"]) if found["port"] else None))
    return sites


def url_allowed(entry: dict[str, Any], url: str) -> bool:
    """Whether ``url`` is on the retailer's site or one of its allowed hosts (a validated entry)."""
    try:
        host, port = site_of(url)
        scheme = urlsplit(url).scheme
    except ValueError:
        return False
    sites = allowed_sites(entry)
    return bool(host) and ((host, port) in sites or (port == DEFAULT_PORTS.get(scheme) and (host, None) in sites))


def _check_allowed_host(retailer: str, value: Any) -> str:
    found = HOST_ENTRY.fullmatch(value) if isinstance(value, str) else None
    if not found or (found["port"] and not 0 < int(found["port"]) < 65536):
        raise RetailerConfigError(retailer, "allowed_hosts", f"{value!r} is not a host or host:port")
    host = found["host"].strip("[]")
    if found["host"].startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise RetailerConfigError(retailer, "allowed_hosts", f"{value!r} is not an IPv6 address") from None
    return value


def _check_crawl_overrides(retailer: str, overrides: Any, crawl: CrawlSettings | None) -> dict[str, Any]:
    if not isinstance(overrides, dict):
        raise RetailerConfigError(retailer, "crawl", f"needs a mapping of crawl settings, got {overrides!r}")
    for name, value in overrides.items():
        expected = RETAILER_CRAWL_OVERRIDES.get(name)
        if expected is None:
            raise RetailerConfigError(
                retailer,
                f"crawl.{name}",
                f"is not a crawl setting a retailer may override; known: {', '.join(sorted(RETAILER_CRAWL_OVERRIDES))}",
            )
        wrong_type = not isinstance(value, expected) or (expected is not bool and isinstance(value, bool))
        if (
            wrong_type
            or (not isinstance(value, (bool, str)) and value < 0)
            or (isinstance(value, str) and not value.strip())
        ):
            raise RetailerConfigError(
                retailer,
                f"crawl.{name}",
                f"needs a non-negative {getattr(expected, '__name__', 'number')}"
                f" like the top-level crawl.{name} ({getattr(crawl, name, None)!r}), got {value!r}",
            )
    return dict(overrides)


def validate_retailer(name: Any, entry: Any, crawl: CrawlSettings | None = None) -> dict[str, Any]:
    """One retailer entry, checked and completed with :data:`RETAILER_DEFAULTS` for absent keys.

    Raises :class:`RetailerConfigError` naming the retailer and the field: unknown keys, a bad ``kind``,
    a missing or ill-formed ``base_url``, entry points the kind requires (or must not have), entry points
    or a search page off the retailer's site and allowed hosts, a bad ``url_pattern`` regex, unknown
    ``crawl`` override names or values of the wrong type.
    """
    if not isinstance(name, str) or not RETAILER_NAME.fullmatch(name):
        raise RetailerConfigError(str(name), "name", f"a retailer name must match {RETAILER_NAME.pattern}")
    if not isinstance(entry, dict):
        raise RetailerConfigError(name, "entry", f"needs a mapping of {', '.join(RETAILER_DEFAULTS)}, got {entry!r}")
    unknown = sorted(set(entry) - set(RETAILER_DEFAULTS) - set(RETAILER_SPIDER_KEYS), key=str)
    if unknown:
        raise RetailerConfigError(
            name,
            str(unknown[0]),
            f"unknown key; a retailer has {', '.join([*RETAILER_DEFAULTS, *RETAILER_SPIDER_KEYS])}",
        )
    checked = {**copy.deepcopy(RETAILER_DEFAULTS), **{k: v for k, v in entry.items() if v is not None}}
    kind = checked["kind"]
    if kind not in RETAILER_KINDS:
        raise RetailerConfigError(name, "kind", f"must be one of {', '.join(RETAILER_KINDS)}, got {kind!r}")
    checked["base_url"] = _check_http_url(name, "base_url", checked["base_url"]).rstrip("/")
    if urlsplit(checked["base_url"]).query or urlsplit(checked["base_url"]).fragment:
        raise RetailerConfigError(
            name, "base_url", f"{checked['base_url']!r} has a query or fragment; give the shop's root"
        )
    hosts = checked["allowed_hosts"]
    if not isinstance(hosts, list):
        raise RetailerConfigError(name, "allowed_hosts", f"needs a list of hosts, got {hosts!r}")
    checked["allowed_hosts"] = [_check_allowed_host(name, h) for h in hosts]

    points = checked["entry_points"]
    if not isinstance(points, list):
        raise RetailerConfigError(name, "entry_points", f"needs a list of URLs, got {points!r}")
    for n, url in enumerate(points):
        _check_http_url(name, f"entry_points[{n}]", url)
        if not url_allowed(checked, url):
            raise RetailerConfigError(
                name,
                f"entry_points[{n}]",
                f"{url!r} is neither on the retailer's site ({checked['base_url']}) nor on one of its allowed_hosts",
            )
    urls_file = checked["urls_file"]
    if urls_file is not None and (kind != "urls" or not isinstance(urls_file, str) or not urls_file.strip()):
        raise RetailerConfigError(name, "urls_file", "is a file path, for kind urls only")
    if kind in ("sitemap", "listing") and len(points) != 1:
        # The product spider starts at one sitemap (a sitemap index lists the others) or one listing page.
        raise RetailerConfigError(
            name,
            "entry_points",
            f"kind {kind} needs exactly one {kind} URL (a sitemap index for several sitemaps), got {len(points)}",
        )
    if kind == "urls" and any("," in url for url in points):
        raise RetailerConfigError(name, "entry_points", "a product URL with a comma: list such URLs in a urls_file")
    if kind == "urls" and bool(points) == bool(urls_file):
        raise RetailerConfigError(
            name, "entry_points", "kind urls needs product URLs in entry_points or a urls_file (exactly one of them)"
        )
    if kind not in KINDS_WITH_ENTRY_POINTS and points:
        raise RetailerConfigError(name, "entry_points", f"kind {kind} starts at base_url and takes no entry points")

    pattern = checked["url_pattern"]
    if pattern is not None:
        if kind != "sitemap":
            raise RetailerConfigError(name, "url_pattern", "filters sitemap entries: kind sitemap only")
        try:
            re.compile(pattern)
        except (re.error, TypeError) as error:
            raise RetailerConfigError(
                name, "url_pattern", f"{pattern!r} is not a regular expression: {error}"
            ) from None

    search_url = checked["search_url"]
    if search_url is not None:
        if not isinstance(search_url, str) or "{query}" not in search_url:
            raise RetailerConfigError(name, "search_url", f"needs a URL template with {{query}}, got {search_url!r}")
        try:
            example = search_url.format(base_url=checked["base_url"], query="shirt")
        except (KeyError, IndexError, ValueError) as error:
            raise RetailerConfigError(
                name, "search_url", f"{search_url!r}: only {{base_url}} and {{query}} may be filled in ({error!r})"
            ) from None
        _check_http_url(name, "search_url", example)
        if not url_allowed(checked, example):
            raise RetailerConfigError(name, "search_url", f"{example!r} is off the retailer's site and allowed_hosts")
    for spider_key in RETAILER_SPIDER_KEYS:
        if spider_key in checked and (not isinstance(checked[spider_key], str) or not checked[spider_key].strip()):
            raise RetailerConfigError(name, spider_key, f"needs a non-empty string, got {checked[spider_key]!r}")
    checked["crawl"] = _check_crawl_overrides(name, checked["crawl"], crawl)
    return checked


def validate_retailers(retailers: Any, crawl: CrawlSettings | None = None) -> dict[str, dict[str, Any]]:
    """Every retailer entry of the settings, validated (:func:`validate_retailer`)."""
    if not isinstance(retailers, dict):
        raise ValueError(
            f"retailers: needs a mapping of retailer name -> entry, got {retailers!r} (config/settings.yaml)"
        )
    return {name: validate_retailer(name, entry, crawl) for name, entry in retailers.items()}


def resolve_store_uri(uri: str) -> str:
    """Make a relative ``file://`` URI absolute against the repository root."""
    if uri.startswith("file://"):
        path = Path(uri[len("file://") :])
        if not path.is_absolute():
            path = REPO_ROOT / path
        return "file://" + str(path)
    if "://" not in uri:
        return resolve_store_uri("file://" + uri)
    return uri


def profile_path(profile: str) -> Path:
    """``config/profiles/<name>.yaml`` for a profile name; a profile given as a path to a ``.yaml`` file
    (a deployment's own retailers, kept outside the repository) is that file."""
    if profile.endswith((".yaml", ".yml")) or os.sep in profile:
        path = Path(profile).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path
    return CONFIG_DIR / "profiles" / f"{profile}.yaml"


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """The settings of ``config/settings.yaml`` with the profile ``FASHIONNET_PROFILE`` merged over it and
    the ``FASHIONNET_*`` overrides, every section built and checked here (:func:`build_section`: no
    unknown key, none missing, each of its type; then the retailers, the training values and the crawl's
    failure share and search queries). Raises ValueError naming the section and key."""
    env = dict(os.environ if env is None else env)
    raw = yaml.safe_load((CONFIG_DIR / "settings.yaml").read_text())
    profile = env.get("FASHIONNET_PROFILE")
    if profile:
        path = profile_path(profile)
        if not path.exists():
            raise ValueError(f"FASHIONNET_PROFILE={profile!r}: no file {path}")
        raw = deep_merge(raw, yaml.safe_load(path.read_text()) or {})
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS), key=str)
    if unknown:
        raise SettingsError(
            f"{unknown[0]}: unknown section (a typo?); the settings have {', '.join(TOP_LEVEL_KEYS)} ({WHERE})"
        )
    missing = [key for key in TOP_LEVEL_KEYS if key not in raw]
    if missing:
        raise MissingSettingError(f"{', '.join(missing)}: missing section ({WHERE})")
    review = dict(raw["review"] or {})
    if env.get("FASHIONNET_REVIEW_URL"):  # where this deployment serves the review page (make airflow sets it)
        review["page_url"] = env["FASHIONNET_REVIEW_URL"]
    sections: dict[str, Any] = {
        name: build_section(cls, review if name == "review" else raw[name], name) for name, cls in SECTIONS.items()
    }
    crawl: CrawlSettings = sections["crawl"]
    validate_crawl_failure(crawl)
    for class_name in crawl.search_queries:
        search_queries(crawl, class_name)
    validate_training(sections["training"])
    retailers = raw["retailers"] or {}
    if env.get("FASHIONNET_SHOP_URL") and isinstance(retailers.get("demo-store"), dict):
        retailers["demo-store"]["base_url"] = env["FASHIONNET_SHOP_URL"].rstrip("/")
    store = env.get("FASHIONNET_STORE") or raw["store"]
    if not isinstance(store, str) or not store:
        raise SettingsError(f"store: needs a store URI (file://<path> or s3://bucket/prefix), got {store!r} ({WHERE})")
    return Settings(
        store_uri=resolve_store_uri(store),
        s3_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
        taxonomy=load_taxonomy(Path(env.get("FASHIONNET_TAXONOMY", CONFIG_DIR / "taxonomy.yaml"))),
        retailers=validate_retailers(retailers, crawl),
        **sections,
    )


def validate_crawl_failure(crawl: CrawlSettings) -> None:
    """``crawl.max_failed_share``: the share (0-1) of a crawl's requests that may fail before the crawl fails."""
    share = crawl.max_failed_share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ValueError(f"crawl.max_failed_share must be a number from 0 to 1, got {share!r}")


# -- training (models.train runs these) -------------------------------------------------------------
_TRAINING_CHOICES = {
    "pooling": ("avg", "max", "flatten"),
    "lr_schedule": ("constant", "cosine"),
    "image_fit": ("squash", "crop"),
    "mixed_precision": ("auto", "off"),
    "head_init": ("random", "probe"),
    "backbone": ("vgg16", "efficientnet_lite0"),
}
_TRAINING_INTS = {
    "image_size": 32,
    "batch_size": 1,
    "dense_units": 0,
    "frozen_epochs": 0,
    "unfrozen_epochs": 0,
    "patience": 0,
    "warmup_epochs": 0,
    "seed": 0,
}  # key -> smallest value
_TRAINING_FLOATS = {
    "dropout": (0.0, 1.0),
    "label_smoothing": (0.0, 1.0),
    "weight_decay": (0.0, None),
    "head_learning_rate": (0.0, None),
    "finetune_learning_rate": (0.0, None),
    "selection_margin": (0.0, None),
    "promotion_tolerance": (0.0, 1.0),
    "augment_translation": (0.0, 1.0),
    "augment_zoom": (0.0, 1.0),
    "augment_brightness": (0.0, 1.0),
    "augment_contrast": (0.0, 1.0),
}
_TRAINING_BOOLS = ("mirror_augment", "probe", "shared_backbone")
_TRAINING_PER_BACKBONE = ("image_size", "unfreeze_from")  # a value, or a mapping backbone -> value


T = typing.TypeVar("T")


def validate_training(training: T) -> T:
    """The ``training`` section (a :class:`TrainingSettings`, or a mapping of some of its keys), checked
    key by key (a wrong type or value is a clear error here, not a failure deep inside a training task);
    returned as given. A mapping's unknown keys are left alone (:func:`build_section` refuses them in
    the settings)."""
    if isinstance(training, TrainingSettings):
        validate_training(training.as_dict())
        return training
    if not isinstance(training, dict):
        raise ValueError(f"training: needs a mapping, got {training!r} (config/settings.yaml)")
    for key, value in training.items():
        where = f"training.{key}: "
        if key in _TRAINING_CHOICES and value not in _TRAINING_CHOICES[key]:
            raise ValueError(f"{where}must be one of {list(_TRAINING_CHOICES[key])}, got {value!r}")
        per_backbone = key in _TRAINING_PER_BACKBONE and isinstance(value, dict)
        for item in value.values() if per_backbone else [value]:
            if key in _TRAINING_INTS and (
                not isinstance(item, int) or isinstance(item, bool) or item < _TRAINING_INTS[key]
            ):
                raise ValueError(
                    f"{where}needs an integer >= {_TRAINING_INTS[key]}"
                    f"{' (or a mapping backbone -> one)' if key in _TRAINING_PER_BACKBONE else ''}, got {value!r}"
                )
        if key in _TRAINING_FLOATS:
            low, high = _TRAINING_FLOATS[key]
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or value < low
                or (high is not None and value > high)
            ):
                raise ValueError(
                    f"{where}needs a number in [{low}, {high if high is not None else 'inf'}], got {value!r}"
                )
        if key in _TRAINING_BOOLS and not isinstance(value, bool):
            raise ValueError(f"{where}needs true or false, got {value!r}")
        if key == "unfreeze_from":
            prefixes = value.values() if isinstance(value, dict) else [value]
            if not all(isinstance(p, str) and p for p in prefixes):
                raise ValueError(
                    f"{where}needs 'all', a backbone layer-name prefix (block11) or a mapping "
                    f"backbone -> prefix, got {value!r}"
                )
    if training.get("head_init") == "probe" and (training.get("dense_units") != 0 or training.get("probe") is False):
        raise ValueError(
            "training.head_init: probe needs dense_units: 0 and probe: true (the head starts as the probe)"
        )
    return training


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; tests call ``get_settings.cache_clear()``)."""
    return load_settings()
