import pyarrow as pa
import pytest

from pipeline.storage import ObjectStore, StoreKeyError, normalize_key


def test_round_trips_bytes_json_and_parquet(any_store):
    any_store.put_bytes("a/b.bin", b"\x00\x01")
    any_store.write_json("meta.json", {"n": 1})
    any_store.write_parquet("t/part.parquet", pa.table({"x": [1, 2, 3]}))

    assert any_store.get_bytes("a/b.bin") == b"\x00\x01"
    assert any_store.read_json("meta.json") == {"n": 1}
    assert any_store.read_parquet("t/part.parquet").column("x").to_pylist() == [1, 2, 3]
    assert any_store.list() == ["a/b.bin", "meta.json", "t/part.parquet"]


def test_overwrite_replaces_and_never_duplicates(any_store):
    any_store.put_bytes("k", b"one")
    any_store.put_bytes("k", b"two")
    assert any_store.get_bytes("k") == b"two"
    assert any_store.list() == ["k"]


def test_missing_key_raises_clear_error(any_store):
    with pytest.raises(FileNotFoundError, match="no object 'nope'"):
        any_store.get_bytes("nope")
    assert any_store.list("nothing/here") == []
    assert not any_store.exists("nope")


def test_reads_every_parquet_under_a_prefix(any_store):
    assert any_store.read_parquet_prefix("parts") is None
    any_store.write_parquet("parts/a.parquet", pa.table({"x": [1]}))
    any_store.write_parquet("parts/b.parquet", pa.table({"x": [2]}))
    assert sorted(any_store.read_parquet_prefix("parts").column("x").to_pylist()) == [1, 2]


def test_delete_prefix(any_store):
    any_store.put_bytes("d/1", b"1")
    any_store.put_bytes("d/2", b"2")
    any_store.put_bytes("keep", b"k")
    assert any_store.delete_prefix("d") == 2
    assert any_store.list() == ["keep"]


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../../b", "s3://x/y", "a\\b"])
def test_rejects_keys_that_escape_the_store(key):
    with pytest.raises(StoreKeyError):
        normalize_key(key)


def test_urls_name_the_store():
    store = ObjectStore("s3://bucket/prefix")
    assert store.url("a/b.parquet") == "s3://bucket/prefix/a/b.parquet"
    assert store.path("a/b.parquet") == "bucket/prefix/a/b.parquet"
    assert store.local_path("a") is None


def test_unsupported_uri_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported store URI"):
        ObjectStore("ftp://host/x")


def test_move_replaces_the_target_whole_and_removes_the_source(any_store):
    any_store.put_bytes("t/target.bin", b"old")
    any_store.put_bytes("staging/new.bin", b"new" * 1000)
    assert any_store.move("staging/new.bin", "t/target.bin") == "t/target.bin"
    assert any_store.get_bytes("t/target.bin") == b"new" * 1000
    assert any_store.list() == ["t/target.bin"]
    any_store.put_bytes("staging/first.bin", b"1")
    any_store.move("staging/first.bin", "fresh/dir/first.bin")  # a target folder that does not exist yet
    assert any_store.get_bytes("fresh/dir/first.bin") == b"1"
    with pytest.raises(FileNotFoundError):
        any_store.move("staging/gone.bin", "t/target.bin")
    assert any_store.get_bytes("t/target.bin") == b"new" * 1000  # a failed move leaves the target as it was


def test_the_s3_client_has_bounded_timeouts_and_attempts(s3_store):
    """The stack's defaults would wait over six minutes per call on an endpoint that never answers."""
    from pipeline.storage import S3_CLIENT

    options = s3_store.storage_options["config_kwargs"]
    assert (options["connect_timeout"], options["read_timeout"]) == (
        S3_CLIENT["connect_timeout"],
        S3_CLIENT["read_timeout"],
    )
    assert options["retries"] == {"total_max_attempts": S3_CLIENT["max_attempts"], "mode": "standard"}
    assert s3_store.fs.retries == S3_CLIENT["retries"] <= 3
    config = s3_store.fs.connect().meta.config  # what the botocore client really got
    assert (config.connect_timeout, config.read_timeout) == (S3_CLIENT["connect_timeout"], S3_CLIENT["read_timeout"])
    assert config.retries["total_max_attempts"] == S3_CLIENT["max_attempts"]
    assert 60 <= s3_store.s3_call_bound_s() <= 180
    assert s3_store.s3_upload_deadline_s(300 << 20) == s3_store.s3_call_bound_s() + 300 / S3_CLIENT["min_upload_mb_s"]
    assert ObjectStore("s3://b/p", s3_client={"read_timeout": 2, "max_attempts": 1, "retries": 1}).s3_call_bound_s() < 8


