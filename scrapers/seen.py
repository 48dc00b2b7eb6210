"""Incremental crawling: the products a retailer's incremental crawls have already emitted.

The seen-set lives in the store at ``crawls/_seen/<retailer>.parquet``, one row per product:
``item_id``, ``fingerprint`` (a hash of the fields that matter downstream, :data:`FINGERPRINT_FIELDS`),
``updated_at`` (the shop's own modification stamp where it has one, e.g. Shopify's), ``first_seen_crawl``,
``last_seen_crawl`` and ``emitted_crawl`` (the crawl that emitted the current fingerprint).

An incremental crawl emits a product when it is new, when its fingerprint changed, or when
``emitted_crawl`` is the running crawl itself: a rerun of the same crawl id (Airflow retries, a manual
rerun the same day) must reproduce the same ``products.parquet``, not an empty one, and those are exactly
the products the first run emitted. Everything else is skipped before its image is downloaded
(``fashionnet/skipped_unchanged``).

Only incremental crawls read or write the seen-set, and only a crawl that finished (close reason
``finished``) writes it back, in one atomic object write; a crawl that fails leaves it untouched, so the
next night emits the same changes again. A product whose image failed is not recorded, so it is tried
again next time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from scrapy.crawler import Crawler

from pipeline.storage import ObjectStore, open_store

logger = logging.getLogger(__name__)

SEEN_PREFIX = "crawls/_seen/"
SKIPPED_STAT = "fashionnet/skipped_unchanged"
FINGERPRINT_FIELDS = (
    "title", "price", "currency", "availability", "image_url", "sku", "category", "brand", "color", "material", "description",
)
SEEN_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("fingerprint", pa.string()),
        ("updated_at", pa.string()),
        ("first_seen_crawl", pa.string()),
        ("last_seen_crawl", pa.string()),
        ("emitted_crawl", pa.string()),
    ]
)
_RETAILER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def seen_key(retailer: str) -> str:
    if not _RETAILER.match(retailer or ""):
        raise ValueError(f"retailer must match {_RETAILER.pattern} to name a seen-set, got {retailer!r}")
    return f"{SEEN_PREFIX}{retailer}.parquet"


def fingerprint(product: Mapping[str, Any]) -> str:
    """sha256 (hex, 32 chars) of the product's :data:`FINGERPRINT_FIELDS`; prices compare as numbers."""
    values = {name: product.get(name) for name in FINGERPRINT_FIELDS}
    if values["price"] is not None:
        values["price"] = round(float(values["price"]), 4)
    payload = json.dumps(values, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def parse_flag(value: Any) -> bool:
    """A spider argument or setting as a bool ('true'/'false', '1'/'0', ...)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


@dataclass
class SeenSet:
    """The seen-set of one retailer during one crawl: the stored rows plus this crawl's observations."""

    retailer: str
    crawl_id: str
    rows: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, store: ObjectStore, retailer: str, crawl_id: str) -> "SeenSet":
        key = seen_key(retailer)
        rows: dict[str, dict[str, Any]] = {}
        if store.exists(key):
            for row in store.read_parquet(key).to_pylist():
                rows[row["item_id"]] = row
        return cls(retailer, crawl_id, rows)

    def _emitted_here(self, row: Mapping[str, Any]) -> bool:
        return row.get("emitted_crawl") == self.crawl_id

    def unchanged(self, item_id: str, product_fingerprint: str) -> bool:
        """True when the product was emitted before with this fingerprint, by another crawl."""
        row = self.rows.get(item_id)
        return row is not None and row["fingerprint"] == product_fingerprint and not self._emitted_here(row)

    def unchanged_since(self, item_id: str, updated_at: str | None) -> bool:
        """True when the shop's modification stamp equals the recorded one (decided before any fetch)."""
        row = self.rows.get(item_id)
        return bool(updated_at) and row is not None and row.get("updated_at") == updated_at and not self._emitted_here(row)

    def mark_seen(self, item_id: str) -> None:
        """An unchanged product was seen again by this crawl."""
        self.rows[item_id]["last_seen_crawl"] = self.crawl_id

    def mark_emitted(self, item_id: str, product_fingerprint: str, updated_at: str | None) -> None:
        """This crawl emitted the product with ``product_fingerprint`` (and kept it: its image is stored)."""
        previous = self.rows.get(item_id) or {}
        self.rows[item_id] = {
            "item_id": item_id,
            "fingerprint": product_fingerprint,
            "updated_at": updated_at,
            "first_seen_crawl": previous.get("first_seen_crawl") or self.crawl_id,
            "last_seen_crawl": self.crawl_id,
            "emitted_crawl": self.crawl_id,
        }

    def table(self) -> pa.Table:
        return pa.Table.from_pylist([self.rows[k] for k in sorted(self.rows)], schema=SEEN_SCHEMA)

    def save(self, store: ObjectStore) -> str:
        return store.write_parquet(seen_key(self.retailer), self.table())


