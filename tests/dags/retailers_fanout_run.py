"""Run ``fashionnet_ingest`` and ``fashionnet_repository_refresh`` with dag.test() over two retailers, one
of which fails, as test_retailer_fanout needs it.

Retailers: the demo store (a small built site on 127.0.0.1) and ``broken-shop``, a configured retailer
on the same host whose crawls cannot finish (its ``crawl.timeout_s`` override is shorter than a Scrapy
start-up, so its crawl task raises CrawlError). Inference is replaced by a deterministic fake in this
process (a stand-in ``pipeline.repository.infer`` module, as tests/pipeline/repository/test_repository.py does): this run
checks the fan-out and the partial failure, the networks are exercised by test_end_to_end.

After each run it prints one JSON line: the run's state, every task instance (task, map index, its
label, state) and what the store holds.
Usage: python tests/dags/retailers_fanout_run.py WORK_DIR STORE_URI
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import types
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fashionnet_tools.demo import configure_environment, load_dags, migrate_metadata_db  # noqa: E402

FAKE_VERSION = "v-fake"


def task_states(run) -> list[dict]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter(TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id)
        return sorted(
            (
                {"task": ti.task_id, "map_index": ti.map_index, "label": ti.rendered_map_index, "state": str(ti.state)}
                for ti in rows
            ),
            key=lambda t: (t["task"], t["map_index"]),
        )


def fake_inference_module() -> types.ModuleType:
    """``pipeline.repository.infer`` with an ``infer_shard`` that stages deterministic vectors for the planned items."""
    import pyarrow as pa

    from pipeline.repository import infer, plan

    def infer_shard(store, commit_id: str, shard: int, batch_size: int | None = None) -> dict:
        info, items = plan.shard_items(store, commit_id, shard)
        ids = items["item_id"].to_pylist()
        columns: dict[str, list] = {"item_id": ids}
        for attribute in info["attributes"]:
            classes = info["classes"][attribute]
            picks = [int(hashlib.sha1(i.encode()).hexdigest(), 16) % len(classes) for i in ids]
            columns[attribute] = [classes[p] for p in picks]
            columns[f"{attribute}_prob"] = [0.9] * len(ids)
            columns[f"{attribute}_probs"] = [
                [0.9 if c == p else 0.1 / (len(classes) - 1) for c in range(len(classes))] for p in picks
            ]
            columns[f"{attribute}_model_version"] = [info["versions"][attribute]] * len(ids)
        columns["embedding"] = [[0.6, 0.8] for _ in ids]
        columns["embedding_source"] = ["fake"] * len(ids)
        columns["inferred_at"] = [datetime.now(UTC)] * len(ids)
        summary = {
            "commit_id": commit_id,
            "shard": shard,
            "items": len(ids),
            "vectorized": len(ids),
            "skipped_undecodable": 0,
            "skipped_item_ids": [],
            "versions": info["versions"],
        }
        infer.write_shard(store, commit_id, shard, pa.table(columns), summary)
        return summary

    module = types.ModuleType("pipeline.repository.infer")
    module.infer_shard = infer_shard  # type: ignore[attr-defined]
    return module


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("store")
    cli = parser.parse_args()
    profile = cli.work_dir / "two-shops.yaml"
    profile.write_text(
        "retailers:\n"
        "  broken-shop:\n"
        "    kind: urls\n"
        "    base_url: http://127.0.0.1:9\n"
        "    entry_points: [http://127.0.0.1:9/product/1]\n"
        "    search_url: '{base_url}/search?q={query}'\n"
        "    crawl: {timeout_s: 0.2}\n"
    )
    configure_environment(argparse.Namespace(work_dir=cli.work_dir, store=cli.store, profile=str(profile)))
    migrate_metadata_db()

    from fashionnet_tools.demo_store.server import DemoStoreServer
    from fashionnet_tools.demo_store.site import build_site

    site_dir = cli.work_dir / "demo-store"
    build_site(site_dir, n_products=12, seed=5)
    with DemoStoreServer(site_dir, host="127.0.0.1", port=0) as shop:
        import os

        os.environ["FASHIONNET_SHOP_URL"] = shop.base_url
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        get_settings.cache_clear()
        store = open_store()
        dags = load_dags()

        ingest = dags["fashionnet_ingest"].test(run_conf={"review_policy": "auto_accept"})
        from pipeline.review.approval import approved_batches

        print(
            json.dumps(
                {
                    "run": "ingest",
                    "state": str(ingest.state),
                    "tasks": task_states(ingest),
                    "approved_batches": approved_batches(store),
                    "dataset_items": store.read_parquet("dataset/items.parquet").num_rows
                    if store.exists("dataset/items.parquet")
                    else None,
                }
            ),
            flush=True,
        )

        for attribute in get_settings().taxonomy.names:
            store.write_json(
                f"models/{attribute}/current.json",
                {"version": FAKE_VERSION, "classes": list(get_settings().taxonomy.classes(attribute))},
            )
        sys.modules["pipeline.repository.infer"] = fake_inference_module()
        refresh = dags["fashionnet_repository_refresh"].test()
        from pipeline.repository.dataset import read_repository

        commits = [k for k in store.list("repository/commits") if k.endswith(".json")]
        table = read_repository(store, columns=["item_id", "retailer"])
        print(
            json.dumps(
                {
                    "run": "refresh",
                    "state": str(refresh.state),
                    "tasks": task_states(refresh),
                    "commits": {k: store.read_json(k) for k in commits},
                    "repository_retailers": sorted(set(table["retailer"].to_pylist())),
                    "repository_rows": table.num_rows,
                    "curated": sorted(k for k in store.list("curation") if k.endswith("accepted.parquet")),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
