"""Hostile pages at the crawl-process level, through real crawls (run_crawl's scrapy subprocess) on 127.0.0.1:
bodies over the size limits, a decompression-bomb PNG, a crawl that runs out of time, and the child's
environment (no Airflow secrets in the process that parses the shop's HTML)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from pipeline.settings import REPO_ROOT, get_settings
from pipeline.storage import ObjectStore
from scrapers.crawl import CrawlTimeout, run_crawl
from tests.scrapers.test_politeness import TinyShop, jpeg, product_page

HTML = {"Content-Type": "text/html"}
PNG_TYPE = {"Content-Type": "image/png"}
BOMB_SIDE = 12000  # 12000 x 12000 RGB: 432 MB decoded, about 0.4 MB on the wire


@pytest.fixture
def store(file_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    get_settings.cache_clear()
    return file_store


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid RGB PNG of side x side black pixels: tiny compressed, huge decoded (built row by row)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * side)  # filter byte + RGB
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


CRAWL_AND_MEASURE = """
import json, resource, sys
from scrapers.crawl import run_crawl
summary = run_crawl("catalog", "limits-1", retailer="tiny", start_url=sys.argv[1], timeout_s=120,
                    setting_overrides=json.loads(sys.argv[2]))
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the scrapy child's peak RSS
print(json.dumps({"summary": summary, "child_peak_rss_bytes": peak_kib * 1024}))
"""


def test_oversized_bodies_and_a_pixel_bomb_are_dropped_without_being_decoded(store: ObjectStore):
    products = ["good", "huge-page", "huge-image", "bomb"]
    with TinyShop(products) as shop:
        shop.httpd.handle_error = lambda request, address: None  # the aborted connections: no traceback
        shop.routes["/product/huge-page"] = lambda n: (200, HTML, product_page("huge-page") + b" " * 3_000_000)
        shop.routes["/img/huge-image.jpg"] = lambda n: (200, {"Content-Type": "image/jpeg"}, jpeg() + b"\0" * 2_000_000)
        shop.routes["/product/bomb"] = lambda n: (200, HTML, product_page("bomb", "/img/bomb.png"))
        bomb = bomb_png()
        shop.routes["/img/bomb.png"] = lambda n: (200, PNG_TYPE, bomb)
        # The limits' settings (from crawl.max_page_bytes / max_image_bytes, test_network_policy.py), made small.
        overrides = {
            "AUTOTHROTTLE_ENABLED": "False",
            "DOWNLOAD_MAXSIZE": "1000000",
            "FASHIONNET_MAX_IMAGE_BYTES": "500000",
        }
        # A fresh Python process runs the crawl, so that its RUSAGE_CHILDREN peak is the scrapy child's alone.
        done = subprocess.run(
            [sys.executable, "-c", CRAWL_AND_MEASURE, shop.base_url + "/list", json.dumps(overrides)],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    summary = result["summary"]
    assert store.read_parquet("crawls/limits-1/products.parquet").column("sku").to_pylist() == ["good"]
    # The 3 MB page and the 2 MB image, cut off by their declared length (the connection is aborted).
    assert summary["failed_requests"] == {"too_large": 2}
    assert summary["drops"] == {"image_too_large": 1, "image_too_many_pixels": 1}
    # Decoding the bomb takes 432 MB for its pixels alone (and a JPEG re-encode on top); refused from its
    # header, the crawl process stays far below that.
    print("crawl child peak RSS:", result["child_peak_rss_bytes"] // 2**20, "MiB")
    assert result["child_peak_rss_bytes"] < 300 * 1024**2, result["child_peak_rss_bytes"]


def child_environ(parent_pid: int) -> dict[str, str]:
    """The environment of the scrapy child of ``parent_pid`` (found through /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent_pid and b"scrapy" in cmdline:
                raw = (entry / "environ").read_bytes()
                return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
        except (OSError, ValueError, IndexError):
            continue
    return {}


SECRETS = {
    "AIRFLOW__CORE__FERNET_KEY": "fernet-key-in-the-parent",
    "AIRFLOW__API_AUTH__JWT_SECRET": "jwt-secret-in-the-parent",
    "AIRFLOW_CONN_METADATA_DB": "postgresql://airflow:conn-password@db/airflow",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://airflow:db-password@db/airflow",
    "DATABASE_URL": "postgresql://app:app-password@db/app",
}


def test_a_crawl_that_times_out_keeps_what_it_extracted_and_gets_no_secrets(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
):
    """A shop whose last page never answers: at the deadline the child writes its three products; it is still
    waiting on that page when the grace period ends, and is killed; the products stay, the task fails."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    seen_env: dict[str, str] = {}
    release = threading.Event()

    def hanging_page(n: int):
        seen_env.update(child_environ(os.getpid()))  # read while the crawl child runs
        release.wait(60)
        return 200, HTML, product_page("slow")

    with TinyShop(["p1", "p2", "p3", "slow"]) as shop:
        shop.httpd.handle_error = lambda request, address: None
        shop.routes["/product/slow"] = hanging_page
        try:
            # 8 s: time for the child to start and fetch the three good pages even on a loaded machine.
            with pytest.raises(CrawlTimeout, match="timed out after 8s: kept 3 products") as raised:
                run_crawl(
                    "catalog",
                    "late-1",
                    retailer="tiny",
                    start_url=shop.base_url + "/list",
                    timeout_s=8,
                    timeout_grace_s=2,
                    setting_overrides={"AUTOTHROTTLE_ENABLED": "False", "DOWNLOAD_TIMEOUT": "60"},
                )
        finally:
            release.set()
    summary = raised.value.summary
    assert summary is not None and summary["timed_out"] and summary["finish_reason"] == "crawl_timeout"
    assert summary["products"] == 3
    assert sorted(store.read_parquet("crawls/late-1/products.parquet").column("sku").to_pylist()) == ["p1", "p2", "p3"]
    assert store.read_json("crawls/late-1/summary.json") == summary

    assert seen_env, "the crawl child was not found while it ran"
    assert seen_env["FASHIONNET_STORE"] == store.uri and "PATH" in seen_env
    leaked = {name for name, value in seen_env.items() if name in SECRETS or value in SECRETS.values()}
    assert not leaked and not any(name.startswith("AIRFLOW") for name in seen_env), sorted(seen_env)


def test_a_crawl_whose_deadline_passes_during_a_slow_page_adds_it_before_stopping(store: ObjectStore):
    """The deadline closes the crawl; a page in flight that answers within the grace period still counts."""
    timeout_s = 8.0
    started = time.time()

    def answers_after_the_deadline(n: int):
        time.sleep(max(0.0, started + timeout_s + 1 - time.time()))
        return 200, HTML, product_page("slow")

    with TinyShop(["p1", "slow"]) as shop:
        shop.routes["/product/slow"] = answers_after_the_deadline
        with pytest.raises(CrawlTimeout, match="kept 2 products") as raised:
            run_crawl(
                "catalog",
                "late-2",
                retailer="tiny",
                start_url=shop.base_url + "/list",
                timeout_s=timeout_s,
                timeout_grace_s=20,
                setting_overrides={"AUTOTHROTTLE_ENABLED": "False"},
            )
    assert raised.value.summary["finish_reason"] == "crawl_timeout"
    assert sorted(store.read_parquet("crawls/late-2/products.parquet").column("sku").to_pylist()) == ["p1", "slow"]
