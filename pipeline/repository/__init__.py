"""The fashion-vector repository: a Hive-partitioned Parquet dataset with one current row per item.

Layout (schema: ``pipeline/repository/schema.json``, version :data:`SCHEMA_VERSION`)::

    repository/fashion_vectors/crawl_date=<YYYY-MM-DD>/retailer=<retailer>/part-<i>-of-<n>.parquet
    repository/fashion_vectors/_common_metadata      the dataset's file schema (Parquet convention)
    repository/commits/<commit_id>.json              what every refresh changed
    repository/_staging/<commit_id>/                 plan, shard outputs, files before they are published

An item lives in exactly one file for life: the partition of the night that first added it
(``crawl_date``, ``retailer``) and, inside it, file ``hash(item_id) mod n`` (``n`` fixed when the
partition is created). A refresh never moves an item; it rewrites the files that hold changed items,
each file replaced as a whole: every new file is first written under the staging prefix (outside the
dataset), then all are moved into place (local: a rename; S3: a server-side copy, atomic like a PUT).
So a reader that lists the prefix at any moment sees only complete files and every item exactly once;
a commit that fails before its moves (while merging or uploading) has changed nothing, and only in
the moves themselves may some files already hold the new rows and others the old ones.

A refresh is three steps, each idempotent (the refresh DAG maps step 2 over shards):

1. :func:`pipeline.repository.plan.plan_refresh`: which items need inference (new items, a changed image, or stored model
   versions that differ from the published ones) and which only need new catalog fields; the plan is
   written to staging and the inference items are cut into shards.
2. :func:`pipeline.repository.infer.infer_shard`: the vectors of one shard, written to staging (the
   networks themselves, images in and vectors out, are ``models.inference.FashionVectorizer``).
3. :func:`pipeline.repository.commit.commit_refresh`: the changed rows are merged into their files, which are published.

Rerunning a night finds nothing to infer (same images, same models) and rewrites nothing, so it adds
no rows. The layout, schema and readers are :mod:`pipeline.repository.dataset`; only
:mod:`pipeline.repository.infer` loads TensorFlow and Keras, and only when it builds the networks.
"""
