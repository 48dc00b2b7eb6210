"""Airflow 3 plugin: the FashionNet review page in Airflow's api-server, under ``/fashionnet-review/``.

Airflow serves plugin FastAPI apps without its own authentication, so the app keeps its own reviewer
login (reviewers from ``python -m pipeline.review.web add-reviewer``; sessions signed with
``FASHIONNET_REVIEW_SECRET``, which every api-server worker must share). The ``pipeline`` package must
be importable by the api-server (the Docker image puts the project on ``PYTHONPATH``) and this folder
must be Airflow's plugins folder (``AIRFLOW__CORE__PLUGINS_FOLDER``) or copied into it.

Importing this module loads FastAPI only: the store is opened, and pandas imported, on the first request.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from pipeline.review.web import create_app

URL_PREFIX = "/fashionnet-review"


class FashionNetReviewPlugin(AirflowPlugin):
    name = "fashionnet_review"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "FashionNet review queue"}]
    # A link in Airflow's navigation (no url_route: it opens the page itself, not an iframe, which the
    # page's frame-ancestors policy would refuse).
    external_views = [{"name": "Review queue", "href": f"{URL_PREFIX}/", "destination": "nav", "category": "browse"}]
