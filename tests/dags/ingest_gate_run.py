"""Run ``fashionnet_ingest`` twice on one day, as test_ingest_review_gate needs it.

1. ``review_policy=auto_accept`` (the morning's run): the policy accepts every item and approves the batch.
2. ``review_policy=manual`` on the same day, on a shop with other products (so its batch is not all copies
   of the first): a batch of its own, whose items nobody decided. It waits in ``approve_batch``;
   ``dag.test()`` never resolves a Human-in-the-loop task, so this run marks it successful explicitly
   (``mark_success_pattern``), which is what "Approve" does; everything downstream then runs for real.

3. The shop down (nothing listens on its port): the crawl fails, naming the host; nothing downstream runs.

After each run it prints one JSON line: the run's batch, its queue, decisions and approval, the dataset.
Usage: python tests/dags/ingest_gate_run.py WORK_DIR STORE_URI
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fashionnet_tools.demo import configure_environment, load_dags, migrate_metadata_db, run_dag  # noqa: E402


def report(store, label: str, seen: set[str]) -> None:
    from pipeline.review.approval import approval, approved_batches
    from pipeline.review.queue import queue_batches, read_decisions, read_queue

    new = sorted(set(queue_batches(store)) - seen)  # the batch this run queued
    seen.update(new)
    batch = new[0] if len(new) == 1 else None
    items = store.read_parquet("dataset/items.parquet").num_rows if store.exists("dataset/items.parquet") else None
    print(
        json.dumps(
            {
                "run": label,
                "batches": new,
                "approved_batches": approved_batches(store),
                "approval": approval(store, batch) if batch else None,
                "dataset_items": items,
                "queue_rows": len(read_queue(store, batch)) if batch else 0,
                "decisions": len(read_decisions(store, batch)) if batch else 0,
            }
        ),
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("store")
    cli = parser.parse_args()
    args = argparse.Namespace(work_dir=cli.work_dir, store=cli.store, profile="test")
    configure_environment(args)
    migrate_metadata_db()

    import os

    from fashionnet_tools.demo_store.server import DemoStoreServer
    from fashionnet_tools.demo_store.site import build_site
    from pipeline.settings import get_settings
    from pipeline.storage import open_store

    seen: set[str] = set()
    ingest = None
    for label, seed, conf, mark in (
        ("auto_accept", 3, {"review_policy": "auto_accept"}, None),
        ("manual", 4, {"review_policy": "manual"}, "^approve_batch$"),
    ):
        site_dir = cli.work_dir / f"demo-store-{seed}"
        build_site(site_dir, n_products=24, seed=seed)
        with DemoStoreServer(site_dir, host="127.0.0.1", port=0) as shop:
            os.environ["FASHIONNET_SHOP_URL"] = shop.base_url
            get_settings.cache_clear()
            store = open_store()
            ingest = ingest or load_dags()["fashionnet_ingest"]
            run_dag(ingest, conf, mark_success_pattern=mark)
            report(store, label, seen)

    import socket

    from pipeline.review.queue import queue_batches

    # A free port picked here: importing tests.conftest (which has one) would drop FASHIONNET_STORE from
    # the environment, and this run and its checks would read and write the default store (var/store/).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        down = f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there
    os.environ["FASHIONNET_SHOP_URL"] = f"http://{down}"
    get_settings.cache_clear()
    store = open_store()
    before = store.version("dataset/items.parquet")
    run = ingest.test(run_conf={"review_policy": "auto_accept"})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    print(
        json.dumps(
            {
                "run": "shop_down",
                "host": down,
                "state": str(run.state),
                "tasks": states,
                "dataset_unchanged": store.version("dataset/items.parquet") == before,
                "new_batches": sorted(set(queue_batches(store)) - seen),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
