"""The review page in a real headless Chromium: log in, review a batch by keyboard, check the store.

Needs the ``playwright`` package (requirements-browser.txt) and a Chromium binary (Debian's
``/usr/bin/chromium`` or ``chromium`` on PATH; Playwright's own browser download is not used).
"""

import os
import shutil
import threading
from pathlib import Path

import pytest

from pipeline.review.queue import read_decisions, read_queue, replay
from pipeline.review.web import auth, create_app
from pipeline.settings import get_settings
from tests.conftest import free_port, wait_for_port
from tests.pipeline.review.test_review_view import make_review_batch

PASSWORD = "correct horse battery"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_ENV = "FASHIONNET_REVIEW_SCREENSHOT"


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture
def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -r requirements-browser.txt)")
    if chromium_path() is None:
        pytest.skip("no Chromium: neither /usr/bin/chromium nor `chromium` on PATH")
    return sync_playwright


@pytest.fixture
def server(file_store):
    """The app on 127.0.0.1:<free port> in a uvicorn thread, over a store with batch b1 and reviewer alice."""
    import uvicorn

    make_review_batch(file_store)
    auth.add_reviewer(file_store, "alice", PASSWORD)
    port = free_port()
    app = create_app(lambda: file_store, secret="browser-test-" + "x" * 32)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=uv.run, name="review-web", daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


def press(page, *keys: str) -> None:
    """Press ``keys`` one by one, each after the page finished the previous one's work."""
    for key in keys:
        page.keyboard.press(key)
        page.wait_for_function("() => document.body.dataset.queue === '0'", timeout=15_000)


def statuses(page) -> dict[str, str]:
    return page.eval_on_selector_all(
        "#grid .cell", "cells => Object.fromEntries(cells.map(c => [c.dataset.itemId, c.dataset.status]))"
    )


def selected(page) -> str:
    return page.get_attribute("#grid .cell.selected", "data-item-id")


def test_keyboard_review_in_a_real_browser(sync_playwright, server, file_store, tmp_path):
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)

            page.goto(server + "/")
            assert page.url.endswith("/login")
            page.fill("#username", "alice")
            page.fill("#password", "wrong password")
            page.keyboard.press("Enter")
            page.wait_for_selector(".error")
            errors.clear()  # the 401 of the wrong password is logged by Chromium; that one is expected
            page.fill("#username", "alice")
            page.fill("#password", PASSWORD)
            page.keyboard.press("Enter")
            # arrow functions, not expressions: the page's CSP (no eval) applies to Playwright's predicates too
            page.wait_for_function("() => document.body.dataset.ready === '1' && document.body.dataset.queue === '0'")
            assert page.text_content("#who") == "reviewer: alice"
            assert list(statuses(page)) == ["i1", "i2", "i3", "i4", "i5"] and selected(page) == "i1"
            assert page.locator("#preview figure.member").count() == 2  # i1's dropped duplicates d1, d2

            press(page, "a")  # accept i1 -> i2
            press(page, "r")  # reject i2 -> i3
            assert selected(page) == "i3"
            press(page, "1")  # relabel i3's pattern (the selected attribute) to class 1, checkered
            press(page, "Tab", "2")  # fabric -> chiffon
            press(page, "Shift+Tab")  # back to pattern
            assert page.get_attribute("table.attrs tr.selected", "data-attribute") == "pattern"
            press(page, "j", "s")  # skip i4 -> i5
            press(page, "k", "ArrowRight", "ArrowLeft")
            assert selected(page) == "i4"
            press(page, "u")  # undo the skip of i4
            press(page, "u")  # undo the fabric relabel of i3
            assert selected(page) == "i3"
            press(page, "Shift+A")  # accept the page: i4 and i5 are pending
            assert statuses(page) == {"i1": "accept", "i2": "reject", "i3": "accept", "i4": "accept", "i5": "accept"}
            press(page, "u")  # undo the whole page accept
            assert selected(page) == "i4" and statuses(page)["i5"] == "pending"
            press(page, "r")  # reject i4 -> i5
            press(page, "A")  # accept the page: only i5 is still pending
            press(page, "k", "k", "k", "k")  # back to i1 and its duplicate cluster
            assert selected(page) == "i1"
            assert page.text_content("#counts") == "5 items · 0 pending · 3 accepted · 2 rejected"
            assert page.eval_on_selector("#preview figure.main img", "img => img.naturalWidth") > 0
            assert page.eval_on_selector_all("#preview figure.member img", "imgs => imgs.map(i => i.naturalWidth)") == [
                96,
                96,
            ]

            screenshot = tmp_path / "review-page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
            target = os.environ.get(SCREENSHOT_ENV)  # a copy to look at
            if target:
                shutil.copy(screenshot, target)
        finally:
            browser.close()
    assert errors == []

    expected = [
        ("i1", "accept", None, None, ""),
        ("i2", "reject", None, None, ""),
        ("i3", "relabel", "pattern", "checkered", ""),
        ("i3", "relabel", "fabric", "chiffon", ""),
        ("i4", "skip", None, None, ""),
        ("i4", "undo", None, None, ""),
        ("i3", "undo", "fabric", None, ""),
        ("i4", "accept", None, None, "accept page"),
        ("i5", "accept", None, None, "accept page"),
        ("i4", "undo", None, None, ""),
        ("i5", "undo", None, None, ""),
        ("i4", "reject", None, None, ""),
        ("i5", "accept", None, None, "accept page"),
    ]
    log = read_decisions(file_store, "b1")
    log = log.astype(object).where(log.notna(), None)
    rows = [(r["item_id"], r["decision"], r["attribute"], r["new_label"], r["reason"]) for r in log.to_dict("records")]
    assert rows == expected
    assert set(log["reviewer"]) == {"alice"}
    state = replay(read_queue(file_store, "b1"), log, get_settings().taxonomy)
    assert state.status == {"i1": "accept", "i2": "reject", "i3": "accept", "i4": "reject", "i5": "accept"}
    assert state.labels["i3"]["pattern"] == ("checkered", "review:alice")
    assert state.labels["i3"]["fabric"] == (None, None)  # the undone relabel left the weak (empty) label
