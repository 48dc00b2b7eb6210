"""A retailer entry of the settings -> the crawl that fetches its catalogue (or its search pages).

``kind`` picks the spider and its arguments: ``demo`` -> ``catalog`` (the bundled store: sitemap, then
listing pages, from ``base_url``), ``sitemap`` / ``listing`` / ``urls`` -> ``product`` (structured data,
from ``sitemap_url`` / ``listing_url`` / ``urls`` or ``urls_file``, ``url_pattern``), ``shopify`` ->
``shopify`` (``/products.json`` of ``base_url``). The ingest crawl is the ``query`` spider on the
retailer's ``search_url``. A retailer's ``crawl:`` overrides become Scrapy settings of its crawl only
(through :func:`scrapers.settings.fashionnet_settings`, so a setting means the same as at the top level);
``timeout_s`` and ``incremental`` are :func:`scrapers.crawl.run_crawl` arguments.

A retailer name that is not in the settings, with a ``start_url``, is "any shop": its catalogue crawl is the
catalog spider from the start URL (as the single-shop Params always did). The ingest crawl needs a
configured ``search_url``, so it refuses any shop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict

from pipeline.settings import REPO_ROOT, Settings, get_settings, site_of

#: Spider of each kind's catalogue crawl.
CATALOG_SPIDERS = {
    "demo": "catalog",
    "sitemap": "product",
    "listing": "product",
    "urls": "product",
    "shopify": "shopify",
}
#: The catalog spider also reads "any shop" from its start URL (today's behaviour of the refresh Params).
ANY_SHOP_CATALOG_SPIDER = "catalog"


@dataclass(frozen=True)
class RetailerCrawl:
    """Everything :func:`scrapers.crawl.run_crawl` needs for one retailer's crawl."""

    retailer: str
    spider: str
    start_url: str | None = None
    spider_args: dict[str, str] = field(default_factory=dict)
    setting_overrides: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    incremental: bool | None = None

    def run(self, crawl_id: str) -> dict[str, Any]:
        """Run the crawl as a subprocess; its summary (``crawls/<crawl_id>/summary.json``)."""
        from scrapers.crawl import run_crawl

        return run_crawl(
            self.spider,
            crawl_id,
            retailer=self.retailer,
            start_url=self.start_url,
            timeout_s=self.timeout_s,
            incremental=self.incremental,
            spider_args=self.spider_args,
            setting_overrides=self.setting_overrides,
        )


def _entry(name: str, settings: Settings) -> dict[str, Any]:
    try:
        return settings.retailers[name]
    except KeyError:
        raise ValueError(
            f"retailer {name!r} is not in the settings (known: {sorted(settings.retailers)}); "
            "give a start_url to crawl any shop under that name"
        ) from None


def politeness(name: str, settings: Settings | None = None) -> tuple[dict[str, Any], float | None, bool | None]:
    """(Scrapy setting overrides, crawl timeout, incremental) of a retailer's ``crawl:`` overrides.

    Only the Scrapy settings that the overrides change are returned: the rest come, as for every crawl,
    from the top-level ``crawl:`` section through ``scrapers.settings``.
    """
    from scrapers.settings import fashionnet_settings

    settings = settings or get_settings()
    overrides = dict((settings.retailers.get(name) or {}).get("crawl") or {})
    timeout = overrides.pop("timeout_s", None)
    incremental = overrides.pop("incremental", None)
    base = fashionnet_settings(settings)
    merged = fashionnet_settings(dataclasses.replace(settings, crawl=dataclasses.replace(settings.crawl, **overrides)))
    changed = {key: value for key, value in merged.items() if base.get(key) != value}
    return changed, None if timeout is None else float(timeout), incremental


def catalog_crawl(name: str, start_url: str | None = None, settings: Settings | None = None) -> RetailerCrawl:
    """The catalogue crawl of retailer ``name``; ``start_url`` replaces its entry points (or, for a name
    not in the settings, makes it "any shop")."""
    settings = settings or get_settings()
    if name not in settings.retailers and start_url:
        return RetailerCrawl(name, ANY_SHOP_CATALOG_SPIDER, start_url=start_url)
    entry = _entry(name, settings)
    kind = entry["kind"]
    args: dict[str, str] = {}
    if kind in ("sitemap", "listing", "urls") and not start_url:
        points = entry["entry_points"]
        if kind == "sitemap":
            args["sitemap_url"] = points[0]
        elif kind == "listing":
            args["listing_url"] = points[0]
        elif entry["urls_file"]:
            path = Path(entry["urls_file"]).expanduser()
            args["urls_file"] = str(path if path.is_absolute() else REPO_ROOT / path)
        else:
            args["urls"] = ",".join(points)
    if kind == "sitemap" and entry["url_pattern"] and "sitemap_url" in args:
        args["url_pattern"] = entry["url_pattern"]
    overrides, timeout, incremental = politeness(name, settings)
    return RetailerCrawl(
        name,
        CATALOG_SPIDERS[kind],
        start_url=start_url,
        spider_args=args,
        setting_overrides=overrides,
        timeout_s=timeout,
        incremental=incremental,
    )


