"""Object storage: the one module that reads and writes the store.

A store is a URI: ``file:///abs/path`` (the embedded default) or ``s3://bucket/prefix`` on AWS or any
S3-compatible endpoint (MinIO, moto), the endpoint taken from ``AWS_ENDPOINT_URL``. Both go through
fsspec, so every caller uses one code path. Keys are ``/``-separated paths relative to the store root.
Writes are atomic from a reader's view: a local write goes to a temporary file that is renamed into
place; an S3 PUT of one object is atomic by itself (s3fs sends objects over 100 MB as a multipart
upload, which becomes visible only when it completes, and is aborted when it fails).

Writes that must not lose a concurrent one: :meth:`ObjectStore.create_bytes` never replaces an object
(a local hard link, which fails on an existing name; ``If-None-Match: *`` on S3), and
:meth:`ObjectStore.update_json` is a read-modify-write that is atomic against other writers of the same
key in any process (a lock file beside the object locally, ``<key>.tmp-lock``; a compare-and-swap loop with ``If-Match`` on the
ETag, or ``If-None-Match: *`` for a new object, on S3). ``private=True`` writes a local file as 0600.

A ``file://`` store reads and writes only inside its root: a key whose path resolves, through a symbolic
link planted in the folder, to a place outside the root is refused (:class:`StoreKeyError`), and
:meth:`ObjectStore.list` leaves such links out.

An S3 endpoint that goes away fails a call within a bounded time instead of hanging the task: every
request has a connect and a read timeout and a bounded number of attempts (:data:`S3_CLIENT`),
uploads do not wait for a ``100 Continue`` that no timeout covers (:func:`_no_expect_continue`) and
have a deadline by their size, so the worst case of one call is :meth:`ObjectStore.s3_call_bound_s`
(about two and a half minutes with the defaults for an endpoint that accepts connections but never
answers; a few seconds for one that refuses them), plus, for an upload, its size at 1 MB/s.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import posixpath
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import fsspec

if TYPE_CHECKING:
    import pyarrow as pa


# The S3 client's bounds. botocore: a timeout per connect and per socket read, ``max_attempts`` tries
# of each request (standard mode: transient errors and throttling, with jittered exponential backoff);
# s3fs: ``retries`` tries of the whole call around that (timeouts and broken responses only). Without
# them the stack's defaults (15 s reads, 5 botocore attempts inside 5 s3fs tries) keep a task waiting on a
# silent endpoint for over six minutes per call. No socket timeout covers sending a body that the
# server stopped reading, so an upload also has a deadline: the bound above plus its size at
# ``min_upload_mb_s`` (an upload slower than that on average is taken for a stalled one).
S3_CLIENT = {"connect_timeout": 5, "read_timeout": 20, "max_attempts": 3, "retries": 2, "min_upload_mb_s": 1.0}


class StoreKeyError(ValueError):
    """A key that would escape the store root or is otherwise malformed."""


class StoreConflict(RuntimeError):
    """A conditional write lost: the object exists (create-only) or changed since it was read."""


# How often :meth:`ObjectStore.update_json` retries after losing a compare-and-swap race on S3, and how long
# it waits for the lock file of a local store.
UPDATE_ATTEMPTS = 50
LOCK_TIMEOUT_S = 60.0


def normalize_key(key: str) -> str:
    """A clean relative key; rejects absolute keys, ``..`` segments and empty keys."""
    if not isinstance(key, str) or not key.strip("/"):
        raise StoreKeyError(f"empty store key: {key!r}")
    if key.startswith("/") or "://" in key or "\\" in key:
        raise StoreKeyError(f"store keys are relative paths inside the store, got {key!r}")
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StoreKeyError(f"store key may not contain '..': {key!r}")
    return "/".join(parts)


class ObjectStore:
    """Bytes, JSON and Parquet under one root URI."""

    def __init__(self, uri: str, endpoint_url: str | None = None, s3_client: dict[str, Any] | None = None) -> None:
        """``s3_client``: overrides of :data:`S3_CLIENT` (connect_timeout, read_timeout, max_attempts,
        retries, min_upload_mb_s)."""
        self.s3_client = {**S3_CLIENT, **(s3_client or {})}
        if uri.startswith("file://"):
            self.protocol = "file"
            self.root = uri[len("file://") :].rstrip("/") or "/"
            self.storage_options: dict[str, Any] = {}
        elif uri.startswith("s3://"):
            self.protocol = "s3"
            self.root = uri[len("s3://") :].strip("/")
            if not self.root:
                raise ValueError(f"an S3 store needs a bucket: {uri!r}")
            self.storage_options = {
                "use_listings_cache": False,
                "skip_instance_cache": True,
                "config_kwargs": {
                    "connect_timeout": self.s3_client["connect_timeout"],
                    "read_timeout": self.s3_client["read_timeout"],
                    "retries": {"total_max_attempts": int(self.s3_client["max_attempts"]), "mode": "standard"},
                },
            }
            if endpoint_url:
                self.storage_options["client_kwargs"] = {"endpoint_url": endpoint_url}
            self.storage_options["session"] = _s3_session()
        else:
            raise ValueError(f"unsupported store URI {uri!r}: use file:///path or s3://bucket/prefix")
        self.uri = uri.rstrip("/")
        self.endpoint_url = endpoint_url
        self.fs = fsspec.filesystem(self.protocol, **self.storage_options)
        if self.protocol == "s3":
            self.fs.retries = int(self.s3_client["retries"])  # s3fs's tries of a call (a class attribute)

    def s3_call_bound_s(self) -> float:
        """The longest one S3 call can take against an endpoint that never answers: every try of every
        attempt waiting for its full timeout, plus the backoff between attempts (standard mode: at most
        2**n s before attempt n + 1, capped at 20 s; s3fs: 0.1 * 1.7**n s between its tries)."""
        c = self.s3_client
        attempts, tries = int(c["max_attempts"]), int(c["retries"])
        per_attempt = c["connect_timeout"] + c["read_timeout"]
        backoff = sum(min(2.0**n, 20.0) for n in range(attempts - 1))
        return tries * (attempts * per_attempt + backoff) + sum(min(1.7**n * 0.1, 15) for n in range(tries))

    def s3_upload_deadline_s(self, size: int) -> float:
        """How long an upload of ``size`` bytes may take before it is abandoned as stalled."""
        return self.s3_call_bound_s() + size / (float(self.s3_client["min_upload_mb_s"]) * 2**20)

    def __repr__(self) -> str:
        return f"ObjectStore({self.uri!r})"

    # -- addressing -------------------------------------------------------------------------
    def path(self, key: str) -> str:
        """The filesystem path (no scheme) of ``key``, as fsspec and pyarrow take it.

        In a ``file://`` store, a path that a symbolic link leads out of the root is refused."""
        path = posixpath.join(self.root, normalize_key(key))
        if self.protocol == "file" and not self._inside_root(path):
            raise StoreKeyError(f"store key {key!r} leads out of the store {self.uri} through a symbolic link")
        return path

    def _inside_root(self, path: str) -> bool:
        """Whether ``path``, every symbolic link on it resolved, is the local root or below it."""
        root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)

    def url(self, key: str = "") -> str:
        """The full URI of ``key`` (or of the store root)."""
        return f"{self.uri}/{normalize_key(key)}" if key else self.uri

    def local_path(self, key: str) -> str | None:
        """A local file path for ``key`` when the store is a folder, else None."""
        return self.path(key) if self.protocol == "file" else None

    # -- reading ------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def version(self, key: str) -> str | None:
        """A cheap token that changes whenever the object at ``key`` is written (None: no object): the
        file's inode, size and modification time locally (every write renames a new file into place),
        the ETag on S3 (one HEAD request)."""
        path = self.path(key)
        if self.protocol == "file":
            try:
                info = os.stat(path)
            except FileNotFoundError:
                return None
            return f"{info.st_ino}-{info.st_size}-{info.st_mtime_ns}"
        return self._s3_etag(path)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(key))
        except FileNotFoundError:
            raise FileNotFoundError(f"no object {key!r} in {self.uri}") from None

    def read_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def list(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (recursively), sorted; [] when there is none."""
        base = self.path(prefix) if prefix else self.root
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        root = self.root.rstrip("/") + "/"
        keys = [p[len(root) :] for p in found if p.startswith(root) and not _is_temporary(p)]
        if self.protocol == "file":
            keys = [k for k in keys if self._inside_root(root + k)]
        return sorted(keys)

    def read_parquet(self, key: str, columns: builtins.list[str] | None = None) -> pa.Table:
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(self.get_bytes(key)), columns=columns)

    def read_parquet_prefix(self, prefix: str) -> pa.Table | None:
        """All ``.parquet`` objects under ``prefix`` as one table, or None when there are none."""
        import pyarrow as pa

        tables = [self.read_parquet(k) for k in self.list(prefix) if k.endswith(".parquet")]
        return pa.concat_tables(tables, promote_options="default") if tables else None

    # -- writing ------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, *, private: bool = False) -> str:
        """Write ``data`` to ``key`` atomically; returns the key. ``private``: a local file is 0600."""
        path = self.path(key)
        if self.protocol == "file":
            os.replace(self._local_temporary(path, data, private), path)
        else:
            self._s3_put(key, path, data)
        return normalize_key(key)

    def create_bytes(self, key: str, data: bytes, *, private: bool = False) -> str:
        """Write ``data`` to ``key`` only if no object is there; never replaces one (:class:`StoreConflict`).

        Locally the complete file is hard-linked into place (``link`` fails on an existing name, like
        ``O_EXCL``, and readers never see a part); on S3 the PUT carries ``If-None-Match: *``."""
        path = self.path(key)
        if self.protocol == "file":
            tmp = self._local_temporary(path, data, private)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise StoreConflict(f"object {key!r} exists in {self.uri}; it is never replaced") from None
            finally:
                os.unlink(tmp)
        else:
            self._s3_put(key, path, data, condition={"IfNoneMatch": "*"})
        return normalize_key(key)

    def update_json(self, key: str, change: Callable[[Any], Any], *, private: bool = False) -> Any:
        """Replace the JSON object at ``key`` (None when there is none) by ``change(value)``, atomically
        against every other ``update_json`` of that key; returns the new value.

        ``change`` may run several times (on S3, once per lost race), so it must be a pure function of
        its argument; an exception it raises aborts the update and writes nothing."""
        path = self.path(key)
        if self.protocol == "file":
            from filelock import FileLock

            os.makedirs(os.path.dirname(path), exist_ok=True)
            with FileLock(f"{path}.tmp-lock", timeout=LOCK_TIMEOUT_S):
                value = change(json.loads(self.get_bytes(key)) if os.path.exists(path) else None)
                self.put_bytes(key, _json_bytes(value), private=private)
                return value
        for _ in range(UPDATE_ATTEMPTS):
            etag = self._s3_etag(path)
            value = change(None if etag is None else self.read_json(key))
            condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
            try:
                self._s3_put(key, path, _json_bytes(value), condition=condition)
                return value
            except StoreConflict:
                continue
        raise StoreConflict(f"{key!r} in {self.uri} changed under {UPDATE_ATTEMPTS} attempts to update it")

    def _local_temporary(self, path: str, data: bytes, private: bool) -> str:
        """A complete temporary file beside ``path`` holding ``data`` (0600 when ``private``)."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        if private:
            os.chmod(tmp, 0o600)  # the mode above is masked by the umask only towards fewer rights
        return tmp

    def _s3_etag(self, path: str) -> str | None:
        """The object's ETag, or None when there is none (read before its body, so that a change in
        between makes the conditional write fail instead of being overwritten)."""
        try:
            return self.fs.info(path)["ETag"]
        except FileNotFoundError:
            return None

    def _s3_put(self, key: str, path: str, data: bytes, condition: dict[str, str] | None = None) -> None:
        from botocore.exceptions import ClientError
        from fsspec.exceptions import FSTimeoutError

        deadline = self.s3_upload_deadline_s(len(data))
        try:
            # fsspec cancels the upload at the deadline
            self.fs.pipe_file(path, data, timeout=deadline, **(condition or {}))
        except FSTimeoutError as error:
            raise TimeoutError(
                f"writing {key!r} ({len(data)} bytes) to {self.uri} did not finish in {deadline:.0f} s:"
                f" the S3 endpoint {self.endpoint_url or ''} stopped answering"
            ) from error
        except (ClientError, OSError) as error:
            if condition and _precondition_failed(error):
                raise StoreConflict(f"conditional write of {key!r} to {self.uri} refused: {condition}") from error
            raise

    def move(self, source: str, target: str) -> str:
        """Replace ``target`` with the object at ``source`` (which is gone afterwards) so that a reader
        of ``target`` sees the old object or the new one, never a part: a local rename, or an S3
        server-side copy (atomic like a PUT, and no bytes travel again) followed by the deletion of
        ``source``. Returns ``target``'s key."""
        if self.protocol == "file":
            path = self.path(target)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.replace(self.path(source), path)
        else:
            try:
                self.fs.cp_file(self.path(source), self.path(target))
            except FileNotFoundError:
                raise FileNotFoundError(f"no object {source!r} in {self.uri}") from None
            self.delete(source)
        return normalize_key(target)

    def write_json(self, key: str, value: Any, *, private: bool = False) -> str:
        return self.put_bytes(key, _json_bytes(value), private=private)

    def write_parquet(self, key: str, table: pa.Table) -> str:
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        return self.put_bytes(key, buffer.getvalue())

    def delete(self, key: str) -> None:
        """Delete the object ``key`` (it must exist)."""
        self.fs.rm_file(self.path(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many were deleted."""
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    def iter_bytes(self, keys: builtins.list[str]) -> Iterator[tuple[str, bytes]]:
        for key in keys:
            yield key, self.get_bytes(key)


def _no_expect_continue(request: Any, **kwargs: Any) -> None:
    """Send an upload's body at once instead of asking for ``100 Continue`` first.

    botocore puts ``Expect: 100-continue`` on every S3 PUT with a body; aiohttp then waits for the
    interim answer before sending the body, and no timeout covers that wait: a PUT to an endpoint that
    accepts the connection and then says nothing (a frozen server, a half-dead proxy) would hang the
    task for ever (as seen in marin-community/marin#6719). The header is not signed, so dropping it
    changes nothing else; the read timeout then bounds the wait for the answer.
    """
    if "Expect" in request.headers:
        del request.headers["Expect"]


def _s3_session() -> Any:
    """An aiobotocore session whose S3 clients send no ``Expect: 100-continue``; s3fs keeps a session
    it is given when it reconnects, so every client it creates has the handler. It pickles as a new
    one (so does the store's filesystem, as fsspec filesystems do)."""
    from aiobotocore.session import AioSession

    class Session(AioSession):
        def __reduce__(self) -> tuple:
            return (_s3_session, ())

    session = Session()
    session.register("before-send.s3", _no_expect_continue)
    return session


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode()


def _precondition_failed(error: BaseException | None) -> bool:
    """Whether an S3 error (as botocore or s3fs raises it) is a failed ``If-Match``/``If-None-Match``
    (412 PreconditionFailed; 409 ConditionalRequestConflict when a concurrent conditional write won)."""
    while error is not None:
        response = getattr(error, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return True
        if "PreconditionFailed" in str(error) or "At least one of the pre-conditions" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _is_temporary(path: str) -> bool:
    return ".tmp-" in posixpath.basename(path)


def open_store(uri: str | None = None) -> ObjectStore:
    """The configured store (or the one at ``uri``), with the configured S3 endpoint."""
    from pipeline.settings import get_settings

    settings = get_settings()
    return ObjectStore(uri or settings.store_uri, endpoint_url=settings.s3_endpoint_url)
