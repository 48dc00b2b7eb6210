"""Review: the manual-review queue, its audit log and the labelled dataset built from it (:mod:`.queue`),
the networks' predictions for the queue (:mod:`.predictions`), what the review page shows (:mod:`.view`),
the page itself (:mod:`.web`) and the batch gate before the dataset (:mod:`.approval`)."""
