"""Run ``fashionnet_ingest`` twice on one small demo store, as test_ingest_review_gate needs it.

1. ``review_policy=manual``: the batch waits in ``approve_batch``. ``dag.test()`` never resolves a
   Human-in-the-loop task, so this run marks it successful explicitly (``mark_success_pattern``), which
   is what "Approve" does; everything downstream then runs for real.
2. ``review_policy=auto_accept`` on the same day (the same batch): the policy accepts what no reviewer
   decided and approves the batch itself.

After each run it prints one JSON line with the approval record and the dataset summary.
Usage: python tests/dags/ingest_gate_run.py WORK_DIR STORE_URI
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.demo import configure_environment, load_dags, migrate_metadata_db, run_dag  # noqa: E402


def report(store, label: str) -> None:
    from pipeline.approval import approval, approved_batches

    batches = approved_batches(store)
    record = approval(store, batches[0]) if batches else None
    items = store.read_parquet("dataset/items.parquet").num_rows if store.exists("dataset/items.parquet") else None
    queued = [k for k in store.list("review/queue") if k.endswith(".parquet")]
    queue_rows = store.read_parquet(queued[0]).num_rows if queued else 0
    print(json.dumps({"run": label, "approved_batches": batches, "approval": record, "dataset_items": items,
                      "queue_rows": queue_rows}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("store")
    cli = parser.parse_args()
    args = argparse.Namespace(work_dir=cli.work_dir, store=cli.store, profile="test")
    configure_environment(args)
    migrate_metadata_db()

    from scrapers.demo_store.server import DemoStoreServer
    from scrapers.demo_store.site import build_site

    site_dir = cli.work_dir / "demo-store"
    build_site(site_dir, n_products=24, seed=3)
    with DemoStoreServer(site_dir, host="127.0.0.1", port=0) as shop:
        import os

        os.environ["FASHIONNET_SHOP_URL"] = shop.base_url
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        get_settings.cache_clear()
        store = open_store()
        ingest = load_dags()["fashionnet_ingest"]
        run_dag(ingest, {"review_policy": "manual"}, mark_success_pattern="^approve_batch$")
        report(store, "manual")
        run_dag(ingest, {"review_policy": "auto_accept"})
        report(store, "auto_accept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
