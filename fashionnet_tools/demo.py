"""`make demo`: the whole FashionNet pipeline on the embedded default, through the four DAGs.

It starts the bundled demo store on 127.0.0.1, then runs ``fashionnet_ingest``, ``fashionnet_train``,
``fashionnet_repository_refresh`` and ``fashionnet_recommend`` in order with ``dag.test()`` against a
local metadata database: the DAGs are the only code path. At the end it prints where every output is,
the accuracy of each attribute network, and the top recommendations.

Airflow reads its configuration when first imported, so the environment is set up before that.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from fashionnet_tools import console
from pipeline import store_layout
from pipeline.settings import REPO_ROOT

logger = logging.getLogger(__name__)

DAG_ORDER = ["fashionnet_ingest", "fashionnet_train", "fashionnet_repository_refresh", "fashionnet_recommend"]
DEMO_USER = "demo-user"
DEMO_USER_STYLE = {"pattern": "striped", "fabric": "cotton", "style": "casual", "shape": "half-sleeve"}


DESCRIPTION = __doc__.splitlines()[0]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's options on ``parser`` (this module's own, or ``fashionnet demo``'s)."""
    parser.add_argument("--store", help="store URI (default: settings, i.e. file://var/store)")
    parser.add_argument(
        "--work-dir", type=Path, default=REPO_ROOT / "var", help="where the demo site and the Airflow metadata DB live"
    )
    parser.add_argument("--products", type=int, default=240, help="products in the demo store")
    parser.add_argument("--profile", default="demo", help="settings profile (config/profiles/<name>.yaml)")
    parser.add_argument("--k", type=int, default=10, help="recommendations to write")
    parser.add_argument(
        "--port",
        type=int,
        default=8765,
        help="demo store port; item ids derive from product URLs, so keep it fixed across runs "
        "(0 = any free port, for throwaway stores)",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return add_arguments(argparse.ArgumentParser(description=DESCRIPTION)).parse_args(argv)


def configure_environment(args: argparse.Namespace) -> None:
    """Airflow, TensorFlow and FashionNet settings for this process and its subprocesses."""
    airflow_home = args.work_dir / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    # SQLite would create the metadata database with the umask's mode (0644); created 0600 first, it keeps it.
    os.close(os.open(airflow_home / "airflow.db", os.O_WRONLY | os.O_CREAT, 0o600))
    (airflow_home / "airflow.db").chmod(0o600)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
            "FASHIONNET_PROFILE": args.profile,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        }
    )
    # Airflow's in-process test client trips a third-party deprecation notice on every run; it is noise here.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.store:
        os.environ["FASHIONNET_STORE"] = args.store
    sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "dags")]


def migrate_metadata_db() -> None:
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def load_dags() -> dict[str, Any]:
    from airflow.dag_processing.dagbag import BundleDagBag

    dags_dir = REPO_ROOT / "dags"
    bag = BundleDagBag(dag_folder=str(dags_dir), bundle_path=dags_dir)
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    return {dag_id: bag.dags[dag_id] for dag_id in DAG_ORDER}


def run_dag(dag: Any, conf: dict[str, Any] | None = None, mark_success_pattern: str | None = None) -> float:
    """Run one DAG with ``dag.test()``; raise if the run did not succeed. Returns seconds taken.

    ``mark_success_pattern``: task ids marked successful instead of run (a Human-in-the-loop task,
    which ``dag.test()`` never resolves).
    """
    logger.info("\n=== %s ===", dag.dag_id)
    started = time.perf_counter()
    run = dag.test(run_conf=conf or {}, mark_success_pattern=mark_success_pattern)
    elapsed = time.perf_counter() - started
    state = str(getattr(run, "state", run))
    logger.info("=== %s: %s in %.1fs ===", dag.dag_id, state, elapsed)
    if "success" not in state:
        raise RuntimeError(f"{dag.dag_id} finished {state}; see the task output above")
    return elapsed


def upload_user_images(store: Any, site_dir: Path) -> list[str]:
    from fashionnet_tools.demo_store.site import make_user_images

    paths = make_user_images(site_dir / "user-photos", n=4, seed=11, **DEMO_USER_STYLE)
    return [store.put_bytes(store_layout.user_image_key(DEMO_USER, path.name), path.read_bytes()) for path in paths]


