"""FashionNet pipeline stages: storage, curation, splitting, repository and recommendations."""
