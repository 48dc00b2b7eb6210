"""The import layers of the tree, checked on every import statement (module level and inside functions).

Floors, bottom up:

* the ground floor (:data:`GROUND`): settings, the object store, its layout (every key and prefix),
  run records and the image/hash helpers both spiders and networks need; it imports no other project
  module;
* ``scrapers/`` and ``models/``: the ground floor only, never a pipeline stage;
* the pipeline stages (:data:`STAGES`, one sub-package of ``pipeline/`` each, in the order the DAGs run
  them): anything below, and each other;
* DAG files and the tools (:data:`TOOLS`, the package ``fashionnet_tools/``: the ``fashionnet`` command,
  the demo driver, the demo store, the Airflow launcher): on top, imported by nothing in the library.

The ground floor is the top-level modules of ``pipeline/``; every other module of ``pipeline/`` belongs
to a stage (:func:`test_every_pipeline_module_is_on_the_ground_floor_or_in_a_stage`). No import goes up
(:data:`KNOWN_UPWARD` is empty): a new upward import fails :func:`test_no_module_imports_from_a_floor_above_it`.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "models", "scrapers", "dags", "fashionnet_tools")
GROUND = frozenset(
    {
        "pipeline.settings",
        "pipeline.storage",
        "pipeline.store_layout",
        "pipeline.runs",
        "pipeline.hashing",
        "pipeline.images",
    }
)
STAGES = ("pipeline.curation", "pipeline.review", "pipeline.dataset", "pipeline.repository", "pipeline.recommend")
TOOLS = "fashionnet_tools"
KNOWN_UPWARD: frozenset[tuple[str, str]] = frozenset()


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py")}


def imported_modules(path: Path, known: set[str] | dict[str, Path]) -> set[str]:
    """Project modules ``path`` imports; ``from package import module`` counts as the module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(
                f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in known
            )
    return {name for name in found if name.split(".")[0] in PACKAGES}


def stage(module: str) -> str | None:
    """The stage sub-package ``module`` belongs to, if any."""
    return next((s for s in STAGES if module == s or module.startswith(s + ".")), None)


def floor(module: str) -> int:
    """0 ground, 1 spiders and networks, 2 pipeline stages, 3 DAG files and tools."""
    if module in GROUND:
        return 0
    if module.split(".")[0] in ("dags", TOOLS):
        return 3
    if module.split(".")[0] in ("scrapers", "models"):
        return 1
    return 2


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a module imports from a floor above its own. Modules of one floor
    may import each other, except that the ground floor stands alone and the package marker ``pipeline``
    (its ``__init__``) belongs to no floor."""
    found = []
    for importer, names in graph.items():
        for imported in names:
            if imported == "pipeline" or imported == importer:
                continue
            if floor(imported) > floor(importer):
                found.append((importer, imported))
    return sorted(found)


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, modules) for name, path in modules.items()}


def test_no_module_imports_from_a_floor_above_it():
    upward = set(upward_imports(import_graph()))
    assert upward - KNOWN_UPWARD == set(), "imports from a floor above (see this module's docstring)"
    assert upward >= KNOWN_UPWARD, "a known upward import is gone: take it off KNOWN_UPWARD"


def test_every_pipeline_module_is_on_the_ground_floor_or_in_a_stage():
    modules = [m for m in project_modules() if m.split(".")[0] == "pipeline" and m != "pipeline"]
    assert set(modules) >= GROUND
    assert all(m.count(".") == 1 for m in GROUND), "the ground floor: top-level modules of pipeline/"
    assert [m for m in modules if m not in GROUND and stage(m) is None] == [], "a pipeline module outside the stages"
    assert all((REPO_ROOT / s.replace(".", "/") / "__init__.py").exists() for s in STAGES)


def test_the_ground_floor_imports_only_itself():
    graph = import_graph()
    for module in sorted(GROUND):
        assert graph[module] - GROUND == set(), module


def test_an_upward_import_is_found():
    graph = {
        "models.train": {"pipeline.storage", "pipeline.recommend"},
        "pipeline.storage": {"pipeline.settings"},
        "pipeline.recommend": {"models.inference", "fashionnet_tools.demo"},
        "dags.x": {"pipeline.recommend"},
    }
    assert upward_imports(graph) == [
        ("models.train", "pipeline.recommend"),
        ("pipeline.recommend", "fashionnet_tools.demo"),
    ]


def test_from_package_import_module_counts_as_the_module(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from pipeline import repository, storage\n    import scrapers.crawl\n")
    known = {"pipeline.repository", "pipeline.storage"}
    assert imported_modules(source, known) == {"pipeline", "pipeline.repository", "pipeline.storage", "scrapers.crawl"}


def test_the_tools_are_the_top_floor_and_nothing_in_the_library_imports_them():
    graph = import_graph()
    tools = {name for name in graph if name.split(".")[0] == TOOLS}
    assert {"fashionnet_tools.cli", "fashionnet_tools.demo", "fashionnet_tools.airflow_local"} <= tools
    assert all(floor(name) == 3 for name in tools)
    assert (
        not (REPO_ROOT / "pipeline" / "demo.py").exists() and not (REPO_ROOT / "pipeline" / "airflow_local.py").exists()
    )
    importers = sorted(name for name, names in graph.items() if name not in tools and names & tools)
    assert importers == [], "the library imports a tool"
