"""Shared by the FashionNet DAG files: the Assets that chain them, the crawl Params and the TensorFlow queue."""

import os
from collections.abc import Iterable, Mapping
from typing import Any

from airflow.sdk import Asset, Param

DATASET = Asset(name="fashionnet_dataset", uri="fashionnet://dataset")
MODELS = Asset(name="fashionnet_models", uri="fashionnet://models")
REPOSITORY = Asset(name="fashionnet_repository", uri="fashionnet://repository")
RECOMMENDATIONS = Asset(name="fashionnet_recommendations", uri="fashionnet://recommendations")

# The executor queue of the tasks that run TensorFlow (training, inference, review predictions):
# `@task(queue=TENSORFLOW_QUEUE)`. The Docker deployment sets FASHIONNET_TENSORFLOW_QUEUE=tensorflow and runs
# dedicated Celery workers for it (docs/operations.md); unset, it is Airflow's default queue ("default"),
# so LocalExecutor, `airflow standalone` and dag.test() run these tasks like any other. Read when the DAG
# file is parsed: the dag-processor's environment decides.
TENSORFLOW_QUEUE = os.environ.get("FASHIONNET_TENSORFLOW_QUEUE", "").strip() or "default"


def whole(pattern: str) -> str:
    """A Param ``pattern`` that must match the whole value.

    JSON Schema patterns are searched, and ``$`` also matches before a final newline (``"ann\\n"``
    passes ``^[a-z]+$``); ``(?![\\s\\S])`` ends the match at the true end, with the same meaning in
    Python (Airflow's validation) and JavaScript (the trigger form).
    """
    return rf"^(?:{pattern})(?![\s\S])"


RETAILER_PATTERN = whole(r"[a-z0-9][a-z0-9_-]{0,63}")

# How Params are declared so that Airflow's trigger form renders them right (checked in a real browser:
# tests/dags/test_trigger_form_browser.py):
# - optional: the type includes "null" (the form marks a field required unless it does), lists too;
# - bounds inside ``allOf``: the form's number input clamps to a top-level minimum/maximum (0 silently
#   becomes 1), while the same bounds one level down are enforced by the run's validation, which refuses
#   the value and says why;
# - an enum's null has a label (``values_display``), or the form shows the word "null".
OPTIONAL_LIST = ["null", "array"]


def bounds(minimum: float | None = None, maximum: float | None = None) -> dict[str, Any]:
    """Schema keywords for a number's range, refused (not clamped) by the trigger form: see above."""
    rule = {k: v for k, v in (("minimum", minimum), ("maximum", maximum)) if v is not None}
    return {"allOf": [rule]}


def listed(params: Mapping[str, Any], name: str) -> Any:
    """An optional list Param's value: an empty list when the form sent null (any other value as it is, for
    the task's own checks to refuse)."""
    value = params.get(name)
    return [] if value is None else value


def crawl_params() -> dict[str, Param]:
    """Which retailers a crawl visits, validated before any work starts. Empty: every configured retailer
    (one mapped crawl task each). The first task also refuses, before any request, names that are not
    configured and a ``start_url`` off the retailer's site (scrapers.retailers.crawl_targets)."""
    return {
        "retailers": Param(
            [],
            type=OPTIONAL_LIST,
            items={"type": "string", "pattern": RETAILER_PATTERN},
            title="Retailers",
            description="Crawl only these configured retailers, one per line (empty: all of them)",
        ),
        "retailer": Param(
            None,
            type=["null", "string"],
            pattern=RETAILER_PATTERN,
            title="Retailer",
            description="One retailer: configured in config/settings.yaml, or any shop's name "
            "together with a start_url (empty: see Retailers)",
        ),
        "start_url": Param(
            None,
            type=["null", "string"],
            pattern=whole(r"https?://[^\s]+"),
            title="Start URL",
            description="Start the crawl at this page (optional): on the retailer's site, or any "
            "shop for a retailer name not in the settings",
        ),
    }


# A retailer's mapped tasks are labelled with its name in the UI (instead of the map index 0, 1, ...).
RETAILER_LABEL = "{{ fashionnet_retailer }}"


def label_with_retailer(target: Mapping[str, Any]) -> None:
    """Name the running mapped task instance after its retailer (rendered into :data:`RETAILER_LABEL`)."""
    from airflow.sdk import get_current_context

    # Airflow's documented way to feed map_index_template, though its Context TypedDict lists no extra keys.
    get_current_context()["fashionnet_retailer"] = str(target["retailer"])  # type: ignore[typeddict-unknown-key]


def reject_unknown_params(params: Mapping[str, Any], known: Iterable[str]) -> None:
    """Refuse a run whose conf names a Param the DAG does not have (a typo would otherwise be ignored
    silently, and the run would do something else than asked: ``{"user": "ann"}`` serves every user)."""
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown Params {unknown}: this DAG takes {sorted(known)}")