class SeenTracker:
    """One incremental crawl's view of the seen-set, shared by the spider and the item pipelines.

    ``pending`` holds the fingerprint (and shop stamp) of every product this crawl decided to emit;
    :meth:`commit` records those that were finally exported and writes the seen-set back.
    """

    def __init__(self, seen: SeenSet, store: ObjectStore) -> None:
        self.seen = seen
        self.store = store
        self.pending: dict[str, tuple[str, str | None]] = {}
        self.stamps: dict[str, str] = {}

    def note_stamp(self, item_id: str, updated_at: str | None) -> None:
        """The shop's modification stamp of a product about to be emitted (Shopify's ``updated_at``)."""
        if updated_at:
            self.stamps[item_id] = updated_at

    def should_emit(self, item_id: str, product: Mapping[str, Any]) -> bool:
        """Decide for one product; remembers the fingerprint of an emitted one, marks a skipped one seen."""
        print_ = fingerprint(product)
        if self.seen.unchanged(item_id, print_):
            self.seen.mark_seen(item_id)
            if item_id in self.stamps:  # a new stamp without a change that matters: skip by stamp next time
                self.seen.rows[item_id]["updated_at"] = self.stamps[item_id]
            return False
        self.pending[item_id] = (print_, self.stamps.get(item_id))
        return True

    def skip_by_stamp(self, item_id: str, updated_at: str | None) -> bool:
        """True (and marked seen) when the shop's stamp says the product did not change."""
        if self.seen.unchanged_since(item_id, updated_at):
            self.seen.mark_seen(item_id)
            return True
        return False

    def commit(self, exported_ids: list[str]) -> int:
        """Record the exported products and write the seen-set; returns its size."""
        for item_id in exported_ids:
            if item_id in self.pending:
                print_, stamp = self.pending[item_id]
                self.seen.mark_emitted(item_id, print_, stamp)
        self.seen.save(self.store)
        return len(self.seen.rows)


def incremental_enabled(crawler: Crawler) -> bool:
    """The spider argument ``incremental`` when given, else the ``crawl.incremental`` setting."""
    spider = crawler.spider
    argument = getattr(spider, "incremental", None)
    if argument is not None:
        return parse_flag(argument)
    return crawler.settings.getbool("FASHIONNET_INCREMENTAL", False)


def seen_tracker(crawler: Crawler) -> SeenTracker | None:
    """The crawl's SeenTracker (created on first use), or None when the crawl is not incremental."""
    if "_fashionnet_seen" not in crawler.__dict__:
        tracker = None
        if incremental_enabled(crawler):
            spider = crawler.spider
            store = open_store(crawler.settings.get("FASHIONNET_STORE_URI"))
            seen = SeenSet.load(store, spider.retailer, spider.crawl_id)  # type: ignore[union-attr]
            logger.info("incremental crawl: %d products in the seen-set of %s", len(seen.rows), seen.retailer)
            tracker = SeenTracker(seen, store)
        crawler.__dict__["_fashionnet_seen"] = tracker
    return crawler.__dict__["_fashionnet_seen"]
