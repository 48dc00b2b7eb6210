"""The demo store's tests: a small built site and its server (:mod:`.fixtures`, shared with the spiders' tests)."""

from __future__ import annotations

from tests.fashionnet_tools.demo_store.fixtures import demo_server, demo_site

__all__ = ["demo_server", "demo_site"]
