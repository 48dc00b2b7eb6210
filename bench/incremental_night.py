"""Incremental nights on the demo store: what a second night costs when 1% of the products changed.

Three ways to crawl the same store, each into its own folder store, two nights each, with 1% of the
products changed (price and title, so ``ETag``, ``Last-Modified`` and the sitemap ``lastmod`` move) between
the nights:

- ``full``: the catalog spider, not incremental (every page and image downloaded every night);
- ``lastmod``: the catalog spider, incremental: the sitemap's ``lastmod`` decides, an unchanged product is
  not requested at all;
- ``etag``: the product spider on the list of product URLs (no sitemap), incremental: conditional requests,
  an unchanged page answers 304 without a body.

Per night and mode: product pages answered 200 with a body, 304s, all requests, body bytes the store sent
(pages and images), images downloaded, products in the night's table, and wall time of the crawl (the
``scrapy`` subprocess included). Every night's table must hold every product (checked). Wall times are
medians of ``--repeats`` runs of the whole two-night sequence.

    .venv/bin/python bench/incremental_night.py --products 400 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fashionnet_tools.demo_store.server import DemoStoreServer  # noqa: E402
from fashionnet_tools.demo_store.site import build_site  # noqa: E402

MODES = ("full", "lastmod", "etag")
OVERRIDES = {
    "AUTOTHROTTLE_ENABLED": "False",
    "DOWNLOAD_DELAY": "0",
    "LOG_LEVEL": "WARNING",
    "CONCURRENT_REQUESTS": "8",
    "CONCURRENT_REQUESTS_PER_DOMAIN": "8",
}


def night(mode: str, server: DemoStoreServer, store_dir: Path, crawl_id: str, profile: Path) -> dict[str, Any]:
    """One night's crawl in ``mode``; its counts from the server's log and the crawl summary."""
    os.environ["FASHIONNET_STORE"] = f"file://{store_dir}"
    os.environ["FASHIONNET_SHOP_URL"] = server.base_url
    os.environ["FASHIONNET_PROFILE"] = str(profile)
    from pipeline.settings import get_settings
    from scrapers.crawl import run_crawl

    get_settings.cache_clear()
    before = len(server.responses)
    started = time.monotonic()
    if mode == "etag":
        urls = ",".join(f"{server.base_url}/product/{p['sku']}" for p in server.products)
        summary = run_crawl(
            "product",
            crawl_id,
            retailer="etag-shop",
            incremental=True,
            timeout_s=600,
            spider_args={"urls": urls},
            setting_overrides=OVERRIDES,
        )
    else:
        summary = run_crawl(
            "catalog", crawl_id, incremental=(mode == "lastmod"), timeout_s=600, setting_overrides=OVERRIDES
        )
    wall = time.monotonic() - started
    answers = server.responses[before:]
    pages = [(status, size) for path, status, size in answers if path.startswith("/product/")]
    if summary["products"] != len(server.products):
        raise AssertionError(f"{mode} {crawl_id}: {summary['products']} products, expected {len(server.products)}")
    return {
        "pages_200": sum(s == 200 for s, _ in pages),
        "pages_304": sum(s == 304 for s, _ in pages),
        "requests": len(answers),
        "body_bytes": sum(size for _, _, size in answers),
        "images_downloaded": summary["images_downloaded"],
        "products": summary["products"],
        "wall_s": wall,
    }


def run_once(site: Path, changed_fraction: float, work: Path, repeat: int) -> dict[str, dict[str, dict[str, Any]]]:
    results: dict[str, dict[str, dict[str, Any]]] = {mode: {} for mode in MODES}
    with DemoStoreServer(site) as server:
        profile = work / f"profile-{repeat}.yaml"
        profile.write_text(
            json.dumps(
                {
                    "retailers": {
                        "etag-shop": {
                            "kind": "urls",
                            "base_url": server.base_url,
                            "entry_points": [f"{server.base_url}/product/x"],
                        }
                    }
                }
            )
        )
        for mode in MODES:
            results[mode]["night 1"] = night(mode, server, work / f"{mode}-{repeat}", "night-1", profile)
        n_changed = max(1, round(len(server.products) * changed_fraction))
        for product in server.products[:: len(server.products) // n_changed][:n_changed]:
            server.update_product(
                product["sku"], price=round(product["price"] + 1.0, 2), title=product["title"] + " (new)"
            )
        for mode in MODES:
            results[mode]["night 2"] = night(mode, server, work / f"{mode}-{repeat}", "night-2", profile)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=400)
    parser.add_argument("--changed", type=float, default=0.01, help="fraction of products changed between the nights")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.monotonic()
        site = build_site(work / "site", n_products=args.products, seed=11)
        print(
            f"demo site: {args.products} products built in {time.monotonic() - started:.1f} s; load {os.getloadavg()}"
        )
        runs = [run_once(site, args.changed, work, repeat) for repeat in range(args.repeats)]
    print(
        f"\n{args.products} products, {args.changed:.0%} changed between the nights; wall: median of {args.repeats}; "
        f"load after {os.getloadavg()}"
    )
    print(
        f"{'mode':8} {'night':8} {'pages 200':>9} {'304':>5} {'requests':>8} {'body MB':>8} {'images':>6} {'products':>8} {'wall s':>7}"
    )
    for mode in MODES:
        for name in ("night 1", "night 2"):
            row = runs[0][mode][name]
            wall = statistics.median(run[mode][name]["wall_s"] for run in runs)
            print(
                f"{mode:8} {name:8} {row['pages_200']:>9} {row['pages_304']:>5} {row['requests']:>8} "
                f"{row['body_bytes'] / 1e6:>8.2f} {row['images_downloaded']:>6} {row['products']:>8} {wall:>7.2f}"
            )


if __name__ == "__main__":
    main()
