"""Recommend: users' own clothing images -> style profiles -> ranked repository items.

After every repository refresh (the ``fashionnet_repository`` Asset) it recommends for every user
under ``users/`` in the store; triggered by hand it serves one user (``user_id``), optionally from
chosen images. Every Param is validated, and the users and images checked, before any work: the
``validate`` task plans batches of users, and one mapped ``recommend`` task serves each batch.
"""
from __future__ import annotations

from airflow.sdk import Param, dag, task

from fashionnet_common import (RECOMMENDATIONS, REPOSITORY, RETAILER_PATTERN, TENSORFLOW_QUEUE,
                               reject_unknown_params, whole)

# An image directly under users/<user_id>/: no subfolder, no "..", no scheme, no leading "/", no control
# characters.
IMAGE_KEY_PATTERN = whole(r"users/[A-Za-z0-9_-]{1,64}/[A-Za-z0-9][^/\\\x00-\x1f\x7f]*")
SCORES = ["matches", "weighted", "embedding", "hybrid"]

PARAMS = {
    "user_id": Param(None, type=["null", "string"], pattern=whole(r"[A-Za-z0-9_-]{0,64}"),
                     description="Recommend for this user (images under users/<user_id>/); empty = every user"),
    "image_keys": Param([], type="array", maxItems=50, items={"type": "string", "pattern": IMAGE_KEY_PATTERN},
                        description="Store keys users/<user_id>/<image>; empty = every image of the user"),
    "k": Param(None, type=["null", "integer"], minimum=1, maximum=100,
               description="How many items to recommend (empty = settings' recommend.k)"),
    "score": Param(None, type=["null", "string"], enum=[None, *SCORES],
                   description="matches, weighted, embedding or hybrid (empty = settings' recommend.score)"),
    "mmr_lambda": Param(None, type=["null", "number"], minimum=0, maximum=1,
                        description="Diversity: 1 = relevance only, lower = more diverse (empty = settings)"),
    "retailers": Param([], type="array", maxItems=50,
                       items={"type": "string", "pattern": RETAILER_PATTERN},
                       description="Only items of these retailers (empty = all)"),
    "categories": Param([], type="array", maxItems=50, items={"type": "string", "minLength": 1, "maxLength": 128},
                        description="Only items of these categories (empty = all)"),
    "price_min": Param(None, type=["null", "number"], minimum=0, description="Lowest price (empty = none)"),
    "price_max": Param(None, type=["null", "number"], minimum=0, description="Highest price (empty = none)"),
}


@dag(dag_id="fashionnet_recommend", schedule=[REPOSITORY], catchup=False, params=PARAMS, tags=["fashionnet"])
def fashionnet_recommend():
    @task
    def validate(params: dict) -> list[list[dict]]:
        from pipeline.recommend import options_from_params, plan_requests
        from pipeline.storage import open_store

        reject_unknown_params(params, PARAMS)
        options = options_from_params(params)
        batches = plan_requests(open_store(), params["user_id"], params["image_keys"], options)
        print(f"[fashionnet] recommend: {sum(len(b) for b in batches)} user(s) in {len(batches)} batch(es)")
        return batches

    @task(outlets=[RECOMMENDATIONS], queue=TENSORFLOW_QUEUE)
    def recommend(batch: list[dict], params: dict, dag_run=None) -> list[dict]:
        from pipeline.recommend import options_from_params, recommend_for_users
        from pipeline.runs import plain, stage
        from pipeline.storage import open_store

        with stage(f"recommend ({len(batch)} user(s))") as report:
            summaries = recommend_for_users(open_store(), batch, f"{dag_run.run_after:%Y-%m-%d}",
                                            options_from_params(params))
            report.summary = {"users": len(summaries), "recommended": sum(s["n_recommended"] for s in summaries)}
        return plain([{**s, "top_k": s["top_k"][:5]} for s in summaries])

    recommend.expand(batch=validate())


fashionnet_recommend_dag = fashionnet_recommend()
