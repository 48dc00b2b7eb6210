"""A small built demo site and its server, module-scoped: the demo store's own tests use them
(``conftest.py`` here), and so do the spiders' tests, which crawl it (``tests/scrapers/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fashionnet_tools.demo_store.server import DemoStoreServer
from fashionnet_tools.demo_store.site import build_site

N_PRODUCTS = 40


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_site(tmp_path_factory.mktemp("site"), n_products=N_PRODUCTS, seed=3)


@pytest.fixture(scope="module")
def demo_server(demo_site: Path) -> Iterator[DemoStoreServer]:
    with DemoStoreServer(demo_site) as server:
        yield server
