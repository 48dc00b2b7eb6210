"""Recommend: users' own clothing images -> style profiles -> ranked repository items.

After every repository refresh (the ``fashionnet_repository`` Asset) it recommends for every user
under ``users/`` in the store; triggered by hand it serves one user (``user_id``), optionally from
chosen images. Every Param is validated, and the users and images checked, before any work: the
``validate`` task plans batches of users, and one mapped ``recommend`` task serves each batch.

Outputs per day, run and user: ``recommendations/date=.../run=.../user_id=.../recommendations.parquet``
(``run``: the Airflow run id made path-safe, so a manual run and the scheduled one of a day both stay),
the style profile under ``profiles/``, and the HTML page ``recommendations_html/<date>/run=<run>/<user>.html``
(the profile photos beside the recommended items). On the embedded default (``make airflow``) the store is ``var/store/`` and the demo
user is ``demo-user``.
"""

from __future__ import annotations

import logging
import re

from airflow.sdk import Param, dag, task
from fashionnet_common import (
    OPTIONAL_LIST,
    RECOMMENDATIONS,
    REPOSITORY,
    RETAILER_PATTERN,
    TENSORFLOW_QUEUE,
    bounds,
    listed,
    reject_unknown_params,
    whole,
)

from pipeline.settings import get_settings
from pipeline.store_layout import USERS_PREFIX

# The task bodies' logger (the task log under Airflow), named: a DagBag imports this file as
# unusual_prefix_<sha1>_<file>, and the tools show the dags.* loggers (fashionnet_tools.console).
logger = logging.getLogger("dags.fashionnet_recommend")

# An image directly under users/<user_id>/: no subfolder, no "..", no scheme, no leading "/", no control
# characters.
IMAGE_KEY_PATTERN = whole(re.escape(USERS_PREFIX) + r"/[A-Za-z0-9_-]{1,64}/[A-Za-z0-9][^/\\\x00-\x1f\x7f]*")
SCORES = ["matches", "weighted", "embedding", "hybrid"]

# The trigger form says what an empty field means, from the settings (read at parse time: YAML only).
CONFIGURED = get_settings().recommend

# Declared for Airflow's trigger form (see fashionnet_common): optional fields have "null" in their type,
# ranges are refused with their reason instead of clamped, the score's empty choice is labelled.
PARAMS = {
    "user_id": Param(
        None,
        type=["null", "string"],
        pattern=whole(r"[A-Za-z0-9_-]{0,64}"),
        title="User",
        description="Recommend for this user: letters, digits, _ or -, up to 64 (photos under "
        "users/<user_id>/ in the store; the embedded default has demo-user). "
        "Empty: every user",
    ),
    "image_keys": Param(
        [],
        type=OPTIONAL_LIST,
        maxItems=50,
        items={"type": "string", "pattern": IMAGE_KEY_PATTERN},
        title="Photos",
        description="Store keys users/<user_id>/<image>, one per line; empty: every photo of the user",
    ),
    "k": Param(
        None,
        type=["null", "integer"],
        **bounds(1, 100),
        title="How many",
        description=f"How many items to recommend, 1 to 100 (empty: the settings' recommend.k, {CONFIGURED.k})",
    ),
    "score": Param(
        None,
        type=["null", "string"],
        enum=[None, *SCORES],
        title="Score",
        values_display={
            "null": f"as configured (recommend.score: {CONFIGURED.score})",
            "matches": "matches",
            "weighted": "weighted",
            "embedding": "embedding",
            "hybrid": "hybrid",
        },
        description="How items are ranked: matches, weighted, embedding or hybrid (pipeline/recommend/scoring.py)",
    ),
    "mmr_lambda": Param(
        None,
        type=["null", "number"],
        **bounds(0, 1),
        title="Relevance vs. diversity",
        description="From 0 to 1: 1 = relevance only, lower = more diverse (empty: the settings' "
        f"recommend.mmr_lambda, {CONFIGURED.mmr_lambda})",
    ),
    "retailers": Param(
        [],
        type=OPTIONAL_LIST,
        maxItems=50,
        items={"type": "string", "pattern": RETAILER_PATTERN},
        title="Retailers",
        description="Only items of these retailers, one per line (empty: all)",
    ),
    "categories": Param(
        [],
        type=OPTIONAL_LIST,
        maxItems=50,
        items={"type": "string", "minLength": 1, "maxLength": 128},
        title="Categories",
        description="Only items of these categories, one per line (empty: all)",
    ),
    "price_min": Param(
        None,
        type=["null", "number"],
        **bounds(0),
        title="Lowest price",
        description="Only items at this price or more, 0 or more (empty: no lower bound)",
    ),
    "price_max": Param(
        None,
        type=["null", "number"],
        **bounds(0),
        title="Highest price",
        description="Only items at this price or less, 0 or more (empty: no upper bound)",
    ),
}
LIST_PARAMS = ("image_keys", "retailers", "categories")


def with_lists(params: dict) -> dict:
    """The Params with the optional lists as lists (the form sends null for an empty one)."""
    return {**params, **{name: listed(params, name) for name in LIST_PARAMS if name in params}}


@dag(
    dag_id="fashionnet_recommend",
    schedule=[REPOSITORY],
    catchup=False,
    params=PARAMS,
    tags=["fashionnet"],
    doc_md=__doc__,
)
def fashionnet_recommend():
    @task
    def validate(params: dict) -> list[list[dict]]:
        from pipeline.recommend.options import options_from_params
        from pipeline.recommend.users import plan_requests
        from pipeline.storage import open_store

        reject_unknown_params(params, PARAMS)
        params = with_lists(params)
        options = options_from_params(params)
        batches = plan_requests(open_store(), params["user_id"], params["image_keys"], options)
        logger.info("[fashionnet] recommend: %s user(s) in %s batch(es)", sum(len(b) for b in batches), len(batches))
        return batches

    @task(outlets=[RECOMMENDATIONS], queue=TENSORFLOW_QUEUE)
    def recommend(batch: list[dict], params: dict, dag_run=None) -> list[dict]:
        from pipeline.recommend.options import options_from_params
        from pipeline.recommend.recommendations import recommend_for_users
        from pipeline.runs import plain, stage
        from pipeline.storage import open_store

        with stage(f"recommend ({len(batch)} user(s))") as report:
            summaries = recommend_for_users(
                open_store(), batch, f"{dag_run.run_after:%Y-%m-%d}", options_from_params(params), run_id=dag_run.run_id
            )
            report.summary = {"users": len(summaries), "recommended": sum(s["n_recommended"] for s in summaries)}
        return plain([{**s, "top_k": s["top_k"][:5]} for s in summaries])

    recommend.expand(batch=validate())


fashionnet_recommend_dag = fashionnet_recommend()