def ingest_crawl(name: str, start_url: str | None = None, settings: Settings | None = None) -> RetailerCrawl:
    """The query (search page) crawl of retailer ``name``, for weak labels; it needs a ``search_url``."""
    settings = settings or get_settings()
    if name not in settings.retailers:
        raise ValueError(
            f"retailer {name!r} is not in the settings: the ingest crawl searches a configured "
            "retailer's search_url (config/settings.yaml)"
        )
    entry = settings.retailers[name]
    if not entry.get("search_url"):
        raise ValueError(f"retailer {name!r} has no search_url in the settings: the ingest crawl searches it")
    overrides, timeout, incremental = politeness(name, settings)
    return RetailerCrawl(
        name, "query", start_url=start_url, setting_overrides=overrides, timeout_s=timeout, incremental=incremental
    )


def catalog_retailers(settings: Settings | None = None) -> list[str]:
    """Every configured retailer: the nightly refresh crawls each of them."""
    return sorted((settings or get_settings()).retailers)


def searchable_retailers(settings: Settings | None = None) -> list[str]:
    """The configured retailers with a ``search_url``: the ingest crawl visits each of them."""
    settings = settings or get_settings()
    return sorted(name for name, entry in settings.retailers.items() if entry.get("search_url"))


def retailer_batch_id(kind: str, run_after: datetime, retailer: str) -> str:
    """``<kind>-<YYYYMMDD>-<retailer>``: one crawl and curated batch per kind, night and retailer (a same-day
    rerun replaces it); :func:`pipeline.curation.curate.batch_kind` still reads the kind."""
    return f"{kind}-{run_after:%Y%m%d}-{retailer}"


class CrawlTarget(TypedDict):
    """One retailer's crawl in a DAG run (:func:`crawl_targets`)."""

    retailer: str
    start_url: str | None


def crawl_targets(
    requested: list[str] | None,
    retailer: str | None,
    start_url: str | None,
    configured: list[str],
    settings: Settings | None = None,
) -> list[CrawlTarget]:
    """The retailers one DAG run crawls, as ``{"retailer", "start_url"}`` dicts (one mapped task each).

    ``requested`` (the ``retailers`` Param): those names, each of which must be in ``configured``;
    ``retailer`` alone: that configured retailer; ``start_url``: ``retailer`` from there (a configured one,
    on its own site, or any shop by a new name) or, without a name, the configured retailer on whose site
    the URL is; nothing: every configured retailer. A list together with a start URL is refused. Every
    check is made here, before any request (scrapers.crawl.check_start_url).
    """
    from scrapers.crawl import check_start_url

    settings = settings or get_settings()
    if requested:
        if start_url or retailer:
            raise ValueError("give either retailers (a list of configured retailers) or retailer/start_url, not both")
        unknown = sorted(set(requested) - set(configured))
        if unknown:
            raise ValueError(f"retailers {unknown} are not configured for this crawl (configured: {configured})")
        return [{"retailer": name, "start_url": None} for name in dict.fromkeys(requested)]
    if start_url:
        check_start_url("", start_url, {})  # the URL itself: scheme, host, no credentials
        if not retailer:
            owners = [name for name in configured if url_allowed_site(settings.retailers[name], start_url)]
            if not owners:
                raise ValueError(
                    f"start_url {start_url!r} is not on the site of any configured retailer "
                    f"({configured}); name a new retailer to crawl it as any shop"
                )
            retailer = owners[0]
        check_start_url(retailer, start_url, settings.retailers)
        if retailer in settings.retailers and retailer not in configured:
            raise ValueError(f"retailer {retailer!r} is not configured for this crawl (configured: {configured})")
        return [{"retailer": retailer, "start_url": start_url}]
    if retailer:
        if retailer not in configured:
            raise ValueError(
                f"retailer {retailer!r} is not configured for this crawl (configured: {configured}); "
                "give a start_url to crawl any shop"
            )
        return [{"retailer": retailer, "start_url": None}]
    if not configured:
        raise ValueError("no retailer is configured for this crawl (config/settings.yaml retailers:)")
    return [{"retailer": name, "start_url": None} for name in configured]


def url_allowed_site(entry: dict[str, Any], url: str) -> bool:
    """Whether ``url`` is on the retailer's own site (its base URL's host, ``www.`` aside, and port)."""
    return site_of(url) == site_of(entry["base_url"])
