"""Train: split the dataset -> one mapped training task per attribute -> publish the models.

Runs whenever the labelled dataset changes. One attribute failing never loses the others: each
trained model is published by itself and the run is marked failed afterwards.
"""
from __future__ import annotations

from airflow.sdk import dag, task

from fashionnet_common import DATASET, MODELS


@dag(dag_id="fashionnet_train", schedule=[DATASET], catchup=False, tags=["fashionnet"])
def fashionnet_train():
    @task
    def split() -> list[str]:
        from pipeline.runs import stage
        from pipeline.settings import get_settings
        from pipeline.split import write_split
        from pipeline.storage import open_store

        with stage("train.split") as report:
            report.summary = write_split(open_store())
        return get_settings().taxonomy.names

    @task(max_active_tis_per_dagrun=1)
    def train(attribute: str, dag_run=None) -> dict:
        from models.train import train_attribute
        from pipeline.runs import model_version, stage
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        settings = get_settings()
        version = model_version(dag_run.run_after)
        with stage(f"train.{attribute}") as report:
            metrics = train_attribute(open_store(), attribute, version, settings.training,
                                      settings.taxonomy.classes(attribute))
            report.summary = {"version": version, "test_accuracy": metrics["test"]["accuracy"],
                              "val_accuracy": metrics["best"]["val_accuracy"]}
        return {"attribute": attribute, "version": version}

    @task(outlets=[MODELS], trigger_rule="all_done")
    def publish(trained: list[dict]) -> list[dict]:
        from models.registry import publish as publish_model
        from pipeline.runs import stage
        from pipeline.settings import get_settings
        from pipeline.storage import open_store

        store = open_store()
        # Index by length: mapped tasks that failed pushed nothing, and iterating past the end logs errors.
        trained = [trained[i] for i in range(len(trained))]
        with stage("train.publish") as report:
            published = [publish_model(store, t["attribute"], t["version"]) for t in trained]
            report.summary = {"published": len(published)}
        missing = sorted(set(get_settings().taxonomy.names) - {t["attribute"] for t in trained})
        if missing:
            raise RuntimeError(f"published {len(published)} models; training failed for {missing}")
        return published

    publish(train.expand(attribute=split()))


fashionnet_train_dag = fashionnet_train()
