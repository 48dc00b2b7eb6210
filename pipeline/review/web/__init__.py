"""The reviewers' web page for the manual-review queue: a FastAPI app, its static page and a CLI.

:func:`create_app` builds the app (standalone via ``python -m pipeline.review.web serve``, or mounted
in Airflow's api-server by ``plugins/fashionnet_review.py``). Importing this package imports FastAPI
only; pandas and the store are loaded on the first request.
"""

from pipeline.review.web.app import create_app

__all__ = ["create_app"]
