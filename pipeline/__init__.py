"""FashionNet pipeline: the ground floor (settings, storage and its key layout, run records, image
decoding and hashing) and the stages on it, one sub-package each in the order the DAGs run them:
:mod:`pipeline.curation`, :mod:`pipeline.review`, :mod:`pipeline.dataset`, :mod:`pipeline.repository`
and :mod:`pipeline.recommend`."""
