"""The dataset: the train / validation / test split of the labelled items (:mod:`.split`)."""
