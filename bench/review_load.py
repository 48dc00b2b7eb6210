"""Load test of the review page as a team uses it: N reviewers working one queue at once, for a bounded time.

    .venv/bin/python -m bench.review_load                       # 20 reviewers, 60 s, a 600-item queue
    .venv/bin/python -m bench.review_load --reviewers 5 --duration 10 --items 100

Everything runs on 127.0.0.1 in a temporary folder: a ``file://`` store with one queued batch (tiny
JPEGs), one reviewer account per client, and the review page served by ``python -m pipeline.review.web
serve`` in a child process (uvicorn, one worker, as deployed standalone). Each client thread logs in
(retrying when the login is answered 429/503, as the page tells a person to), loads the batch, and then
until the time is up: picks a pending item of the shared queue (several reviewers may pick the same
one, as people do), fetches its image, posts one decision (accept 60 %, reject 20 %, relabel 15 %,
skip 5 %), waits ``--think`` seconds on average (0: none, a stress test) and, every 10 decisions, reloads
the batch. Afterwards the audit log is read back from the
store: its rows must equal the decisions the clients saw recorded (HTTP 200), one log object per call.

Printed: decisions made and recorded, decisions/s, p50/p95/max latency of a decision POST (and of the
batch reload), errors by status, and the server's resident memory (start, peak, end; sampled every
0.2 s with psutil). ``--json`` writes the same as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pyarrow as pa

REPO_ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "load test password"
CSRF = {"X-Requested-With": "fashionnet-review"}
BATCH = "load-batch"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 80), (180, 60, 60)).save(buffer, format="JPEG")
    return buffer.getvalue()


def make_queue(store: Any, items: int) -> list[str]:
    """A curated, queued batch of ``items`` items as curation leaves it; returns the item ids."""
    from pipeline.review.queue import enqueue

    start = datetime(2026, 12, 1, tzinfo=UTC)
    ids = [f"item{n:05d}" for n in range(items)]
    image = tiny_jpeg()
    rows = []
    for n, item_id in enumerate(ids):
        store.put_bytes(f"images/full/{item_id}.jpg", image)
        rows.append(
            {
                "item_id": item_id,
                "retailer": "demo-store",
                "product_url": f"http://shop.test/p/{item_id}",
                "sku": item_id,
                "title": f"Item {n}",
                "price": 19.0,
                "currency": "EUR",
                "category": "tops",
                "image_url": f"http://shop.test/i/{item_id}.jpg",
                "image_key": f"images/full/{item_id}.jpg",
                "crawled_at": start + timedelta(seconds=n),
                "phash": n,
                "dhash": n,
                "content_sha256": f"sha{n}",
                "width": 64,
                "height": 80,
                "cluster_id": f"sha{n}",
            }
        )
    schema = pa.schema(
        [
            *(pa.field(n, pa.string()) for n in ("item_id", "retailer", "product_url", "sku", "title")),
            pa.field("price", pa.float64()),
            pa.field("currency", pa.string()),
            pa.field("category", pa.string()),
            pa.field("image_url", pa.string()),
            pa.field("image_key", pa.string()),
            pa.field("crawled_at", pa.timestamp("us", tz="UTC")),
            pa.field("phash", pa.uint64()),
            pa.field("dhash", pa.uint64()),
            pa.field("content_sha256", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("cluster_id", pa.string()),
        ]
    )
    store.write_parquet(f"curation/{BATCH}/accepted.parquet", pa.Table.from_pylist(rows, schema=schema))
    store.write_json(f"curation/{BATCH}/summary.json", {"crawl_id": "load-crawl", "batch_id": BATCH})
    enqueue(store, BATCH)
    return ids


@dataclass
class ClientResult:
    recorded: int = 0
    decision_s: list[float] = field(default_factory=list)
    reload_s: list[float] = field(default_factory=list)
    login_tries: int = 0
    errors: Counter = field(default_factory=Counter)


def log_in(client: httpx.Client, name: str, result: ClientResult, deadline: float) -> bool:
    while time.monotonic() < deadline:
        result.login_tries += 1
        response = client.post("/login", data={"username": name, "password": PASSWORD})
        if response.status_code == 303:
            return True
        result.errors[f"login {response.status_code}"] += 1
        time.sleep(float(response.headers.get("Retry-After", "1")) * random.uniform(0.5, 1.0))
    return False


def reviewer(
    base_url: str,
    name: str,
    stop_at: float,
    attribute: str,
    classes: list[str],
    seed: int,
    result: ClientResult,
    think_s: float = 0.0,
) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base_url, timeout=60, follow_redirects=False) as client:
        if not log_in(client, name, result, stop_at):
            return
        pending: list[str] = []
        made = 0
        while time.monotonic() < stop_at:
            if made % 10 == 0 or not pending:
                started = time.perf_counter()
                response = client.get(f"/api/batches/{BATCH}/items", params={"pending_first": "true"})
                result.reload_s.append(time.perf_counter() - started)
                if response.status_code != 200:
                    result.errors[f"items {response.status_code}"] += 1
                    continue
                pending = [i["item_id"] for i in response.json()["items"] if i["status"] == "pending"]
                if not pending:
                    break
            item = pending.pop(rng.randrange(min(len(pending), 30)))  # near the head of the queue, as people work
            if client.get(f"/api/batches/{BATCH}/images/{item}").status_code != 200:
                result.errors["image"] += 1
            roll = rng.random()
            if roll < 0.6:
                decision = {"item_id": item, "decision": "accept"}
            elif roll < 0.8:
                decision = {"item_id": item, "decision": "reject"}
            elif roll < 0.95:
                decision = {
                    "item_id": item,
                    "decision": "relabel",
                    "attribute": attribute,
                    "new_label": rng.choice(classes),
                }
            else:
                decision = {"item_id": item, "decision": "skip"}
            started = time.perf_counter()
            response = client.post(f"/api/batches/{BATCH}/decisions", json={"decisions": [decision]}, headers=CSRF)
            elapsed = time.perf_counter() - started
            made += 1
            if response.status_code == 200 and response.json()["recorded"] == 1:
                result.recorded += 1
                result.decision_s.append(elapsed)
            else:
                result.errors[f"decision {response.status_code}"] += 1
            if think_s:
                time.sleep(rng.uniform(0.5, 1.5) * think_s)  # a person looking at the next image


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(
    reviewers: int = 20, duration_s: float = 60.0, items: int = 600, seed: int = 17, think_s: float = 0.0
) -> dict[str, Any]:
    """Run the load test; returns its figures (see the module docstring)."""
    from pipeline.review.queue import read_decisions
    from pipeline.review.web import auth
    from pipeline.settings import get_settings
    from pipeline.storage import ObjectStore

    taxonomy = get_settings().taxonomy
    attribute = taxonomy.names[0]
    classes = list(taxonomy.classes(attribute))
    with tempfile.TemporaryDirectory(prefix="review-load-") as folder:
        store = ObjectStore(f"file://{folder}/store")
        make_queue(store, items)
        names = [f"reviewer{n:02d}" for n in range(reviewers)]
        for name in names:
            auth.add_reviewer(store, name, PASSWORD)
        port = free_port()
        env = {
            **os.environ,
            "FASHIONNET_REVIEW_SECRET": "load-test-secret-" + "x" * 32,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        }
        # the server's log goes to a file: a pipe nobody reads fills up and stops the server mid-run
        server_log = open(Path(folder) / "server.log", "wb")  # noqa: SIM115 - closed after the server stops
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.review.web",
                "--store",
                store.uri,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            cwd=REPO_ROOT,
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_until_serving(base_url, server, Path(folder) / "server.log")
            process = psutil.Process(server.pid)
            memory = [process.memory_info().rss]
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.2):
                    memory.append(process.memory_info().rss)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            results = [ClientResult() for _ in names]
            stop_at = time.monotonic() + duration_s
            started = time.monotonic()
            threads = [
                threading.Thread(
                    target=reviewer, args=(base_url, name, stop_at, attribute, classes, seed + n, results[n], think_s)
                )
                for n, name in enumerate(names)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
            done.set()
            sampler.join()
            memory.append(process.memory_info().rss)
        finally:
            server.terminate()
            server.wait(timeout=30)
            server_log.close()
        log = read_decisions(store, BATCH)
        log_objects = len([k for k in store.list(f"review/decisions/{BATCH}") if k.endswith(".parquet")])
    decision_s = [s for r in results for s in r.decision_s]
    reload_s = [s for r in results for s in r.reload_s]
    recorded = sum(r.recorded for r in results)
    errors = sum((r.errors for r in results), Counter())
    return {
        "reviewers": reviewers,
        "duration_s": round(elapsed, 1),
        "queue_items": items,
        "think_s": think_s,
        "decisions_recorded_by_clients": recorded,
        "decision_rows_in_store": len(log),
        "decision_objects_in_store": log_objects,
        "consistent": recorded == len(log) == log_objects,
        "decisions_per_s": round(recorded / elapsed, 2),
        "decision_latency_ms": {
            "p50": round(1000 * percentile(decision_s, 0.5), 1),
            "p95": round(1000 * percentile(decision_s, 0.95), 1),
            "max": round(1000 * max(decision_s, default=float("nan")), 1),
        },
        "reload_latency_ms": {
            "p50": round(1000 * percentile(reload_s, 0.5), 1),
            "p95": round(1000 * percentile(reload_s, 0.95), 1),
        },
        "login_tries": sum(r.login_tries for r in results),
        "errors": dict(errors),
        "server_rss_mb": {
            "start": round(memory[0] / 2**20, 1),
            "peak": round(max(memory) / 2**20, 1),
            "end": round(memory[-1] / 2**20, 1),
        },
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def wait_until_serving(base_url: str, server: subprocess.Popen, log_path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the review server exited: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{base_url}/login", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the review server did not answer within {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.review_load", description=__doc__.split("\n")[0])
    parser.add_argument("--reviewers", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of reviewing")
    parser.add_argument("--items", type=int, default=600, help="items in the queue")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument(
        "--think",
        type=float,
        default=0.0,
        help="mean seconds a reviewer looks at an item between decisions (0: as fast as possible)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = run(args.reviewers, args.duration, args.items, args.seed, args.think)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if figures["consistent"] else 1


if __name__ == "__main__":
    sys.exit(main())
