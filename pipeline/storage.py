"""Object storage: the one module that reads and writes the store.

A store is a URI: ``file:///abs/path`` (the embedded default) or ``s3://bucket/prefix`` on AWS or any
S3-compatible endpoint (MinIO, moto), the endpoint taken from ``AWS_ENDPOINT_URL``. Both go through
fsspec, so every caller uses one code path. Keys are ``/``-separated paths relative to the store root.
Writes are atomic from a reader's view: a local write goes to a temporary file that is renamed into
place; an S3 PUT of one object is atomic by itself.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from typing import TYPE_CHECKING, Any, Iterator

import fsspec

if TYPE_CHECKING:
    import pyarrow as pa


class StoreKeyError(ValueError):
    """A key that would escape the store root or is otherwise malformed."""


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

    def __init__(self, uri: str, endpoint_url: str | None = None) -> None:
        if uri.startswith("file://"):
            self.protocol = "file"
            self.root = uri[len("file://"):].rstrip("/") or "/"
            self.storage_options: dict[str, Any] = {}
        elif uri.startswith("s3://"):
            self.protocol = "s3"
            self.root = uri[len("s3://"):].strip("/")
            if not self.root:
                raise ValueError(f"an S3 store needs a bucket: {uri!r}")
            self.storage_options = {"use_listings_cache": False, "skip_instance_cache": True}
            if endpoint_url:
                self.storage_options["client_kwargs"] = {"endpoint_url": endpoint_url}
        else:
            raise ValueError(f"unsupported store URI {uri!r}: use file:///path or s3://bucket/prefix")
        self.uri = uri.rstrip("/")
        self.endpoint_url = endpoint_url
        self.fs = fsspec.filesystem(self.protocol, **self.storage_options)

    def __repr__(self) -> str:
        return f"ObjectStore({self.uri!r})"

    # -- addressing -------------------------------------------------------------------------
    def path(self, key: str) -> str:
        """The filesystem path (no scheme) of ``key``, as fsspec and pyarrow take it."""
        return posixpath.join(self.root, normalize_key(key))

    def url(self, key: str = "") -> str:
        """The full URI of ``key`` (or of the store root)."""
        return f"{self.uri}/{normalize_key(key)}" if key else self.uri

    def local_path(self, key: str) -> str | None:
        """A local file path for ``key`` when the store is a folder, else None."""
        return self.path(key) if self.protocol == "file" else None

    # -- reading ------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

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
        return sorted(p[len(root):] for p in found if p.startswith(root) and not _is_temporary(p))

    def read_parquet(self, key: str, columns: list[str] | None = None) -> "pa.Table":
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(self.get_bytes(key)), columns=columns)

    def read_parquet_prefix(self, prefix: str) -> "pa.Table | None":
        """All ``.parquet`` objects under ``prefix`` as one table, or None when there are none."""
        import pyarrow as pa

        tables = [self.read_parquet(k) for k in self.list(prefix) if k.endswith(".parquet")]
        return pa.concat_tables(tables, promote_options="default") if tables else None

    # -- writing ------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` to ``key`` atomically; returns the key."""
        path = self.path(key)
        if self.protocol == "file":
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)
        return normalize_key(key)

    def write_json(self, key: str, value: Any) -> str:
        return self.put_bytes(key, json.dumps(value, indent=2, sort_keys=True, default=str).encode())

    def write_parquet(self, key: str, table: "pa.Table") -> str:
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        return self.put_bytes(key, buffer.getvalue())

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many were deleted."""
        keys = self.list(prefix)
        for key in keys:
            self.fs.rm_file(self.path(key))
        return len(keys)

    def iter_bytes(self, keys: list[str]) -> Iterator[tuple[str, bytes]]:
        for key in keys:
            yield key, self.get_bytes(key)


def _is_temporary(path: str) -> bool:
    return ".tmp-" in posixpath.basename(path)


def open_store(uri: str | None = None) -> ObjectStore:
    """The configured store (or the one at ``uri``), with the configured S3 endpoint."""
    from pipeline.settings import get_settings

    settings = get_settings()
    return ObjectStore(uri or settings.store_uri, endpoint_url=settings.s3_endpoint_url)
