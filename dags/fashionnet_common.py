"""Shared by the FashionNet DAG files: the Assets that chain them, the crawl Params and the TensorFlow queue."""
import os

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


def crawl_params() -> dict[str, Param]:
    """Which retailer a crawl visits, validated before any work starts."""
    return {
        "retailer": Param("demo-store", type="string", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
                          description="A retailer configured in config/settings.yaml"),
        "start_url": Param(None, type=["null", "string"], pattern=r"^https?://[^\s]+$",
                           description="Override the retailer's base URL (optional)"),
    }
