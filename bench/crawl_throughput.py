"""Crawl throughput next to the server's own capacity, on 127.0.0.1.

    .venv/bin/python -m bench.crawl_throughput [--products 1000] [--concurrency 32] [--rounds 1] [--stock-server]

1. Builds a demo site with ``--products`` products and serves it from a child process (so the server
   does not share a GIL with the load generator).
2. Capacity: ``--concurrency`` threads, each with one keep-alive HTTP/1.1 connection, fetch the sitemap
   and every product page once (``products + 1`` requests, bounded) as fast as they can.
3. Crawl: ``scrapers.crawl.run_crawl("catalog")`` over the same sitemap and pages, politeness off
   (no AutoThrottle, no delay, no robots.txt, ``--concurrency`` requests per domain), images off
   (only StoreExportPipeline). Throughput = pages / the crawl's own duration (``summary.duration_s``,
   spider open to close); the process wall time, with Scrapy's start-up, is printed too.

Prints both rates and their ratio (the goal is >= 0.5). Results are not written anywhere.
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# The demo store server, tuned so that it measures its CPU capacity and not two TCP artefacts: a listen
# backlog large enough for a burst (the stdlib's 5 drops SYNs of a burst; the kernel retries them after
# a whole second), and TCP_NODELAY (the handler writes headers and body separately; with Nagle's
# algorithm the body then waits for the client's delayed ACK, about 40 ms per keep-alive response).
SERVE = """
import sys
from pathlib import Path
from fashionnet_tools.demo_store import server
if sys.argv[3] == "tuned":
    server._StoreHTTPServer.request_queue_size = 256
    server._Handler.disable_nagle_algorithm = True
server.DemoStoreServer(Path(sys.argv[1]), port=int(sys.argv[2])).serve_forever()
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(port: int, timeout_s: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"the demo store did not start on port {port}")


def capacity(port: int, paths: list[str], concurrency: int) -> tuple[float, int]:
    """(requests per second, failures) for ``paths`` fetched by ``concurrency`` keep-alive clients."""
    lock = threading.Lock()
    queue = list(reversed(paths))
    failures = 0

    def worker() -> int:
        nonlocal failures
        done = 0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                if not queue:
                    break
                path = queue.pop()
            try:
                conn.request("GET", path, headers={"User-Agent": "fashionnet-bench"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                ok = False
            done += 1
            if not ok:
                with lock:
                    failures += 1
        conn.close()
        return done

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        total = sum(pool.map(lambda _: worker(), range(concurrency)))
    return total / (time.monotonic() - started), failures


def crawl(base_url: str, store_dir: str, concurrency: int, crawl_id: str) -> tuple[dict[str, Any], float]:
    os.environ["FASHIONNET_STORE"] = f"file://{store_dir}"
    os.environ["FASHIONNET_SHOP_URL"] = base_url
    from pipeline.settings import get_settings
    from scrapers.crawl import run_crawl

    get_settings.cache_clear()
    overrides = {
        "AUTOTHROTTLE_ENABLED": "False",
        "DOWNLOAD_DELAY": "0",
        "ROBOTSTXT_OBEY": "False",
        "CONCURRENT_REQUESTS": str(concurrency),
        "CONCURRENT_REQUESTS_PER_DOMAIN": str(concurrency),
        "ITEM_PIPELINES": '{"scrapers.pipelines.StoreExportPipeline": 800}',
        "LOG_LEVEL": "WARNING",
    }
    started = time.monotonic()
    summary = run_crawl("catalog", crawl_id, timeout_s=600, setting_overrides=overrides)
    return summary, time.monotonic() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="measure capacity and crawl this many times each")
    parser.add_argument("--stock-server", action="store_true", help="serve without the backlog and TCP_NODELAY tuning")
    args = parser.parse_args(argv)
    from fashionnet_tools.demo_store.site import build_site, load_catalog

    work = Path(tempfile.mkdtemp(prefix="fashionnet-bench-"))
    site = build_site(work / "site", n_products=args.products, seed=1)
    paths = ["/sitemap.xml"] + [f"/product/{p['sku']}" for p in load_catalog(site)]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(site), str(port), "stock" if args.stock_server else "tuned"],
        cwd=REPO_ROOT,
        env=env,
    )
    try:
        wait_for(port)
        base_url = f"http://127.0.0.1:{port}"
        for round_ in range(1, args.rounds + 1):
            rate, failures = capacity(port, paths, args.concurrency)
            summary, wall = crawl(base_url, str(work / "store"), args.concurrency, f"bench-{round_}")
            crawl_rate = summary["pages"] / summary["duration_s"]
            print(f"round {round_}: {len(paths)} pages, concurrency {args.concurrency}")
            print(f"  server capacity (keep-alive http.client pool): {rate:8.1f} pages/s  ({failures} failures)")
            print(
                f"  scrapy crawl, politeness off:                  {crawl_rate:8.1f} pages/s  "
                f"({summary['pages']} pages, {summary['products']} products in {summary['duration_s']:.2f} s; "
                f"{wall:.2f} s with process start-up)"
            )
            print(f"  ratio crawl / capacity: {crawl_rate / rate:.2f}  (goal >= 0.5)")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
