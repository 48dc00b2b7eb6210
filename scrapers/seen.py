"""Incremental crawling: what a retailer's incremental crawls stored about each product, so that an
unchanged page costs little.

The seen-set lives in the store at ``crawls/_seen/<retailer>.parquet``, one row per product:
``item_id``, ``fingerprint`` (a hash of the fields that matter downstream, :data:`FINGERPRINT_FIELDS`),
``updated_at`` (the shop's own modification stamp where it has one, e.g. Shopify's), ``first_seen_crawl``,
``last_seen_crawl``, ``emitted_crawl`` (the crawl that recorded the current fingerprint), the page's
validators ``etag`` and ``last_modified`` (its ``ETag`` / ``Last-Modified`` headers), its sitemap
``lastmod``, and ``product``: the product's last exported row (JSON, with its ``image_key``).

What an unchanged product costs: with validators, its page is asked for with ``If-None-Match`` /
``If-Modified-Since`` and a 304 (no body) re-emits the stored row; with a sitemap ``lastmod`` not newer
than the stored one, it is not requested at all. Otherwise the page is downloaded and parsed as usual.
Its image is not downloaded again either way: the image key is the hash of its URL, and Scrapy's images
pipeline finds a stored file younger than ``IMAGES_EXPIRES`` (90 days) up to date.

Why every product, changed or not, is still emitted into the night's ``products.parquet`` (the decision
of issue 11; before, an incremental crawl emitted only new or changed products): the night's catalog
snapshot is what curation deduplicates within (``pipeline.curation.curate``: the catalog batch "must stay whole")
and what the repository refresh plans from. ``plan_refresh`` would keep an absent item's stored row, but
curation would no longer see an unchanged item beside a changed near-duplicate of it, and a night whose
products are all unchanged would produce an empty batch that looks like a broken crawl. A whole snapshot
costs the downstream nothing: ``plan_refresh`` gives an item whose image hash and catalog fields are
unchanged no action. Unchanged products are counted (``fashionnet/unchanged``; 304s as
``fashionnet/not_modified``, lastmod skips as ``fashionnet/lastmod_unchanged``).

Only incremental crawls read or write the seen-set, and only a crawl that finished (close reason
``finished``) writes it back, in one atomic object write, from the products table it has just written; a
crawl that fails leaves it untouched. A product whose image failed is not in that table, so it is not
recorded and is fetched in full next time. A seen-set written before the validator columns existed reads
with nulls there (no conditional request until the product's next full download).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
from scrapy.crawler import Crawler

from pipeline.storage import ObjectStore, open_store
from pipeline.store_layout import crawl_products_key, seen_key

logger = logging.getLogger(__name__)

SKIPPED_STAT = "fashionnet/skipped_unchanged"
UNCHANGED_STAT = "fashionnet/unchanged"
NOT_MODIFIED_STAT = "fashionnet/not_modified"
LASTMOD_UNCHANGED_STAT = "fashionnet/lastmod_unchanged"
FINGERPRINT_FIELDS = (
    "title",
    "price",
    "currency",
    "availability",
    "image_url",
    "sku",
    "category",
    "brand",
    "color",
    "material",
    "description",
)
SEEN_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("fingerprint", pa.string()),
        ("updated_at", pa.string()),
        ("first_seen_crawl", pa.string()),
        ("last_seen_crawl", pa.string()),
        ("emitted_crawl", pa.string()),
        ("etag", pa.string()),
        ("last_modified", pa.string()),
        ("lastmod", pa.string()),
        ("product", pa.string()),
    ]
)
VALIDATOR_FIELDS = ("etag", "last_modified", "lastmod")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


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


def parse_lastmod(value: str | None) -> datetime | None:
    """A sitemap ``lastmod`` (W3C datetime: a date, or a date and time with a zone) as an aware datetime;
    None when absent or unparsable (then it decides nothing). A time without a zone is read as UTC."""
    if not value:
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def product_json(row: Mapping[str, Any]) -> str:
    """A products-table row as the seen-set's ``product`` column (datetimes as ISO strings)."""
    return json.dumps(
        {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()},
        sort_keys=True,
        ensure_ascii=False,
    )


