"""Train: split the dataset -> one mapped training task per attribute -> promote the models.

Runs whenever the labelled dataset changes. One attribute failing never loses the others: each
trained model is promoted by itself and the run is marked failed afterwards. A new version becomes
current only when it is not worse than the current one on the same test split (models.registry.promote),
unless the ``force_promotion`` Param says otherwise. ``publish`` logs every decision (attribute, candidate,
current, the reason, with both test accuracies when compared) and updates the ``fashionnet_models`` Asset, which starts the
repository refresh (a first training's refresh, with an empty repository, crawls the catalog).
"""

from __future__ import annotations

import logging

from airflow.sdk import Param, dag, task
from fashionnet_common import DATASET, MODELS, TENSORFLOW_QUEUE, reject_unknown_params

# The task bodies' logger (the task log under Airflow), named: a DagBag imports this file as
# unusual_prefix_<sha1>_<file>, and the tools show the dags.* loggers (fashionnet_tools.console).
logger = logging.getLogger("dags.fashionnet_train")

PARAMS = {
    "force_promotion": Param(
        False,
        type="boolean",
        title="Force promotion",
        description="Make the new versions current even if they test worse than the current ones",
    ),
}


def promotion_line(decision: dict) -> str:
    """One log line per promotion decision of models.registry.promote (its reason carries the test accuracies
    when the two versions were compared)."""
    verdict = "promoted" if decision.get("promoted") else f"not promoted, {decision.get('current')} stays current"
    return (
        f"[fashionnet] train.publish: {decision.get('attribute')} {decision.get('candidate')}: {verdict} "
        f"(current was {decision.get('current')}; {decision.get('reason')}"
        f"{'; forced' if decision.get('forced') else ''})"
    )


@dag(dag_id="fashionnet_train", schedule=[DATASET], catchup=False, params=PARAMS, tags=["fashionnet"], doc_md=__doc__)
def fashionnet_train():
    @task
    def split(params: dict) -> list[str]:
        from pipeline.dataset.split import write_split
        from pipeline.runs import stage
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        reject_unknown_params(params, PARAMS)
        with stage("train.split") as report:
            report.summary = write_split(open_store())
        return get_settings().taxonomy.names

    @task(max_active_tis_per_dagrun=1, queue=TENSORFLOW_QUEUE)
    def train(attribute: str, dag_run=None) -> dict:
        from models.train import train_attribute
        from pipeline.runs import model_version, stage
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        settings = get_settings()
        version = model_version(dag_run.run_after)
        with stage(f"train.{attribute}") as report:
            metrics = train_attribute(
                open_store(), attribute, version, settings.training, settings.taxonomy.classes(attribute)
            )
            report.summary = {
                "version": version,
                "test_accuracy": metrics["test"]["accuracy"],
                "val_accuracy": metrics["best"]["val_accuracy"],
            }
        return {"attribute": attribute, "version": version}

    @task(outlets=[MODELS], trigger_rule="all_done")
    def publish(trained: list[dict], params: dict) -> list[dict]:
        from models.registry import promote
        from pipeline.runs import plain, stage
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        store = open_store()
        settings = get_settings()
        tolerance = float(settings.training.promotion_tolerance)
        # Index by length: mapped tasks that failed pushed nothing, and iterating past the end logs errors.
        trained = [trained[i] for i in range(len(trained))]
        with stage("train.publish") as report:
            decisions = []
            for t in trained:
                decision = promote(
                    store, t["attribute"], t["version"], force=params["force_promotion"], tolerance=tolerance
                )
                logger.info(promotion_line(decision))
                decisions.append(decision)
            report.summary = {
                d["attribute"]: f"{d['candidate']}: {'promoted' if d['promoted'] else 'kept ' + str(d['current'])}"
                f" ({d['reason']})"
                for d in decisions
            }
        missing = sorted(set(settings.taxonomy.names) - {t["attribute"] for t in trained})
        if missing:
            raise RuntimeError(
                f"promoted {sum(d['promoted'] for d in decisions)} models; training failed for {missing}"
            )
        return plain(decisions)

    publish(train.expand(attribute=split()))


fashionnet_train_dag = fashionnet_train()
