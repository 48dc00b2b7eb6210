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
