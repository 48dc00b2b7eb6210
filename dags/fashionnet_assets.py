"""The Assets that chain the FashionNet DAGs (producer -> consumer)."""
from airflow.sdk import Asset

DATASET = Asset(name="fashionnet_dataset", uri="fashionnet://dataset")
MODELS = Asset(name="fashionnet_models", uri="fashionnet://models")
REPOSITORY = Asset(name="fashionnet_repository", uri="fashionnet://repository")
RECOMMENDATIONS = Asset(name="fashionnet_recommendations", uri="fashionnet://recommendations")