@dataclass
class SeenSet:
    """The seen-set of one retailer during one crawl: the stored rows plus this crawl's observations."""

    retailer: str
    crawl_id: str
    rows: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, store: ObjectStore, retailer: str, crawl_id: str) -> SeenSet:
        key = seen_key(retailer)
        rows: dict[str, dict[str, Any]] = {}
        if store.exists(key):
            for row in store.read_parquet(key).to_pylist():
                rows[row["item_id"]] = {name: row.get(name) for name in SEEN_SCHEMA.names}
        return cls(retailer, crawl_id, rows)

    def unchanged(self, item_id: str, product_fingerprint: str) -> bool:
        """True when the product was recorded before with this fingerprint."""
        row = self.rows.get(item_id)
        return row is not None and row["fingerprint"] == product_fingerprint

    def stored_product(self, item_id: str) -> dict[str, Any] | None:
        """The product's last exported row, or None (not recorded, or recorded before rows were kept)."""
        row = self.rows.get(item_id)
        return json.loads(row["product"]) if row and row.get("product") else None

    def mark_emitted(
        self,
        item_id: str,
        product_fingerprint: str,
        updated_at: str | None,
        validators: Mapping[str, str | None],
        product: str,
    ) -> None:
        """This crawl exported the product (its image is stored): record it, its validators and its row.

        A validator this crawl did not see (a 304 answer, a lastmod skip) keeps its stored value.
        """
        previous = self.rows.get(item_id) or {}
        changed = previous.get("fingerprint") != product_fingerprint
        self.rows[item_id] = {
            "item_id": item_id,
            "fingerprint": product_fingerprint,
            "updated_at": updated_at or previous.get("updated_at"),
            "first_seen_crawl": previous.get("first_seen_crawl") or self.crawl_id,
            "last_seen_crawl": self.crawl_id,
            "emitted_crawl": self.crawl_id if changed else previous.get("emitted_crawl"),
            **{name: validators.get(name) or previous.get(name) for name in VALIDATOR_FIELDS},
            "product": product,
        }

    def table(self) -> pa.Table:
        return pa.Table.from_pylist([self.rows[k] for k in sorted(self.rows)], schema=SEEN_SCHEMA)

    def save(self, store: ObjectStore) -> str:
        return store.write_parquet(seen_key(self.retailer), self.table())


class SeenTracker:
    """One incremental crawl's view of the seen-set, shared by the spider and the item pipelines.

    ``pending`` holds the fingerprint (and shop stamp) of every product this crawl emitted and
    ``validators`` what its pages said about themselves; :meth:`commit` records the products that were
    finally exported, with their rows as written to the crawl's products table.
    """

    def __init__(self, seen: SeenSet, store: ObjectStore, stats: Any = None) -> None:
        self.seen = seen
        self.store = store
        self.stats = stats
        self.pending: dict[str, tuple[str, str | None]] = {}
        self.stamps: dict[str, str] = {}
        self.validators: dict[str, dict[str, str | None]] = {}

    def note_stamp(self, item_id: str, updated_at: str | None) -> None:
        """The shop's modification stamp of a product about to be emitted (Shopify's ``updated_at``)."""
        if updated_at:
            self.stamps[item_id] = updated_at

    def note_validators(
        self, item_id: str, etag: str | None = None, last_modified: str | None = None, lastmod: str | None = None
    ) -> None:
        """What a fully downloaded product page said about its version (headers, sitemap lastmod)."""
        self.validators[item_id] = {"etag": etag, "last_modified": last_modified, "lastmod": lastmod}

    def conditional_headers(self, item_id: str) -> dict[str, str]:
        """``If-None-Match`` / ``If-Modified-Since`` for a product with a stored row, else {}."""
        row = self.seen.rows.get(item_id)
        if not row or not row.get("product"):
            return {}
        headers = {}
        if row.get("etag"):
            headers["If-None-Match"] = row["etag"]
        if row.get("last_modified"):
            headers["If-Modified-Since"] = row["last_modified"]
        return headers

    def stored_product(self, item_id: str) -> dict[str, Any] | None:
        return self.seen.stored_product(item_id)

    def unchanged_by_lastmod(self, item_id: str, lastmod: str | None) -> dict[str, Any] | None:
        """The stored row when the sitemap's ``lastmod`` is not newer than the stored one, else None."""
        row = self.seen.rows.get(item_id)
        new, old = parse_lastmod(lastmod), parse_lastmod(row.get("lastmod") if row else None)
        if new is None or old is None or new > old:
            return None
        return self.seen.stored_product(item_id)

    def should_emit(self, item_id: str, product: Mapping[str, Any]) -> bool:
        """Always True (the night's snapshot stays whole, see the module docstring); remembers the
        product's fingerprint and counts it as ``fashionnet/unchanged`` when it matches the stored one."""
        print_ = fingerprint(product)
        if self.seen.unchanged(item_id, print_) and self.stats is not None:
            self.stats.inc_value(UNCHANGED_STAT)
        self.pending[item_id] = (print_, self.stamps.get(item_id))
        return True

    def commit(self, exported_ids: list[str], products: list[Mapping[str, Any]] | None = None) -> int:
        """Record the exported products and write the seen-set; returns its size.

        ``products``: the exported rows (default: read back from ``crawls/<crawl_id>/products.parquet``,
        which the export pipeline writes before it commits)."""
        if products is None:
            key = crawl_products_key(self.seen.crawl_id)
            products = self.store.read_parquet(key).to_pylist() if self.store.exists(key) else []
        rows = {row["item_id"]: row for row in products}
        for item_id in exported_ids:
            if item_id in self.pending and item_id in rows:
                print_, stamp = self.pending[item_id]
                self.seen.mark_emitted(
                    item_id, print_, stamp, self.validators.get(item_id, {}), product_json(rows[item_id])
                )
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
            tracker = SeenTracker(seen, store, crawler.stats)
        crawler.__dict__["_fashionnet_seen"] = tracker
    return crawler.__dict__["_fashionnet_seen"]
