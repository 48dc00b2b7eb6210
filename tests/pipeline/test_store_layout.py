"""The store layout: its key functions, and the table of ``docs/architecture.md`` checked against it."""

from __future__ import annotations

import ast
import re
import sys
from datetime import date
from pathlib import Path

import pytest

from pipeline import store_layout as L

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "docs" / "architecture.md"

# (name in store_layout, arguments, the key it builds): one call per pattern of the layout at least.
EXAMPLES = [
    ("image_key", ("full/0a1b2c.jpg",), "images/full/0a1b2c.jpg"),
    ("crawl_products_key", ("catalog-20261101",), "crawls/catalog-20261101/products.parquet"),
    ("crawl_weak_labels_key", ("catalog-20261101",), "crawls/catalog-20261101/weak_labels.parquet"),
    ("crawl_summary_key", ("catalog-20261101",), "crawls/catalog-20261101/summary.json"),
    ("seen_key", ("demo-store",), "crawls/_seen/demo-store.parquet"),
    ("curation_accepted_key", ("ingest-20261101",), "curation/ingest-20261101/accepted.parquet"),
    ("curation_rejections_key", ("ingest-20261101",), "curation/ingest-20261101/rejections.parquet"),
    ("curation_duplicates_key", ("ingest-20261101",), "curation/ingest-20261101/duplicates.parquet"),
    ("curation_summary_key", ("ingest-20261101",), "curation/ingest-20261101/summary.json"),
    ("hash_index_key", ("ingest", "ingest-20261101"), "curation/hash_index/ingest/ingest-20261101.parquet"),
    ("review_queue_key", ("ingest-20261101",), "review/queue/ingest-20261101.parquet"),
    (
        "review_decision_key",
        ("ingest-20261101", "20261101T101010000000Z", "ann", "0f" * 16),
        f"review/decisions/ingest-20261101/20261101T101010000000Z-ann-{'0f' * 16}.parquet",
    ),
    ("review_predictions_key", ("ingest-20261101",), "review/predictions/ingest-20261101.parquet"),
    ("approval_key", ("ingest-20261101",), "review/approvals/ingest-20261101.json"),
    ("rejection_key", ("ingest-20261101",), "review/rejections/ingest-20261101.json"),
    ("REVIEWERS_KEY", None, "review/reviewers.json"),
    ("login_throttle_key", ("ab" * 20,), f"review/login-throttle/{'ab' * 20}.json"),
    ("DATASET_ITEMS_KEY", None, "dataset/items.parquet"),
    ("DATASET_SPLIT_KEY", None, "dataset/split.parquet"),
    ("DATASET_SPLIT_REPORT_KEY", None, "dataset/split_report.json"),
    ("model_file_key", ("category", "v20261101T020000"), "models/category/v20261101T020000/model.keras"),
    ("model_metrics_key", ("category", "v20261101T020000"), "models/category/v20261101T020000/metrics.json"),
    (
        "model_artifact_key",
        ("category", "v20261101T020000", "training_curves.png"),
        "models/category/v20261101T020000/training_curves.png",
    ),
    (
        "model_artifact_key",
        ("category", "v20261101T020000", "confusion_matrix.png"),
        "models/category/v20261101T020000/confusion_matrix.png",
    ),
    (
        "model_artifact_key",
        ("category", "v20261101T020000", "model_card.md"),
        "models/category/v20261101T020000/model_card.md",
    ),
    ("model_checkpoint_prefix", ("category", "v20261101T020000"), "models/category/v20261101T020000/checkpoint"),
    ("model_pointer_key", ("category",), "models/category/current.json"),
    (
        "model_promotion_key",
        ("category", "20261101T020000.000000Z", "v20261101T020000"),
        "models/category/promotions/20261101T020000.000000Z-v20261101T020000.json",
    ),
    (
        "repository_file_key",
        (date(2026, 11, 1), "Acme & Co", 3, 8),
        "repository/fashion_vectors/crawl_date=2026-11-01/retailer=Acme%20%26%20Co/part-00003-of-00008.parquet",
    ),
    ("REPOSITORY_COMMON_METADATA_KEY", None, "repository/fashion_vectors/_common_metadata"),
    ("repository_commit_key", ("catalog-20261101",), "repository/commits/catalog-20261101.json"),
    ("repository_staging_prefix", ("catalog-20261101",), "repository/_staging/catalog-20261101"),
    ("repository_plan_key", ("catalog-20261101",), "repository/_staging/catalog-20261101/plan.json"),
    ("repository_plan_items_key", ("catalog-20261101",), "repository/_staging/catalog-20261101/plan.parquet"),
    ("repository_shard_summary_key", ("catalog-20261101", 2), "repository/_staging/catalog-20261101/shard-00002.json"),
    (
        "repository_shard_vectors_key",
        ("catalog-20261101", 2),
        "repository/_staging/catalog-20261101/shard-00002.parquet",
    ),
    (
        "repository_staged_file_key",
        (
            "catalog-20261101",
            "repository/fashion_vectors/crawl_date=2026-11-01/retailer=acme/part-00000-of-00001.parquet",
        ),
        "repository/_staging/catalog-20261101/publish/crawl_date=2026-11-01/retailer=acme/part-00000-of-00001.parquet",
    ),
    ("repository_committed_key", ("catalog-20261101",), "repository/_staging/catalog-20261101/committed.json"),
    ("user_image_key", ("ann", "coat.jpg"), "users/ann/coat.jpg"),
    ("shown_key", ("ann", "2026-11-01", "scheduled__x"), "users/ann/_shown/2026-11-01/run=scheduled__x.parquet"),
    (
        "profile_key",
        ("ann", "2026-11-01", "scheduled__x"),
        "profiles/date=2026-11-01/run=scheduled__x/user_id=ann/profile.parquet",
    ),
    (
        "recommendations_key",
        ("ann", "2026-11-01", "scheduled__x"),
        "recommendations/date=2026-11-01/run=scheduled__x/user_id=ann/recommendations.parquet",
    ),
    (
        "recommendation_page_key",
        ("ann", "2026-11-01", "scheduled__x"),
        "recommendations_html/2026-11-01/run=scheduled__x/ann.html",
    ),
]