def truth_accuracy(store: Any, site_dir: Path) -> dict[str, float]:
    """Accuracy of the repository's fashion vectors against the demo store's hidden true labels,
    on the items of the dataset's test split (never seen in training)."""
    from fashionnet_tools.demo_store.site import load_ground_truth
    from pipeline.repository.dataset import read_repository
    from pipeline.settings import get_settings

    attributes = get_settings().taxonomy.names
    repository = read_repository(store, columns=["item_id", "product_url", *attributes]).to_pandas()
    split = store.read_parquet(store_layout.DATASET_SPLIT_KEY).to_pandas()
    test_items = repository[repository["item_id"].isin(split.loc[split["split"] == "test", "item_id"])].copy()
    truth = load_ground_truth(site_dir).to_pandas()
    test_items["sku"] = test_items["product_url"].str.rsplit("/", n=1).str[-1]
    joined = test_items.merge(truth, on="sku", suffixes=("", "_true"))
    if joined.empty:
        return {}
    return {attr: float((joined[attr] == joined[f"{attr}_true"]).mean()) for attr in attributes}


def print_results(store: Any, site_dir: Path, timings: dict[str, float]) -> None:
    """The demo's answer, print()ed to stdout (not logged): the networks' accuracy, the top recommendations,
    where every output is."""
    import pandas as pd

    from models.registry import current
    from pipeline.settings import get_settings

    attributes = get_settings().taxonomy.names
    print(
        "\n=== Attribute networks: accuracy on the test split, against its weak labels and against the"
        " demo store's hidden true labels ==="
    )
    truth = truth_accuracy(store, site_dir)
    rows = []
    for attribute in attributes:
        model = current(store, attribute) or {}
        rows.append(
            {
                "attribute": attribute,
                "version": model.get("version"),
                "val_accuracy": model.get("val_accuracy"),
                "test_accuracy": model.get("test_accuracy"),
                "test_vs_hidden_truth": truth.get(attribute),
            }
        )
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    from pipeline.recommend.outputs import latest_run

    # recommendations/date=<YYYY-MM-DD>/run=<run>/user_id=<user>/recommendations.parquet: the latest run
    latest = latest_run(store, DEMO_USER)
    if latest is None:
        raise RuntimeError(f"no recommendations for {DEMO_USER} under {store.url(store_layout.RECOMMENDATIONS_PREFIX)}")
    run_date, run = latest
    recs = store.read_parquet(store_layout.recommendations_key(DEMO_USER, run_date, run)).to_pandas()
    columns = ["rank", "title", "price", "score_kind", "score", "score_matches", *attributes]
    print(f"\n=== Top recommendations for {DEMO_USER} (profile: {DEMO_USER_STYLE}) ===")
    print(recs[[c for c in columns if c in recs.columns]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    html_key = store_layout.recommendation_page_key(DEMO_USER, run_date, run)
    print("\n=== Outputs ===")
    for label, prefix in [
        ("product images", store_layout.IMAGES_PREFIX),
        ("crawls", store_layout.CRAWLS_PREFIX),
        ("curation", store_layout.CURATION_PREFIX),
        ("review queue + audit log", store_layout.REVIEW_PREFIX),
        ("dataset + split", store_layout.DATASET_PREFIX),
        ("models", store_layout.MODELS_PREFIX),
        ("fashion-vector repository", store_layout.REPOSITORY_PREFIX),
        ("recommendations (Parquet)", store_layout.RECOMMENDATIONS_PREFIX),
        ("style profiles", store_layout.PROFILES_PREFIX),
        ("recommendation pages", store_layout.RECOMMENDATION_PAGES_PREFIX),
    ]:
        print(f"{label:28s} {store.url(prefix)}  ({len(store.list(prefix))} objects)")
    page = store.local_path(html_key)
    print(f"{'recommendations page':28s} {page or store.url(html_key)}")
    print("\nDAG wall times: " + ", ".join(f"{dag_id} {secs:.0f}s" for dag_id, secs in timings.items()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console.configure_logging()  # progress lines bare on stdout; the results below are print()ed
    return run(args)


def run(args: argparse.Namespace) -> int:
    """The whole pipeline with ``args`` (:func:`add_arguments`); 0 when it finished."""
    started = time.perf_counter()
    configure_environment(args)
    migrate_metadata_db()

    from fashionnet_tools.demo_store.server import DemoStoreServer
    from fashionnet_tools.demo_store.site import build_site

    site_dir = args.work_dir / "demo-store"
    if not (site_dir / "catalog.json").exists():
        build_site(site_dir, n_products=args.products, seed=7)
    with DemoStoreServer(site_dir, host="127.0.0.1", port=args.port) as shop:
        os.environ["FASHIONNET_SHOP_URL"] = shop.base_url  # before settings are first read
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        get_settings.cache_clear()
        store = open_store()
        logger.info("demo store: %s   object store: %s", shop.base_url, store.uri)
        upload_user_images(store, site_dir)
        dags = load_dags()
        timings = {
            dag_id: run_dag(dags[dag_id], {"k": args.k} if dag_id == "fashionnet_recommend" else None)
            for dag_id in DAG_ORDER
        }
    print_results(store, site_dir, timings)
    logger.info("\nDemo finished in %.0fs.", time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
