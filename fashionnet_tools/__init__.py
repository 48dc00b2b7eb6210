"""FashionNet's tools: the ``fashionnet`` command (:mod:`fashionnet_tools.cli`), the demo driver behind
``make demo`` (:mod:`fashionnet_tools.demo`), the bundled demo store it crawls
(:mod:`fashionnet_tools.demo_store`, also served by ``make airflow`` and the compose ``demo`` profile) and the
local Airflow launcher behind ``make airflow`` (:mod:`fashionnet_tools.airflow_local`).

Tools, not stages: they start and drive the library (``pipeline/``, ``models/``, ``scrapers/``) and the
DAGs, and nothing in the library imports them (``tests/test_layers.py``). The package is not called
``tools`` because that name is already taken in the virtualenv: cron-descriptor (an Airflow dependency)
installs a top-level ``tools`` namespace package, which would shadow or merge with ours.
"""