# Folder names: what each names, for one example of its parts (a key below it is a folder of the table's).
PREFIX_EXAMPLES = [
    ("crawl_prefix", ("catalog-20261101",), "crawls/catalog-20261101"),
    ("SEEN_PREFIX", None, "crawls/_seen"),
    ("curation_prefix", ("ingest-20261101",), "curation/ingest-20261101"),
    ("HASH_INDEX_PREFIX", None, "curation/hash_index"),
    ("hash_index_prefix", ("ingest",), "curation/hash_index/ingest"),
    ("REVIEW_QUEUE_PREFIX", None, "review/queue"),
    ("REVIEW_DECISIONS_PREFIX", None, "review/decisions"),
    ("review_decisions_prefix", ("ingest-20261101",), "review/decisions/ingest-20261101"),
    ("REVIEW_PREDICTIONS_PREFIX", None, "review/predictions"),
    ("APPROVALS_PREFIX", None, "review/approvals"),
    ("REJECTIONS_PREFIX", None, "review/rejections"),
    ("LOGIN_THROTTLE_PREFIX", None, "review/login-throttle"),
    ("model_version_prefix", ("category", "v1"), "models/category/v1"),
    ("model_promotions_prefix", ("category",), "models/category/promotions"),
    ("FASHION_VECTORS_PREFIX", None, "repository/fashion_vectors"),
    (
        "repository_partition_prefix",
        (date(2026, 11, 1), "acme"),
        "repository/fashion_vectors/crawl_date=2026-11-01/retailer=acme",
    ),
    ("REPOSITORY_COMMITS_PREFIX", None, "repository/commits"),
    ("REPOSITORY_STAGING_PREFIX", None, "repository/_staging"),
    ("user_prefix", ("ann",), "users/ann"),
    ("shown_prefix", ("ann",), "users/ann/_shown"),
    *[(name, None, getattr(L, name)) for name in dir(L) if name.endswith("_PREFIX") and getattr(L, name) in L.AREAS],
]


