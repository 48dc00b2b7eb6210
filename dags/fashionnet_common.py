"""Shared by the FashionNet DAG files: the Assets that chain them and the crawl Params."""
from airflow.sdk import Asset, Param

DATASET = Asset(name="fashionnet_dataset", uri="fashionnet://dataset")
MODELS = Asset(name="fashionnet_models", uri="fashionnet://models")
REPOSITORY = Asset(name="fashionnet_repository", uri="fashionnet://repository")
RECOMMENDATIONS = Asset(name="fashionnet_recommendations", uri="fashionnet://recommendations")


def crawl_params() -> dict[str, Param]:
    """Which retailer a crawl visits, validated before any work starts."""
    return {
        "retailer": Param("demo-store", type="string", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
                          description="A retailer configured in config/settings.yaml"),
        "start_url": Param(None, type=["null", "string"], pattern=r"^https?://[^\s]+$",
                           description="Override the retailer's base URL (optional)"),
    }