@pytest.mark.parametrize("call", ["put", "large put", "get"])
def test_a_silent_s3_endpoint_fails_a_call_within_the_bound(s3_env, call):
    """An endpoint that accepts connections and never answers (a frozen server, a half-dead proxy):
    the call raises a timeout after the configured timeouts and attempts instead of waiting for ever.
    Both PUTs used to hang: aiohttp waits for botocore's ``Expect: 100-continue`` answer with no
    timeout, and no socket timeout covers sending a body that nobody reads (here 32 MB, more than the
    kernel's buffers take)."""
    import socket
    import threading
    import time

    data = {"put": b"data" * 1000, "large put": b"\x00" * (32 << 20), "get": b""}[call]
    outcome: dict[str, object] = {}
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        store = ObjectStore(
            "s3://fn-silent/p",
            endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}",
            s3_client={"connect_timeout": 1, "read_timeout": 1, "max_attempts": 2, "retries": 1, "min_upload_mb_s": 64},
        )
        bound = store.s3_upload_deadline_s(len(data)) if data else store.s3_call_bound_s()

        def run() -> None:
            started = time.monotonic()
            try:
                store.put_bytes("k", data) if data else store.get_bytes("k")
            except Exception as error:  # noqa: BLE001 - inspected below
                outcome["error"] = error
            outcome["seconds"] = time.monotonic() - started

        worker = threading.Thread(target=run, daemon=True)  # a hang must fail the test, not the suite
        worker.start()
        worker.join(timeout=bound + 10)
    assert not worker.is_alive(), f"{call} to a silent endpoint still waits after {bound + 10:.0f} s"
    assert "timeout" in f"{type(outcome.get('error')).__name__} {outcome.get('error')}".lower(), outcome
    assert 1.0 <= outcome["seconds"] <= bound + 2.0


# -- issue 17: create-only writes, atomic updates, private files, symbolic links ---------------------------
def test_create_bytes_never_replaces_an_object(any_store):
    from pipeline.storage import StoreConflict

    assert any_store.create_bytes("log/a.bin", b"first") == "log/a.bin"
    with pytest.raises(StoreConflict, match="never replaced|refused"):
        any_store.create_bytes("log/a.bin", b"second")
    assert any_store.get_bytes("log/a.bin") == b"first"
    assert any_store.list() == ["log/a.bin"]  # no temporary file left behind


def test_update_json_is_atomic_against_concurrent_updates(any_store):
    """20 threads each add one name to one JSON object: all 20 are kept (a plain read-then-write loses
    most of them)."""
    from concurrent.futures import ThreadPoolExecutor

    def add(name):
        return any_store.update_json("review/list.json", lambda value: {**(value or {}), name: True})

    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(add, [f"n{i}" for i in range(20)]))
    assert sorted(any_store.read_json("review/list.json")) == sorted(f"n{i}" for i in range(20))
    assert any_store.list() == ["review/list.json"]  # the lock file is not an object


def test_update_json_loses_no_race_on_s3(s3_store, monkeypatch):
    """A writer that changes the object between our read and our write makes our conditional write fail;
    update_json then reads again and applies its change on top (no lost update)."""
    s3_store.write_json("k.json", {"a": 1})
    raced = []

    def change(value):
        if not raced:  # the first attempt: someone else writes in between
            raced.append(True)
            s3_store.write_json("k.json", {**value, "b": 2})
        return {**value, "c": 3}

    assert s3_store.update_json("k.json", change) == {"a": 1, "b": 2, "c": 3}
    assert s3_store.read_json("k.json") == {"a": 1, "b": 2, "c": 3}


def test_an_exception_in_the_change_writes_nothing(any_store):
    any_store.write_json("k.json", {"a": 1})

    def refuse(value):
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        any_store.update_json("k.json", refuse)
    assert any_store.read_json("k.json") == {"a": 1}


def test_private_files_are_0600(file_store):
    import os
    import stat

    file_store.write_json("secret.json", {"x": 1}, private=True)
    file_store.update_json("secret2.json", lambda v: {"y": 2}, private=True)
    file_store.write_json("public.json", {"z": 3})
    for key in ("secret.json", "secret2.json"):
        assert stat.S_IMODE(os.stat(file_store.local_path(key)).st_mode) == 0o600, key
    assert stat.S_IMODE(os.stat(file_store.local_path("public.json")).st_mode) & 0o044  # unchanged default


def test_a_symlink_that_leaves_the_store_is_not_followed(file_store, tmp_path):
    import os

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    file_store.put_bytes("inside/ok.txt", b"ok")
    root = file_store.local_path("inside/ok.txt").rsplit("/inside/", 1)[0]
    os.symlink(outside / "secret.txt", f"{root}/inside/link.txt")
    os.symlink(outside, f"{root}/dir-link")
    os.symlink(f"{root}/inside/ok.txt", f"{root}/inside/internal-link.txt")  # stays inside: fine
    with pytest.raises(StoreKeyError, match="symbolic link"):
        file_store.get_bytes("inside/link.txt")
    with pytest.raises(StoreKeyError, match="symbolic link"):
        file_store.get_bytes("dir-link/secret.txt")
    with pytest.raises(StoreKeyError, match="symbolic link"):
        file_store.put_bytes("dir-link/planted.txt", b"x")
    with pytest.raises(StoreKeyError, match="symbolic link"):
        file_store.put_bytes("inside/link.txt", b"x")
    assert not (outside / "planted.txt").exists() and (outside / "secret.txt").read_text() == "host secret"
    assert file_store.get_bytes("inside/internal-link.txt") == b"ok"
    assert file_store.list() == ["inside/internal-link.txt", "inside/ok.txt"]