def value(name: str, args: tuple | None) -> str:
    built = getattr(L, name)
    return built if args is None else built(*args)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A table pattern as a regex: ``<path>`` is any non-empty text, another ``<part>`` any without ``/``."""
    pieces = re.split(r"(<[^>]+>)", pattern)
    return re.compile("".join(_piece_regex(p) for p in pieces))


def _piece_regex(piece: str) -> str:
    if piece == "<path>":
        return ".+"
    return "[^/]+" if piece.startswith("<") else re.escape(piece)


def doc_patterns() -> list[str]:
    """The key patterns of the store-layout table: a cell's first key in full, and each further name in it
    (``metrics.json``) as that key with its last part replaced."""
    section = DOC.read_text().split("## Store layout", 1)[1].split("\n## ", 1)[0]
    patterns = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names = re.findall(r"`([^`]+)`", line.split(" | ", 1)[0])
        first, *siblings = names
        patterns.append(first)
        folder = first.rsplit("/", 1)[0]
        patterns += [f"{folder}/{sibling}" for sibling in siblings]
    return patterns


def test_the_doc_table_lists_every_pattern_of_the_layout_and_no_other():
    listed = doc_patterns()
    assert len(listed) == len(set(listed)), "a pattern is listed twice in docs/architecture.md"
    assert set(listed) - set(L.PATTERNS) == set(), "in docs/architecture.md's table but not in store_layout.PATTERNS"
    assert set(L.PATTERNS) - set(listed) == set(), "in store_layout.PATTERNS but not in docs/architecture.md's table"


def test_every_pattern_names_a_key_or_prefix_of_the_module_and_every_key_name_has_a_pattern():
    for pattern, name in L.PATTERNS.items():
        assert hasattr(L, name), f"{pattern}: store_layout has no {name}"
    key_names = {n for n in dir(L) if n.lower().endswith("_key") and not n.startswith("_")}
    assert key_names - set(L.PATTERNS.values()) == set(), "key names without a pattern in PATTERNS"


@pytest.mark.parametrize(("name", "args", "expected"), EXAMPLES, ids=[f"{e[0]}:{e[2]}" for e in EXAMPLES])
def test_each_key_function_builds_its_pattern(name: str, args: tuple | None, expected: str):
    assert value(name, args) == expected
    patterns = [p for p, n in L.PATTERNS.items() if n == name]
    assert any(pattern_regex(p.rstrip("/")).fullmatch(expected) for p in patterns), (expected, patterns)


def test_every_pattern_has_an_example():
    covered = {
        p for p, n in L.PATTERNS.items() for e in EXAMPLES if e[0] == n and pattern_regex(p.rstrip("/")).fullmatch(e[2])
    }
    assert set(L.PATTERNS) - covered == set()


@pytest.mark.parametrize(("name", "args", "expected"), PREFIX_EXAMPLES, ids=[e[0] for e in PREFIX_EXAMPLES])
def test_each_prefix_is_a_folder_of_the_layout(name: str, args: tuple | None, expected: str):
    built = value(name, args)
    assert built == expected and not built.endswith("/")
    folders = [pattern_regex("/".join(p.split("/")[:n])) for p in L.PATTERNS for n in range(1, p.count("/") + 1)]
    assert any(f.fullmatch(built) for f in folders), f"{built} is no folder of a pattern in the table"


def test_every_prefix_name_has_an_example():
    prefix_names = {n for n in dir(L) if n.lower().endswith("_prefix") and not n.startswith("_")}
    examples = {e[0] for e in PREFIX_EXAMPLES} | set(L.PATTERNS.values())
    assert prefix_names - examples == set()


def test_the_areas_are_the_first_parts_of_the_patterns():
    assert {p.split("/", 1)[0] for p in L.PATTERNS} == set(L.AREAS)


@pytest.mark.parametrize("retailer", ["", "a/b", "../x", ".hidden", "-x", "a" * 129, None])
def test_a_malformed_seen_set_retailer_is_refused(retailer):
    with pytest.raises(ValueError, match="to name a seen-set"):
        L.seen_key(retailer)


@pytest.mark.parametrize(
    "name",
    [
        "repository_staging_prefix",
        "repository_commit_key",
        "repository_plan_key",
        "repository_plan_items_key",
        "repository_committed_key",
    ],
)
@pytest.mark.parametrize("commit_id", ["", "a/b", "..", "_x", "a b", "x" * 129])
def test_a_malformed_commit_id_is_refused(name: str, commit_id: str):
    with pytest.raises(ValueError, match="commit id"):
        getattr(L, name)(commit_id)


def test_a_malformed_commit_id_is_refused_for_shards_and_staged_files():
    with pytest.raises(ValueError, match="commit id"):
        L.repository_shard_vectors_key("a/b", 0)
    with pytest.raises(ValueError, match="commit id"):
        L.repository_staged_file_key("", "repository/fashion_vectors/x.parquet")


def test_the_recommendations_key_reads_back_its_parts():
    key = L.recommendations_key("ann", "2026-11-01", "manual__1")
    assert L.RECOMMENDATIONS_KEY_RE.fullmatch(key).groups() == ("2026-11-01", "manual__1", "ann")
    assert L.RECOMMENDATIONS_KEY_RE.fullmatch(L.profile_key("ann", "2026-11-01", "manual__1")) is None


def test_a_shown_name_is_read_in_both_layouts():
    prefix = L.shown_prefix("ann") + "/"
    assert L.SHOWN_NAME.fullmatch(L.shown_key("ann", "2026-11-01", "r1")[len(prefix) :]).group(1) == "2026-11-01"
    assert L.SHOWN_NAME.fullmatch("2026-10-31.parquet").group(1) == "2026-10-31"
    assert L.SHOWN_NAME.fullmatch("2026-10-31/other.parquet") is None


def test_the_layout_imports_only_the_standard_library():
    source = Path(L.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) - {"__future__"} == set()
