"""Recommend: a user's own clothing images -> style profile -> ranked repository items.

Runs after every repository refresh (Asset) for the default user, and on manual trigger from the UI
with validated Params.
"""
from __future__ import annotations

from airflow.sdk import Param, dag, task

from fashionnet_common import RECOMMENDATIONS, REPOSITORY

PARAMS = {
    "user_id": Param("demo-user", type="string", pattern=r"^[A-Za-z0-9_-]{1,64}$",
                     description="Images are read from users/<user_id>/ in the store"),
    "image_keys": Param([], type="array", items={"type": "string"},
                        description="Store keys under users/<user_id>/; empty = every image there"),
    "k": Param(10, type="integer", minimum=1, maximum=100, description="How many items to recommend"),
}


@dag(dag_id="fashionnet_recommend", schedule=[REPOSITORY], catchup=False, params=PARAMS, tags=["fashionnet"])
def fashionnet_recommend():
    @task
    def validate(params: dict) -> list[str]:
        from pipeline.recommend import validate_request
        from pipeline.storage import open_store

        return validate_request(open_store(), params["user_id"], params["image_keys"], params["k"])

    @task(outlets=[RECOMMENDATIONS])
    def recommend(image_keys: list[str], params: dict, dag_run=None) -> dict:
        from pipeline.recommend import recommend_for_user
        from pipeline.runs import plain, stage
        from pipeline.storage import open_store

        with stage("recommend") as report:
            report.summary = recommend_for_user(open_store(), params["user_id"], image_keys, params["k"],
                                                run_date=f"{dag_run.run_after:%Y-%m-%d}")
        return plain(report.summary)

    recommend(validate())


fashionnet_recommend_dag = fashionnet_recommend()
