"""The spiders' tests crawl a small built demo site and its server, shared by the tests of a module
(the demo store's fixtures, :mod:`tests.fashionnet_tools.demo_store.fixtures`)."""

from __future__ import annotations

from tests.fashionnet_tools.demo_store.fixtures import N_PRODUCTS, demo_server, demo_site

__all__ = ["N_PRODUCTS", "demo_server", "demo_site"]
