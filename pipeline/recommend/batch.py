"""Many users in one streamed pass over the repository: the batch scorer behind
:func:`pipeline.recommend.recommendations.recommend_for_users`, which gives exactly
:func:`pipeline.recommend.ranking.rank`'s lists."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.images import rules_from_settings
from pipeline.recommend import scoring
from pipeline.recommend.exclusions import NearCopyCheck, thumbnail_check
from pipeline.recommend.items import attribute_classes, empty_repository, repository_chunks
from pipeline.recommend.options import Options
from pipeline.recommend.ranking import PickedItems, RankedFor, RankRequest, foreign_embeddings, rank, ranked_table
from pipeline.settings import CurationSettings, Settings

if TYPE_CHECKING:
    from pipeline.storage import ObjectStore

SCAN_BLOCK_CELLS = 8_000_000  # (item rows x profile photos) per embedding product: 32 MB of float32


@dataclass
class BatchUser:
    """One user of a batch: the profile and exclusions, then the running candidates of the pass."""

    user_id: str
    image_keys: list[str]
    profile: pa.Table
    mine: scoring.FashionMatrix
    shown: list[str]
    source: str | None
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # global scan rows
    keys: list[np.ndarray] = field(default_factory=list)  # their ordering keys, raw (unrounded)
    foreign_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n_foreign: int = 0


def _chunk_matrix(
    chunk: pa.Table, taxonomy: Mapping[str, Sequence[str]], dims: int | None, seen: dict[str, bool]
) -> scoring.FashionMatrix:
    """:func:`scoring.fashion_matrix` of a chunk with the whole repository's shapes: a chunk whose
    probability vectors or embeddings are all null gets zeros (as those rows are in the one-matrix
    path); ``seen`` records which list columns held any value, so the caller can tell, after the
    pass, that the repository has none (then the one-user path raises :class:`scoring.MissingVectors`)."""
    matrix = scoring.fashion_matrix(chunk, taxonomy)
    probs = matrix.probs
    if all(f"{a}_probs" in chunk.column_names for a in taxonomy):
        for a in taxonomy:
            seen[f"{a}_probs"] = seen.get(f"{a}_probs", False) or chunk[f"{a}_probs"].null_count < chunk.num_rows
        if probs is None:
            probs = tuple(scoring.list_matrix(chunk[f"{a}_probs"], len(taxonomy[a]), f"{a}_probs") for a in taxonomy)
    embedding = matrix.embedding
    if "embedding" in chunk.column_names:
        seen["embedding"] = seen.get("embedding", False) or embedding is not None
        if embedding is None and dims is not None:
            embedding = np.zeros((chunk.num_rows, dims), dtype=np.float32)
    return scoring.FashionMatrix(matrix.attributes, matrix.codes, matrix.top_prob, probs, embedding)


class _Exclusions:
    """Which (chunk row, user) pairs may not be recommended: the user's own images (same bytes, or a
    pHash near copy confirmed by the thumbnail check, as :func:`own_image_mask`) and items shown before.
    One hash index over every user's profile hashes and one set lookup per chunk serve the batch;
    ``curation``: the pHash distance, the thumbnail rule and the image limits (settings ``curation``)."""

    def __init__(self, store: ObjectStore, users: Sequence[BatchUser], curation: CurationSettings):
        from pipeline.curation.hash_index import MIN_INDEXED_FOR_MIH, HashIndex, MultiIndexHashing

        self.store, self.users = store, users
        self.distance, self.max_mad = curation.phash_max_distance, float(curation.thumbnail_max_mad)
        self.max_pixels = rules_from_settings(curation).max_pixels
        self.sha_users = self._index(lambda u: pc.drop_null(u.profile["content_sha256"].cast(pa.string())).to_pylist())
        self.shown_users = self._index(lambda u: u.shown)
        hashes, owners = [], []
        for column, user in enumerate(users):
            names = ["phash", "phash_mirror"] if "phash_mirror" in user.profile.column_names else ["phash"]
            for name in names:
                values = user.profile[name].cast(pa.uint64())
                for row in np.flatnonzero(pc.is_valid(values).to_numpy(zero_copy_only=False)):
                    hashes.append(values[int(row)].as_py())
                    owners.append((column, int(row)))
        self.owners = np.array(owners, dtype=np.int64).reshape(-1, 2)
        hashes_np = np.array(hashes, dtype=np.uint64)
        self.hash_index = (
            (MultiIndexHashing(hashes_np) if len(hashes_np) >= MIN_INDEXED_FOR_MIH else HashIndex(hashes_np))
            if len(hashes_np)
            else None
        )

    def _index(self, values_of: Callable[[BatchUser], list[str]]) -> tuple[pa.Array, list[list[int]]]:
        owners: dict[str, list[int]] = {}
        for column, user in enumerate(self.users):
            for value in dict.fromkeys(values_of(user)):
                owners.setdefault(value, []).append(column)
        return pa.array(list(owners), type=pa.string()), list(owners.values())

    @staticmethod
    def _mark(excluded: np.ndarray, values: pa.ChunkedArray, index: tuple[pa.Array, list[list[int]]]) -> None:
        value_set, owners = index
        if not len(value_set):
            return
        found = pc.index_in(values.cast(pa.string()), value_set=value_set).to_numpy(zero_copy_only=False)
        for row in np.flatnonzero(~np.isnan(found.astype(np.float64))):
            excluded[row, owners[int(found[row])]] = True

    def excluded(self, chunk: pa.Table) -> np.ndarray:
        """(chunk rows, users) True where the pair is excluded."""
        excluded = np.zeros((chunk.num_rows, len(self.users)), dtype=bool)
        self._mark(excluded, chunk["content_sha256"], self.sha_users)
        self._mark(excluded, chunk["item_id"], self.shown_users)
        if self.hash_index is None or not chunk.num_rows:
            return excluded
        item_phash = chunk["phash"].cast(pa.uint64())
        valid = np.flatnonzero(pc.is_valid(item_phash).to_numpy(zero_copy_only=False))
        hashes = pc.fill_null(item_phash, 0).to_numpy().astype(np.uint64)[valid]
        queries, indexed, _ = self.hash_index.query(hashes, self.distance)
        checks: dict[int, NearCopyCheck] = {}
        for query, hit in zip(queries, indexed):
            item = int(valid[query])
            column, profile_row = (int(v) for v in self.owners[hit])
            if excluded[item, column]:
                continue
            if column not in checks:
                checks[column] = thumbnail_check(
                    self.store, self.users[column].profile, chunk, self.max_mad, self.max_pixels
                )
            if checks[column](item, profile_row):
                excluded[item, column] = True
        return excluded


def _foreign_matrix(chunk: pa.Table, users: Sequence[BatchUser]) -> np.ndarray | None:
    """(chunk rows, users) True where the item's embeddings come from other networks than the user's
    profile (:func:`foreign_embeddings`); None when no pair is foreign."""
    if "embedding_source" not in chunk.column_names or all(u.source is None for u in users):
        return None
    sources = chunk["embedding_source"].cast(pa.string())
    foreign = np.zeros((chunk.num_rows, len(users)), dtype=bool)
    by_source: dict[str, np.ndarray] = {}
    for column, user in enumerate(users):
        if user.source is not None:
            if user.source not in by_source:
                same = pc.fill_null(pc.equal(sources, user.source), False)
                by_source[user.source] = ~same.to_numpy(zero_copy_only=False).astype(bool)
            foreign[:, column] = by_source[user.source]
    return foreign if foreign.any() else None


def _computed(values: np.ndarray | None, component: str) -> np.ndarray:
    """A component :func:`scoring.batch_components` computed for the score kind; raises ValueError when
    it was not (the kind does not use it)."""
    if values is None:
        raise ValueError(f"the {component!r} component was not computed for this score kind")
    return values


class _Moments:
    """Per-user count, mean and sum of squared deviations of a value, merged block by block (Chan et
    al.), for the hybrid score's standardisation over each user's candidates."""

    def __init__(self, users: int) -> None:
        self.n = np.zeros(users, dtype=np.float64)
        self.mean = np.zeros(users, dtype=np.float64)
        self.m2 = np.zeros(users, dtype=np.float64)

    def add(self, values: np.ndarray, mask: np.ndarray) -> None:
        count = mask.sum(axis=0).astype(np.float64)
        if not count.any():
            return
        safe = np.maximum(count, 1.0)
        block_mean = np.where(mask, values, 0.0).sum(axis=0) / safe
        block_m2 = np.where(mask, (values - block_mean[None, :]) ** 2, 0.0).sum(axis=0)
        total = self.n + count
        delta = block_mean - self.mean
        share = np.divide(count, total, out=np.zeros_like(total), where=total > 0)
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + block_m2 + delta**2 * self.n * share
        self.n = total

    def _std(self) -> tuple[np.ndarray, np.ndarray]:
        std = np.sqrt(np.divide(self.m2, self.n, out=np.zeros_like(self.m2), where=self.n > 0))
        usable = (self.n > 0) & (std > 1e-12)
        return usable, np.where(usable, std, 1.0)

    def standardise(self, values: np.ndarray) -> np.ndarray:
        """``(values - mean) / std`` per user column, 0 for a user whose value is constant (as
        :func:`scoring.standardised`)."""
        usable, std = self._std()
        return np.where(usable[None, :], (values - self.mean[None, :]) / std[None, :], 0.0)


def _concat_matrices(parts: Sequence[scoring.FashionMatrix]) -> scoring.FashionMatrix:
    first = parts[0]
    all_probs = [p.probs for p in parts if p.probs is not None]
    probs = (
        None
        if len(all_probs) < len(parts)
        else tuple(np.concatenate([part_probs[a] for part_probs in all_probs]) for a in range(len(first.attributes)))
    )
    embeddings = [p.embedding for p in parts if p.embedding is not None]
    embedding = None if len(embeddings) < len(parts) else np.concatenate(embeddings)
    return scoring.FashionMatrix(
        first.attributes,
        np.concatenate([p.codes for p in parts]),
        np.concatenate([p.top_prob for p in parts]),
        probs,
        embedding,
    )


class BatchScorer:
    """One pass (two for ``hybrid``: the moments, then the ranking) of a batch of users over the
    repository's chunks, keeping per user the best ``pool`` eligible rows by the kind's full order
    (:func:`scoring.top_candidates`'s), and the repository rows any user may still need."""

    def __init__(
        self,
        store: ObjectStore,
        users: list[BatchUser],
        options: Options,
        settings: Settings,
        chunk_rows: int,
        chunks: Callable[[], Iterable[pa.Table]] | None = None,
    ) -> None:
        """``settings``: the run's (the taxonomy's attributes are scored; ``curation`` says what is
        the user's own image). ``chunks``: where the repository's chunks come from (default: the
        store's current files through :func:`repository_chunks`); bench/recommend_batch.py streams
        synthetic ones."""
        self.store, self.users, self.options, self.settings = store, users, options, settings
        self.attributes = settings.taxonomy.names
        self.kind = options.score_kind
        self.taxonomy = attribute_classes(settings.taxonomy, self.attributes)
        self.chunk_rows = chunk_rows
        self.chunks = chunks
        self.pool = options.k if options.mmr_lambda >= 1.0 else max(options.mmr_pool, options.k)
        self.batch = scoring.profile_batch([u.mine for u in users], self.taxonomy)
        self.dims = None if self.batch.embedding_t is None else int(self.batch.embedding_t.shape[0])
        self.weights = scoring.normalised_weights(self.batch.attributes, options.attribute_weights)
        self.exclusions = _Exclusions(store, users, settings.curation)
        photos = int(self.batch.offsets[-1])
        self.block_rows = max(64, SCAN_BLOCK_CELLS // max(photos, len(users), 1))
        self.n_items = 0
        self.seen: dict[str, bool] = {}
        self.moments: dict[str, _Moments] = {}
        self.comparable = _Moments(len(users))  # the embedding over eligible items of the user's networks
        self.foreign_eligible = np.zeros(len(users), dtype=np.float64)
        self.foreign_value = np.zeros(len(users), dtype=np.float64)
        self._reset_kept()
        self.columns: list[str] = []

    # -- the pass --
    def run(self) -> None:
        if self.kind == "hybrid":
            self.moments = {c: _Moments(len(self.users)) for c in scoring.HYBRID_COMPONENTS}
            self._scan(collect=False)
            self._finish_moments()
            self.comparable = _Moments(len(self.users))
        self._scan(collect=True)

    def _scan(self, collect: bool) -> None:
        if self.chunks is None:
            scanner, self.columns = repository_chunks(
                self.store, self.options.filters, self.attributes, self.chunk_rows
            )
            source: Iterable[Any] = scanner.to_batches()
        else:
            source = self.chunks()
        users = len(self.users)
        self.threshold = np.full(users, -np.inf)
        self.foreign_threshold: list[str | None] = [None] * users
        self.pending: list[tuple[np.ndarray, np.ndarray, list[np.ndarray]]] = []
        self.foreign_pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_size = 0
        self.n_items = 0
        self._reset_kept()
        for user in self.users:
            user.n_foreign = 0
            user.rows, user.keys = np.zeros(0, dtype=np.int64), []
            user.foreign_rows = np.zeros(0, dtype=np.int64)
        offset = 0
        for record_batch in source:
            if not record_batch.num_rows:
                continue
            chunk = record_batch if isinstance(record_batch, pa.Table) else pa.Table.from_batches([record_batch])
            self._chunk(chunk, offset, collect)
            offset += chunk.num_rows
            self.n_items = offset
            del chunk, record_batch
            if self.pending_size > self.pool * len(self.users) // 2:
                self._merge()  # after the chunk is released: the merge's copies do not stack on it
        if collect:
            self._merge()
        self._check_vectors()

    def _check_vectors(self) -> None:
        if not self.n_items:
            return
        if self.kind in ("weighted", "hybrid") and not all(self.seen.get(f"{a}_probs") for a in self.attributes):
            raise scoring.MissingVectors(
                "the weighted score needs <attr>_probs columns in the repository and the profile"
            )
        if self.kind in ("embedding", "hybrid") and not self.seen.get("embedding"):
            raise scoring.MissingVectors(
                "the embedding score needs an embedding column in the repository and the profile"
            )

    def _chunk(self, chunk: pa.Table, offset: int, collect: bool) -> None:
        matrix = _chunk_matrix(chunk, self.taxonomy, self.dims, self.seen)
        eligible = ~self.exclusions.excluded(chunk)
        foreign = _foreign_matrix(chunk, self.users)
        if collect and foreign is not None:
            for column, count in enumerate(foreign.sum(axis=0)):
                self.users[column].n_foreign += int(count)
        self._chunk_exact(chunk, matrix, eligible, foreign, offset, collect)

    def _chunk_exact(
        self,
        chunk: pa.Table,
        matrix: scoring.FashionMatrix,
        eligible: np.ndarray,
        foreign: np.ndarray | None,
        offset: int,
        collect: bool,
    ) -> None:
        ids = None
        taken: list[np.ndarray] = []
        for start in range(0, chunk.num_rows, self.block_rows):
            stop = min(chunk.num_rows, start + self.block_rows)
            parts = scoring.batch_components(matrix.take(slice(start, stop)), self.batch, self.weights, [self.kind])
            ok = eligible[start:stop]
            block_foreign = None if foreign is None else foreign[start:stop]
            if not collect:
                self._add_moments(parts, ok, block_foreign)
                continue
            keys, ok, foreign_ok = self._keys(parts, ok, block_foreign)
            rounded = np.round(keys[0], scoring.ROUND_DECIMALS)
            floor = self.threshold
            if stop - start > self.pool:
                # A row below the block's own pool-th best cannot be among the user's best pool.
                ranked = np.where(ok, rounded, -np.inf)
                floor = np.maximum(floor, -np.partition(-ranked, self.pool - 1, axis=0)[self.pool - 1])
            passed = ok & (rounded >= floor[None, :])
            user_of, row_of = np.nonzero(passed.T)
            if len(row_of):
                self.pending.append((user_of, row_of + start + offset, [key[row_of, user_of] for key in keys]))
                self.pending_size += len(row_of)
                taken.append(row_of + start)
            if foreign_ok is not None and foreign_ok.any():
                if ids is None:
                    ids = np.array(chunk["item_id"].cast(pa.string()).to_pylist(), dtype=object)
                block_ids = ids[start:stop]
                for column in np.flatnonzero(foreign_ok.any(axis=0)):
                    rows = np.flatnonzero(foreign_ok[:, column])
                    limit = self.foreign_threshold[column]
                    if limit is not None:
                        rows = rows[block_ids[rows] <= limit]
                    if len(rows):
                        self.foreign_pending.append((np.full(len(rows), column), rows + start + offset))
                        self.pending_size += len(rows)
                        taken.append(rows + start)
        if taken:
            self._keep(chunk, matrix, np.unique(np.concatenate(taken)), offset)

    def _embedding_values(self, parts: scoring.BatchComponents, foreign: np.ndarray | None) -> np.ndarray:
        embedding = _computed(parts.embedding, "embedding")
        if foreign is None:
            return embedding
        return np.where(foreign, self.foreign_value[None, :], embedding)

    def _add_moments(self, parts: scoring.BatchComponents, ok: np.ndarray, foreign: np.ndarray | None) -> None:
        self.comparable.add(_computed(parts.embedding, "embedding"), ok if foreign is None else ok & ~foreign)
        if foreign is not None:
            self.foreign_eligible += (ok & foreign).sum(axis=0)
        self.moments["weighted"].add(_computed(parts.weighted, "weighted"), ok)
        self.moments["matches"].add(parts.matches_share(len(self.attributes)), ok)

    def _finish_moments(self) -> None:
        """After the moments pass: the value of other networks' items (the mean of the comparable
        candidates', 0 without any, as :func:`rank` sets it) and the embedding moments over all
        candidates (those items sit at that mean, so they add to the count only)."""
        comparable = self.comparable
        self.foreign_value = np.where(comparable.n > 0, comparable.mean, 0.0)
        embedding = _Moments(len(self.users))
        embedding.n = comparable.n + self.foreign_eligible
        embedding.mean = self.foreign_value.copy()
        embedding.m2 = np.where(comparable.n > 0, comparable.m2, 0.0)
        self.moments["embedding"] = embedding

    def _keys(
        self, parts: scoring.BatchComponents, ok: np.ndarray, foreign: np.ndarray | None
    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray | None]:
        """The kind's ordering keys for the block, the eligible pairs ranked by them, and (embedding
        score) the eligible pairs of other networks, ranked by item_id once their value is known."""
        if self.kind == "matches":
            matches = _computed(parts.matches, "matches")
            return (
                [
                    matches.astype(np.float64),
                    _computed(parts.best_row, "best_row").astype(np.float64),
                    _computed(parts.match_probability, "match_probability"),
                ],
                ok & (matches > 0),
                None,
            )
        if self.kind == "weighted":
            return [_computed(parts.weighted, "weighted")], ok, None
        if self.kind == "embedding":
            embedding = _computed(parts.embedding, "embedding")
            self.comparable.add(embedding, ok if foreign is None else ok & ~foreign)
            if foreign is None:
                return [embedding.astype(np.float64)], ok, None
            return [embedding.astype(np.float64)], ok & ~foreign, ok & foreign
        weights = scoring.normalised_hybrid_weights(self.options.hybrid_weights)
        values = {
            "embedding": self._embedding_values(parts, foreign),
            "weighted": _computed(parts.weighted, "weighted"),
            "matches": parts.matches_share(len(self.attributes)),
        }
        total = np.zeros(ok.shape, dtype=np.float64)
        for component, weight in weights.items():
            if weight:
                total += weight * self.moments[component].standardise(values[component])
        return [total], ok, None

    # -- the rows the running candidates need --
    def _reset_kept(self) -> None:
        """The kept rows: per chunk a piece (global rows, the rows without their list columns, their
        fashion matrix), so a compaction copies one piece at a time and the Arrow list columns (a
        1280-d embedding is 5 KB a row) are not held twice."""
        self.pieces: list[tuple[np.ndarray, pa.Table, scoring.FashionMatrix]] = []
        self.kept_rows = np.zeros(0, dtype=np.int64)  # sorted global rows of every piece
        self.kept_at = np.zeros((0, 2), dtype=np.int64)  # (piece, local row) of each, same order
        self.kept_ids = pa.array([], type=pa.string())

    def _index_kept(self) -> None:
        rows = [piece[0] for piece in self.pieces]
        if not rows:
            self.kept_rows, self.kept_at = np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.int64)
            self.kept_ids = pa.array([], type=pa.string())
            return
        every = np.concatenate(rows)
        at = np.concatenate([np.stack([np.full(len(r), p), np.arange(len(r))], axis=1) for p, r in enumerate(rows)])
        ids = pa.concat_arrays([piece[1]["item_id"].combine_chunks().cast(pa.string()) for piece in self.pieces])
        order = np.argsort(every, kind="stable")
        self.kept_rows, self.kept_at = every[order], at[order]
        self.kept_ids = ids.take(pa.array(order, type=pa.int64()))

    def _keep(self, chunk: pa.Table, matrix: scoring.FashionMatrix, local: np.ndarray, offset: int) -> None:
        """Keep chunk rows ``local`` (sorted, unique) that are not kept yet."""
        rows = local + offset
        known = np.searchsorted(self.kept_rows, rows)
        fresh = (
            (known >= len(self.kept_rows)) | (self.kept_rows[np.minimum(known, len(self.kept_rows) - 1)] != rows)
            if len(self.kept_rows)
            else np.ones(len(rows), dtype=bool)
        )
        local = local[fresh]
        if not len(local):
            return
        lists = [name for name in (*(f"{a}_probs" for a in self.attributes), "embedding") if name in chunk.column_names]
        table = chunk.drop_columns(lists).take(pa.array(local, type=pa.int64()))
        self.pieces.append((local + offset, table, matrix.take(local)))
        self._index_kept()

    def _positions(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.kept_rows, rows)

    def _ids(self, rows: np.ndarray) -> pa.Array:
        return self.kept_ids.take(pa.array(self._positions(rows), type=pa.int64()))

    def _kept_take(self, rows: np.ndarray) -> tuple[pa.Table, scoring.FashionMatrix]:
        """The kept table rows (without list columns) and fashion matrix of global ``rows``, in order."""
        if not len(rows):
            first = self.pieces[0]
            return first[1].slice(0, 0), first[2].take(np.zeros(0, dtype=np.int64))
        at = self.kept_at[self._positions(rows)]
        tables, matrices, order = [], [], []
        for piece in np.unique(at[:, 0]):
            mine = np.flatnonzero(at[:, 0] == piece)
            local = at[mine, 1]
            tables.append(self.pieces[piece][1].take(pa.array(local, type=pa.int64())))
            matrices.append(self.pieces[piece][2].take(local))
            order.append(mine)
        back = np.empty(len(rows), dtype=np.int64)
        back[np.concatenate(order)] = np.arange(len(rows))
        table = pa.concat_tables(tables).take(pa.array(back, type=pa.int64()))
        return table, _concat_matrices(matrices).take(back)

    # -- the running candidates --
    def _merge(self) -> None:
        """Fold the pending candidates into each user's best ``pool`` (exact: the full order of
        :func:`scoring.top_candidates`), raise the users' thresholds, and drop rows nobody needs."""
        if self.pending:
            user_of = np.concatenate([p[0] for p in self.pending])
            rows = np.concatenate([p[1] for p in self.pending])
            keys = [np.concatenate([p[2][k] for p in self.pending]) for k in range(len(self.pending[0][2]))]
            order = np.argsort(user_of, kind="stable")
            bounds = np.searchsorted(user_of[order], np.arange(len(self.users) + 1))
            for column, user in enumerate(self.users):
                mine = order[bounds[column] : bounds[column + 1]]
                if not len(mine):
                    continue
                all_rows = np.concatenate([user.rows, rows[mine]])
                all_keys = (
                    [np.concatenate([old, new[mine]]) for old, new in zip(user.keys, keys)]
                    if user.keys
                    else [new[mine] for new in keys]
                )
                best = scoring.top_candidates(
                    all_keys, self._ids(all_rows), np.ones(len(all_rows), dtype=bool), self.pool
                )
                user.rows, user.keys = all_rows[best], [key[best] for key in all_keys]
                if len(user.rows) >= self.pool:
                    self.threshold[column] = float(np.round(user.keys[0], scoring.ROUND_DECIMALS).min())
        if self.foreign_pending:
            user_of = np.concatenate([p[0] for p in self.foreign_pending])
            rows = np.concatenate([p[1] for p in self.foreign_pending])
            for column in np.unique(user_of):
                user = self.users[column]
                all_rows = np.unique(np.concatenate([user.foreign_rows, rows[user_of == column]]))
                ids = self._ids(all_rows)
                best = scoring.top_candidates(
                    [np.zeros(len(all_rows))], ids, np.ones(len(all_rows), dtype=bool), self.pool
                )
                user.foreign_rows = all_rows[best]
                if len(best) >= self.pool:
                    self.foreign_threshold[column] = ids[int(best[-1])].as_py()
        self.pending, self.foreign_pending, self.pending_size = [], [], 0
        needed = np.unique(
            np.concatenate([self.kept_rows[:0]] + [u.rows for u in self.users] + [u.foreign_rows for u in self.users])
        )
        if len(needed) < len(self.kept_rows):
            # In place, a piece at a time: each old piece is released as soon as its copy exists (a
            # new list beside the old one held every kept row twice at the merge's peak).
            for index, (rows, table, matrix) in enumerate(self.pieces):
                keep = np.isin(rows, needed)
                if not keep.all():
                    local = np.flatnonzero(keep)
                    self.pieces[index] = (
                        rows[local],
                        table.take(pa.array(local, type=pa.int64())),
                        matrix.take(local),
                    )
                del rows, table, matrix
            self.pieces = [piece for piece in self.pieces if len(piece[0])]
            self._index_kept()

    # -- the end --
    def ranked(self, column: int) -> pa.Table:
        """User ``column``'s output table, as :func:`rank` makes it."""
        user = self.users[column]
        rows, keys = user.rows, user.keys
        if self.kind == "embedding" and len(user.foreign_rows):
            if not self.comparable.n[column]:
                raise scoring.MissingVectors(
                    f"no repository item has embeddings of the profile's networks ({user.source}); "
                    "they come after the next repository refresh"
                )
            rows = np.concatenate([rows, user.foreign_rows])
            keys = [
                np.concatenate(
                    [
                        keys[0] if keys else np.zeros(0),
                        np.full(len(user.foreign_rows), float(self.comparable.mean[column])),
                    ]
                )
            ]
        if not self.pieces:
            empty = empty_repository(self.store, self.attributes)
            return rank(RankRequest(user.profile, self.options), empty, self.attributes, settings=self.settings)
        if len(rows):
            best = scoring.top_candidates(keys, self._ids(rows), np.ones(len(rows), dtype=bool), self.pool)
            rows, primary = rows[best], keys[0][best]
        else:
            primary = np.zeros(0)
        picked_rows, matrix = self._kept_take(rows)
        if not all(self.seen.get(f"{a}_probs") for a in self.attributes):
            matrix = dataclasses.replace(matrix, probs=None)
        if not self.seen.get("embedding"):
            matrix = dataclasses.replace(matrix, embedding=None)
        lam = self.options.mmr_lambda
        similarity = scoring.similarity_matrix(matrix) if lam < 1.0 and len(rows) else np.zeros((0, 0))
        picked, values = scoring.mmr(primary, similarity, self.options.k, lam)
        foreign = foreign_embeddings(user.profile, picked_rows)
        chosen = PickedItems(
            matrix=matrix.take(picked),
            rows=picked_rows.take(pa.array(picked, type=pa.int64())),
            score=primary[picked],
            mmr_score=values,
            foreign=None if foreign is None else foreign[picked],
        )
        return ranked_table(chosen, RankedFor(user.profile, user.mine, self.attributes, self.options))


def missing_profile_vectors(kind: str, mine: scoring.FashionMatrix, dims: int | None) -> str | None:
    """Why ``kind`` cannot score this profile (the one-user path's message), or None."""
    if kind in ("weighted", "hybrid") and mine.probs is None:
        return "the weighted score needs <attr>_probs columns in the repository and the profile"
    if kind in ("embedding", "hybrid"):
        if mine.embedding is None:
            return "the embedding score needs an embedding column in the repository and the profile"
        if dims is not None and mine.embedding.shape[1] != dims:
            return (
                f"the profile's embeddings have {mine.embedding.shape[1]} dimensions, the batch's {dims}: "
                "they come from different networks (embedding_source)"
            )
    return None
