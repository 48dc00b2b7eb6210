"""The repository's items as recommendations read them: the columns, the filtered table or its chunks, and
their fashion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.recommend import scoring
from pipeline.recommend.options import Filters
from pipeline.settings import Taxonomy

if TYPE_CHECKING:
    from pipeline.storage import ObjectStore

ITEM_COLUMNS = (
    "retailer",
    "category",
    "title",
    "price",
    "currency",
    "product_url",
    "image_key",
    "crawl_date",
    "crawled_at",
    "inferred_at",
)


def require_columns(table: pa.Table, names: Sequence[str], what: str) -> None:
    """Raise ValueError naming the ``names`` that ``table`` (``what``: "repository", ...) lacks."""
    missing = [name for name in names if name not in table.column_names]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}")


def attribute_classes(taxonomy: Taxonomy, attributes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The classes of ``attributes`` (the networks' order), as :func:`scoring.fashion_matrix` reads them."""
    return {a: taxonomy.classes(a) for a in attributes}


def repository_columns(attributes: Sequence[str]) -> list[str]:
    """The repository columns a recommendation reads (the contract's, less dhash and the like)."""
    columns = ["item_id", "phash", "phash_mirror", "content_sha256", *ITEM_COLUMNS]
    for attribute in attributes:
        columns += [attribute, f"{attribute}_prob", f"{attribute}_probs", f"{attribute}_model_version"]
    return columns + ["embedding", "embedding_source"]


def load_repository(store: ObjectStore, filters: Filters, attributes: Sequence[str]) -> pa.Table:
    """The current repository (one row per item), filtered at read time. Unsorted (file order): the
    ranking does not depend on row order (ties go by item_id), and the sort would copy the embeddings."""
    from pipeline.repository.dataset import read_repository

    return read_repository(store, columns=repository_columns(attributes), filter=filters.expression(), sort=False)


def repository_vectors(
    repository: pa.Table, taxonomy: Taxonomy, attributes: Sequence[str]
) -> tuple[scoring.FashionMatrix, pa.Table]:
    """The repository's fashion matrix (``attributes``' classes from ``taxonomy``), and the table without
    the list columns it was made from (the ranking's output does not need them; a million 2048-d
    embeddings are 8 GB, kept once, not twice)."""
    matrix = scoring.fashion_matrix(repository, attribute_classes(taxonomy, attributes))
    lists = [name for name in (*(f"{a}_probs" for a in attributes), "embedding") if name in repository.column_names]
    return matrix, repository.drop_columns(lists)


RepositoryVectors = tuple[scoring.FashionMatrix, pa.Table]
"""A loaded repository as :func:`repository_vectors` gives it: (fashion matrix, table without the lists)."""


def loaded_repository(store: ObjectStore, filters: Filters, taxonomy: Taxonomy) -> RepositoryVectors:
    """The current repository, filtered, as :func:`repository_vectors` (the taxonomy's attributes)."""
    attributes = taxonomy.names
    return repository_vectors(load_repository(store, filters, attributes), taxonomy, attributes)


def repository_chunks(
    store: ObjectStore, filters: Filters, attributes: Sequence[str], chunk_rows: int
) -> tuple[Any, list[str]]:
    """A scanner over the current repository files: the recommendation columns only, the run's filters
    pushed down to partitions and row groups, at most ``chunk_rows`` rows per batch and one batch read
    ahead (so memory is set by the chunk, not the catalogue)."""
    from pipeline.repository.dataset import repository_dataset

    dataset = repository_dataset(store, list(attributes))
    columns = [name for name in repository_columns(attributes) if name in dataset.schema.names]
    scanner = dataset.scanner(
        columns=columns, filter=filters.expression(), batch_size=chunk_rows, batch_readahead=1, fragment_readahead=1
    )
    return scanner, columns


def empty_repository(store: ObjectStore, attributes: Sequence[str]) -> pa.Table:
    """No rows, with the columns a chunk of :func:`repository_chunks` has."""
    scanner, columns = repository_chunks(store, Filters(), attributes, 1024)
    return scanner.projected_schema.empty_table()
