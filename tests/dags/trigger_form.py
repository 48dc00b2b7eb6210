"""Airflow's trigger form in a real headless Chromium (Playwright), as a user fills it in.

Used by test_local_executor.py on the api-server it starts. The browser is Debian's Chromium (see
tests/pipeline/review/web/test_review_web_browser.py); Playwright's own browser download is not used. Fields are found by
their label (the Param's ``title``), as a user finds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.pipeline.review.web.test_review_web_browser import CHROMIUM_ARGS, chromium_path

TIMEOUT_MS = 60_000


def _row(page, label: str):
    """The form row whose label reads ``label``."""
    return page.locator(f"xpath=//label[normalize-space(.)='{label}']/ancestor::*[@data-part='root'][1]").first


@dataclass
class TriggerForm:
    page: object  # playwright Page, the trigger dialog open

    def labels(self) -> list[str]:
        return [
            t.strip()
            for t in self.page.eval_on_selector_all("div[role=dialog] label", "ls => ls.map(l => l.innerText)")
        ]

    def required_fields(self) -> list[str]:
        """Labels of the run parameters the form marks required (an asterisk, ``required``/``aria-required``)."""
        return self.page.eval_on_selector_all(
            "div[role=dialog] [data-part=required-indicator], div[role=dialog] [required], "
            "div[role=dialog] [aria-required=true]",
            "els => els.map(e => (e.closest('[data-part=root]') || e).innerText || e.id)",
        )

    def _input(self, label: str):
        return _row(self.page, label).locator("input:not([type=hidden]), textarea").first

    def fill(self, label: str, text: str) -> None:
        field = self._input(label)
        field.fill(text)
        field.press("Tab")  # leave the field, as a user does (a number input would clamp here)

    def value(self, label: str) -> str:
        return self._input(label).input_value()

    def dropdown_text(self, label: str) -> str:
        """What a select shows as its value (the form's selects are react-select, in ``#element_<param>``)."""
        return _row(self.page, label).locator("[id^=element_]").first.inner_text().strip().splitlines()[0]


@contextmanager
def open_trigger_form(playwright, base: str, user: str, password: str, dag_id: str) -> Iterator[TriggerForm]:
    """Log in through Airflow's login page, open the DAG and its Trigger dialog."""
    browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{base}/auth/login?next=%2F")
        page.fill("input[name=username]", user)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        page.goto(f"{base}/dags/{dag_id}")
        page.get_by_role("button", name="Trigger").first.click()
        page.wait_for_selector(
            "div[role=dialog] label:text-is('Run Parameters'), div[role=dialog] >> text=Run Parameters"
        )
        yield TriggerForm(page)
    finally:
        browser.close()


def submit(form: TriggerForm) -> tuple[int, str]:
    """Press the dialog's Trigger button; (the API's status, the error the dialog shows, if any)."""
    page = form.page
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/dagRuns")) as answer:
        page.locator("div[role=dialog] button", has_text="Trigger").last.click()
    status = answer.value.status
    if status < 400:
        return status, ""
    # The API's reason, once the dialog shows it (its first line), and the dialog's text with it.
    reason = str(answer.value.json().get("detail", "")).splitlines()[0]
    shown = page.get_by_text(reason, exact=False).first
    shown.wait_for()
    return status, shown.inner_text()
