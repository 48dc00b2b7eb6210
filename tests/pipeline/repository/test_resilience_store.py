"""The S3 endpoint disappears in the middle of a repository refresh, and nothing is lost.

A real moto S3 server runs in this process on 127.0.0.1 (:class:`LocalS3`). A fault stops it right after
a chosen write of the refresh (plan, a shard, a file of the commit, the commit record): the listener
closes and every open connection is cut, so the next request of the stage meets a real connection
failure (``silent=True``: the port keeps accepting TCP connections but nothing ever answers, a frozen
server). moto keeps its buckets in this process's memory, so the endpoint comes back with its data,
the way MinIO restarts from its disk. Then, as Airflow would, the failed task and the ones after it
run again; the repository must equal a clean run's on a fresh bucket, row for row and file for file.
Inference is the deterministic fake of test_repository.py (the failure is in storage, not in Keras),
except in the last test, which runs the DAG's own ``pipeline.repository.infer.infer_shard`` on tiny networks.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import BotoCoreError, EndpointConnectionError

from pipeline import store_layout
from pipeline.repository import commit as RC
from pipeline.repository import dataset as R
from pipeline.repository import plan as RP
from pipeline.storage import ObjectStore
from tests.pipeline.repository.test_repository import ATTRIBUTES, T1, T2, fake_infer, publish, sized, write_batch

NIGHT1, NIGHT2 = "catalog-20261101", "catalog-20261102"
CONFIG = {"max_file_rows": 3, "shard_size": 5}  # night 2: 4 files written, 12 items inferred in 3 shards
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class LocalS3:
    """moto's S3 server on 127.0.0.1 that can go away and come back on the same port with its data."""

    def __init__(self) -> None:
        self.port = 0
        self.outages = 0
        self.running = False
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._silent: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        endpoint = self

        class Handler(MotoRequestHandler):
            def setup(self) -> None:
                super().setup()
                with endpoint._lock:
                    endpoint._connections.add(self.connection)

            def finish(self) -> None:
                with endpoint._lock:
                    endpoint._connections.discard(self.connection)
                super().finish()

            def log(self, *args: Any) -> None:  # no access log
                pass

        if self._silent is not None:
            self._silent.close()
            self._silent = None
        self._server = make_server(
            "127.0.0.1",
            self.port,
            DomainDispatcherApplication(create_backend_app),
            threaded=True,
            request_handler=Handler,
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self.running = True

    def stop(self, *, silent: bool = False) -> None:
        """The endpoint goes away: no listener (connections are refused) and every open connection cut.
        ``silent``: the port still accepts connections (the kernel's backlog) but never answers."""
        self._server.shutdown()  # werkzeug closes the listening socket when serve_forever returns
        self._thread.join(timeout=10)
        with self._lock:
            open_connections = list(self._connections)
        for connection in open_connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if silent:
            self._silent = socket.socket()
            self._silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._silent.bind(("127.0.0.1", self.port))
            self._silent.listen(64)
        self.outages += 1
        self.running = False

    def store(self, **s3_client: Any) -> ObjectStore:
        """A fresh bucket on this endpoint, as an ObjectStore (``s3_client``: its timeouts)."""
        import boto3

        bucket = f"fn-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.url).create_bucket(Bucket=bucket)
        return ObjectStore(f"s3://{bucket}/fashionnet", endpoint_url=self.url, s3_client=s3_client or None)


@pytest.fixture(scope="module")
def local_s3():
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        endpoint = LocalS3()
        endpoint.start()
        yield endpoint
        if endpoint.running:
            endpoint.stop()
        elif endpoint._silent is not None:
            endpoint._silent.close()


@pytest.fixture(autouse=True)
def _endpoint_running(local_s3):
    """Each test starts with the endpoint up (one that failed during an outage does not take the next down)."""
    if not local_s3.running:
        local_s3.start()


# -- the refresh, as the DAG's tasks run it ---------------------------------------------------------------
def night_one(store: ObjectStore) -> None:
    """The state before the fault: 9 items of night 1 committed in 3 files, v1 networks."""
    publish(store, "v1")
    write_batch(store, NIGHT1, range(9))
    RP.plan_refresh(store, RP.RefreshPlanRequest(NIGHT1, ATTRIBUTES, batch_id=NIGHT1), sized(CONFIG))
    fake_infer(store, NIGHT1, T1)
    RC.commit_refresh(store, NIGHT1, repository=sized(CONFIG))
    # Night 2 re-scores all 9 (a new pattern network), changes one price and adds 3 items in a new partition.
    publish(store, "v2", ["pattern"])
    write_batch(store, NIGHT2, range(12), crawled_at=T2, price={2: 99.0})


STAGES: list[tuple[str, Callable[[ObjectStore], Any]]] = [
    (
        "plan",
        lambda store: RP.plan_refresh(store, RP.RefreshPlanRequest(NIGHT2, ATTRIBUTES, batch_id=NIGHT2), sized(CONFIG)),
    ),
    ("infer_shard", lambda store: fake_infer(store, NIGHT2, T2)),
    ("commit", lambda store: RC.commit_refresh(store, NIGHT2, repository=sized(CONFIG))),
]


def snapshot(store: ObjectStore) -> dict[str, Any]:
    """What a reader of the repository sees: the table, every data file's rows, the commit records."""
    return {
        "table": R.read_repository(store),
        "files": {k[len(store_layout.FASHION_VECTORS_PREFIX) :]: store.read_parquet(k) for k in R.data_keys(store)},
        "common_metadata": store.get_bytes(store_layout.REPOSITORY_COMMON_METADATA_KEY)
        if store.exists(store_layout.REPOSITORY_COMMON_METADATA_KEY)
        else None,
        "commits": {
            k.rsplit("/", 1)[1]: store.read_json(k) for k in store.list(store_layout.REPOSITORY_COMMITS_PREFIX)
        },
    }


_CLEAN: dict[str, dict[str, Any]] = {}


def clean_run(endpoint: LocalS3) -> dict[str, Any]:
    """Nights 1 and 2 on a fresh bucket without a fault (computed once per module)."""
    if "night2" not in _CLEAN:
        store = endpoint.store()
        night_one(store)
        _CLEAN["night1"] = snapshot(store)
        for _, run in STAGES:
            run(store)
        _CLEAN["night2"] = snapshot(store)
    return _CLEAN


def plain_reader_table(store: ObjectStore, endpoint: LocalS3) -> pa.Table:
    """The dataset as an analyst reads it: pyarrow's own S3 client over the prefix, Hive partitions."""
    s3 = pafs.S3FileSystem(
        endpoint_override=endpoint.url,
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        request_timeout=10,
        connect_timeout=5,
    )
    dataset = ds.dataset(
        store.path(store_layout.FASHION_VECTORS_PREFIX), filesystem=s3, format="parquet", partitioning="hive"
    )
    table = dataset.to_table()
    return table.select([n for n in table.column_names if n not in R.PARTITION_COLUMNS]).sort_by("item_id")


def without_partitions(table: pa.Table) -> pa.Table:
    return table.select([n for n in table.column_names if n not in R.PARTITION_COLUMNS])


# -- the fault ----------------------------------------------------------------------------------------
class Outage:
    """Stops the endpoint right after the first store operation of ``kind`` on a key matching
    ``pattern``: ``put`` (put_bytes, which write_parquet and write_json use), ``move`` (the commit's
    publish of a staged file) or ``delete`` (one object of the staging's clean-up)."""

    def __init__(
        self, store: ObjectStore, endpoint: LocalS3, kinds: tuple[str, ...], pattern: str, silent: bool
    ) -> None:
        self.store, self.endpoint, self.pattern, self.silent = store, endpoint, re.compile(pattern), silent
        self.fired_on: str | None = None
        self.fired_at = 0.0
        self.undo: list[Callable[[], None]] = []
        root = store.root + "/"
        if "put" in kinds:
            self._wrap(store, "put_bytes", lambda args: args[0])
        if "move" in kinds and hasattr(store, "move"):
            self._wrap(store, "move", lambda args: args[1])
        if "delete" in kinds:
            self._wrap(store.fs, "rm_file", lambda args: args[0][len(root) :])

    def _wrap(self, owner: Any, name: str, key_of: Callable[[tuple], str]) -> None:
        real = getattr(owner, name)

        def operation(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            key = key_of(args)
            if self.fired_on is None and self.pattern.search(key):
                self.fired_on = key
                self.endpoint.stop(silent=self.silent)
                self.fired_at = time.monotonic()
            return result

        own = vars(owner).get(name)  # fsspec sets its sync methods on the instance
        setattr(owner, name, operation)
        self.undo.append(lambda: setattr(owner, name, own) if own is not None else delattr(owner, name))

    def remove(self) -> None:
        for undo in self.undo:
            undo()


@dataclass
class Fault:
    stage: str  # the task that fails
    kinds: tuple[str, ...]
    pattern: str  # the key after whose write the endpoint goes away
    readers_see: str  # "old": exactly night 1; "rows": each item once, its row old or new; "new": night 2


FAULTS = {
    "during plan": Fault("plan", ("put",), rf"_staging/{NIGHT2}/plan\.parquet$", "old"),
    "during infer_shard": Fault("infer_shard", ("put",), rf"_staging/{NIGHT2}/shard-00000\.parquet$", "old"),
    # The first Parquet file of the commit has been uploaded (wherever the commit puts it).
    "commit: first file uploaded": Fault(
        "commit", ("put",), r"(/publish/.*|^repository/fashion_vectors/crawl_date=.*)\.parquet$", "old"
    ),
    # The first file is in place in the dataset (a rename on S3 is a copy; the window is those copies).
    "commit: first file published": Fault(
        "commit", ("put", "move"), r"^repository/fashion_vectors/crawl_date=", "rows"
    ),
    "commit: record written": Fault("commit", ("put",), rf"^repository/commits/{NIGHT2}\.json$", "new"),
    "commit: staging clean-up": Fault("commit", ("delete",), rf"_staging/{NIGHT2}/(plan|shard)", "new"),
}


def run_with_outage(
    store: ObjectStore, endpoint: LocalS3, fault: Fault, *, silent: bool = False
) -> tuple[int, BaseException, float, Outage]:
    """The refresh until the stage the outage fails: (its index, the error, seconds from outage to error)."""
    outage = Outage(store, endpoint, fault.kinds, fault.pattern, silent)
    try:
        for index, (_name, run) in enumerate(STAGES):
            try:
                run(store)
            except Exception as error:  # noqa: BLE001 - the test inspects it
                return index, error, time.monotonic() - outage.fired_at, outage
        raise AssertionError(f"the refresh survived an outage after {outage.fired_on!r}: nothing failed")
    finally:
        outage.remove()


def connection_failure(error: BaseException) -> bool:
    """The error (or one it was raised from) is the client failing to reach the endpoint."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (EndpointConnectionError, BotoCoreError, ConnectionError, TimeoutError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def assert_readers_see(store: ObjectStore, endpoint: LocalS3, expected: str, clean: dict[str, Any]) -> None:
    old, new = clean["night1"]["table"], clean["night2"]["table"]
    listed = store.list(store_layout.FASHION_VECTORS_PREFIX)
    assert all(k.endswith(".parquet") or k == store_layout.REPOSITORY_COMMON_METADATA_KEY for k in listed), (
        listed
    )  # nothing temporary
    for key in R.data_keys(store):
        pq.read_table(pa.BufferReader(store.get_bytes(key)))  # every visible object is a whole Parquet file
    table = R.read_repository(store)
    plain = plain_reader_table(store, endpoint)
    assert plain.num_rows == table.num_rows == pc.count_distinct(plain["item_id"]).as_py()
    assert plain.equals(without_partitions(table).cast(plain.schema))
    if expected == "old":
        assert table.equals(old)
    elif expected == "new":
        assert table.equals(new)
    else:  # mid-publish: every stored item once, each row whole (the old one or the new one)
        old_rows = {r["item_id"]: r for r in old.to_pylist()}
        new_rows = {r["item_id"]: r for r in new.to_pylist()}
        rows = table.to_pylist()
        assert set(old_rows) <= {r["item_id"] for r in rows}  # nothing lost
        assert all(r == old_rows.get(r["item_id"]) or r == new_rows[r["item_id"]] for r in rows)


def assert_equals_clean_run(store: ObjectStore, clean: dict[str, Any]) -> None:
    got, want = snapshot(store), clean["night2"]
    assert got["table"].equals(want["table"])
    assert sorted(got["files"]) == sorted(want["files"])
    assert all(got["files"][k].equals(want["files"][k]) for k in want["files"])
    assert got["common_metadata"] == want["common_metadata"]
    ignore = {"committed_at"}
    assert {k: {f: v for f, v in c.items() if f not in ignore} for k, c in got["commits"].items()} == {
        k: {f: v for f, v in c.items() if f not in ignore} for k, c in want["commits"].items()
    }
    assert store.list(store_layout.REPOSITORY_STAGING_PREFIX) == []


# -- the tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", list(FAULTS))
def test_the_endpoint_going_away_mid_refresh_loses_nothing(local_s3, where):
    """The stage fails at once with a connection error; the endpoint comes back with its data; readers
    see the last commit (or, only while files are being put in place, each item once with a whole
    row); the failed task and the ones after it run again and give exactly a clean run's repository."""
    fault = FAULTS[where]
    clean = clean_run(local_s3)
    store = local_s3.store()
    night_one(store)
    assert snapshot(store)["table"].equals(clean["night1"]["table"])

    failed, error, seconds, outage = run_with_outage(store, local_s3, fault)
    assert outage.fired_on is not None
    assert STAGES[failed][0] == fault.stage, f"{STAGES[failed][0]} failed: {error!r}"
    assert connection_failure(error), repr(error)
    assert "Could not connect to the endpoint URL" in str(error)
    assert seconds < 10  # refused connections: the client's few attempts and backoff, no hang

    local_s3.start()  # the endpoint is back, with everything it stored before the outage
    assert_readers_see(store, local_s3, fault.readers_see, clean)
    for _, run in STAGES[failed:]:  # Airflow retries the failed task, then the ones after it run
        run(store)
    assert_equals_clean_run(store, clean)

    # Rerunning the whole night afterwards finds nothing to do and changes nothing.
    before = {k: store.get_bytes(k) for k in store.list("repository")}
    plan = STAGES[0][1](store)
    assert plan["to_infer"] == 0
    for _, run in STAGES[1:]:
        run(store)
    assert {k: store.get_bytes(k) for k in store.list("repository")} == before


def test_a_silent_endpoint_fails_the_task_within_the_clients_time_bound(local_s3):
    """The server freezes mid-commit (connections are accepted, nothing answers): the commit fails
    after the store's timeouts and attempts, not never; the repository is still the last commit."""
    clean = clean_run(local_s3)
    store = local_s3.store(connect_timeout=1, read_timeout=1, max_attempts=2, retries=1)
    night_one(store)
    failed, error, seconds, _ = run_with_outage(store, local_s3, FAULTS["commit: first file uploaded"], silent=True)
    assert STAGES[failed][0] == "commit" and connection_failure(error), repr(error)
    assert "timeout" in f"{type(error).__name__} {error}".lower()
    assert 1.0 <= seconds <= store.s3_call_bound_s() + 2.0
    local_s3.start()
    assert_readers_see(store, local_s3, "old", clean)
    STAGES[2][1](store)
    assert_equals_clean_run(store, clean)


def test_the_nightly_refresh_rerun_with_the_real_networks_writes_identical_objects(local_s3):
    """The refresh DAG's own stages on S3 with (tiny, untrained) Keras networks: plan, the module-level
    ``infer_shard`` for every shard (inferred_at is the clock), commit; then the same night again.
    Every object under ``repository/`` keeps its bytes and row count, the broken image is tried again
    and skipped again, nothing is added."""
    from models.registry import publish as publish_model
    from pipeline.repository.infer import infer_shard
    from tests.models.fashion_synthetic import write_accepted, write_version

    store = local_s3.store()
    for seed, attribute in enumerate(ATTRIBUTES):
        write_version(store, attribute, "v1", seed=seed)
        publish_model(store, attribute, "v1")
    ids = write_accepted(store, NIGHT1, ["striped", "solid", "checkered", "striped", "solid"], broken=1)

    def night() -> tuple[dict, dict]:
        request = RP.RefreshPlanRequest(NIGHT1, ATTRIBUTES, batch_id=NIGHT1)
        plan = RP.plan_refresh(store, request, sized({"shard_size": 2}))
        summaries = [infer_shard(store, NIGHT1, shard) for shard in range(plan["shards"])]
        assert sum(s["skipped_undecodable"] for s in summaries) == 1
        return plan, RC.commit_refresh(store, NIGHT1)

    def objects() -> dict[str, tuple[bytes, int | None]]:
        return {
            k: (store.get_bytes(k), store.read_parquet(k).num_rows if k.endswith(".parquet") else None)
            for k in store.list("repository")
        }

    plan, record = night()
    assert plan["shards"] == 3 and record["repository_rows"] == 5 and record["skipped_item_ids"] == [ids[-1]]
    first, table = objects(), R.read_repository(store)
    assert sorted(table["item_id"].to_pylist()) == sorted(ids[:5])
    again_plan, again = night()
    assert again_plan["actions"] == {"new": 1, "image": 0, "model": 0, "catalog": 0}  # only the broken image
    assert again["files_written"] == [] and again["repository_rows"] == 5
    assert objects() == first and R.read_repository(store).equals(table)
    assert store.list(store_layout.REPOSITORY_STAGING_PREFIX) == []
