"""Issue 17: the review page under attack and concurrency. Each test is a row of the issue's table and
failed before its fix: sessions that outlive a logout, lockouts anyone can force, unbounded password
hashing, bodies read whole before any check, lost updates of the reviewers file."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from pipeline.review.web import auth, create_app
from pipeline.review.web.app import COOKIE_NAME
from pipeline.store_layout import REVIEWERS_KEY
from tests.pipeline.review.test_review_view import make_review_batch

PASSWORD = "correct horse battery"
SECRET = "s" * 40
CSRF = {"X-Requested-With": "fashionnet-review"}
SAMPLES = {"batch_id": "b1", "item_id": "i1", "name": "review.js"}


@pytest.fixture
def store(file_store):
    make_review_batch(file_store)
    auth.add_reviewer(file_store, "alice", PASSWORD)
    auth.add_reviewer(file_store, "bob", PASSWORD)
    return file_store


def new_app(store, **settings):
    """An app as a server process runs it: the default 5 s cache, the configured review settings."""
    return create_app(lambda: store, secret=SECRET, review_settings=settings or None)


def login(client, name="alice", password=PASSWORD):
    return client.post("/login", data={"username": name, "password": password}, follow_redirects=False)


def session_of(store, name="alice", address="10.0.0.1", app=None):
    client = TestClient(app or new_app(store), client=(address, 40000))
    assert login(client, name).status_code == 303
    return client, client.cookies[COOKIE_NAME]


def replay(app, cookie):
    client = TestClient(app)
    client.cookies.set(COOKIE_NAME, cookie)
    return client.get("/api/me").status_code


# -- sessions end server side ---------------------------------------------------------------------------------
def test_logout_ends_every_session_of_the_reviewer_at_once_in_every_process(store):
    first_process, second_process = new_app(store), new_app(store)
    laptop, laptop_cookie = session_of(store, app=first_process)
    _, phone_cookie = session_of(store, address="10.0.0.2", app=second_process)
    _, bob_cookie = session_of(store, "bob", app=second_process)
    assert replay(second_process, laptop_cookie) == 200 and replay(first_process, phone_cookie) == 200
    assert laptop.post("/logout", headers=CSRF).status_code == 204
    for app in (first_process, second_process, new_app(store)):  # the copied cookies, replayed anywhere
        assert replay(app, laptop_cookie) == 401 and replay(app, phone_cookie) == 401
        assert replay(app, bob_cookie) == 200  # bob's sessions are his own
    assert login(laptop).status_code == 303 and laptop.get("/api/me").status_code == 200


def test_removal_and_a_new_password_end_sessions_at_once_in_another_process(store):
    app = new_app(store)
    _, alice_cookie = session_of(store, app=app)
    _, bob_cookie = session_of(store, "bob", app=app)
    assert replay(app, alice_cookie) == replay(app, bob_cookie) == 200  # both now in the app's cache
    auth.add_reviewer(store, "alice", "a brand new password", replace=True)  # an admin's CLI, elsewhere
    auth.remove_reviewer(store, "bob")
    assert replay(app, alice_cookie) == 401 and replay(app, bob_cookie) == 401  # no 5 s grace


# -- login throttling -----------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def throttled_app(store, clock):
    app = new_app(store, free_login_failures=3, login_delay_s=1.0, login_max_delay_s=60, login_failure_memory_s=3600)
    app.state.review.throttle.clock = clock
    return app


def test_failed_logins_slow_the_attacker_with_growing_delays_but_never_lock_the_reviewer_out(store):
    clock = Clock()
    app = throttled_app(store, clock)
    attacker = TestClient(app, client=("203.0.113.66", 1))
    waits = []
    for _ in range(10):
        response = login(attacker, "alice", "guess")
        assert response.status_code == 401
        waits.append(app.state.review.throttle.wait_s("203.0.113.66", "alice"))
        if waits[-1]:
            refused = login(attacker, "alice", PASSWORD)  # even the right password, before the wait is over
            assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
            assert COOKIE_NAME not in refused.cookies
        clock.now += waits[-1] + 0.01
    assert waits == [0, 0, 1, 2, 4, 8, 16, 32, 60, 60]  # growing, capped
    # the reviewer, from her own address, logs in at once, however many times the attacker failed
    reviewer = TestClient(app, client=("10.0.0.1", 1))
    assert login(reviewer, "alice").status_code == 303
    # and her own typo costs her nothing extra; a success forgets her count
    assert app.state.review.throttle.wait_s("10.0.0.1", "alice") == 0


def test_throttle_counters_are_shared_by_every_process_and_survive_a_restart(store):
    clock = Clock()
    first = throttled_app(store, clock)
    attacker = TestClient(first, client=("203.0.113.66", 1))
    for _ in range(4):
        login(attacker, "bob", "guess")
        clock.now += 10
    clock.now -= 10
    restarted = throttled_app(store, clock)  # another worker, or the same one after a restart
    again = TestClient(restarted, client=("203.0.113.66", 1))
    assert login(again, "bob", PASSWORD).status_code == 429
    assert auth.LoginThrottle.key("203.0.113.66", "bob") in store.list("review/login-throttle")
    clock.now += 3600 + 1  # a day without failures: forgotten
    assert login(again, "bob", PASSWORD).status_code == 303
    assert store.list("review/login-throttle") == []  # a success removes the counter


def test_the_client_address_comes_from_the_proxy_header_only_when_configured(store):
    app = new_app(store, client_address_header="x-forwarded-for", free_login_failures=1)
    client = TestClient(app, client=("10.9.9.9", 1))  # the proxy
    login(client, "alice", "guess")  # no header: the peer address
    assert app.state.review.throttle.wait_s("10.9.9.9", "alice") > 0
    client.post("/login", data={"username": "alice", "password": "x"}, headers={"X-Forwarded-For": "1.2.3.4, 5.6.7.8"})
    assert app.state.review.throttle.wait_s("5.6.7.8", "alice") > 0


# -- bounded password hashing ---------------------------------------------------------------------------------
class HashProbe:
    """Wraps scrypt checks: counts how many run at once; a check of a bogus password blocks until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.running = self.peak = self.calls = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        real = auth.verify_password

        def probed(password, record):
            with self.lock:
                self.running += 1
                self.calls += 1
                self.peak = max(self.peak, self.running)
            try:
                if password != PASSWORD:
                    self.release.wait(timeout=20)
                return real(password, record)
            finally:
                with self.lock:
                    self.running -= 1

        monkeypatch.setattr(auth, "verify_password", probed)


def bogus_logins(app, addresses):
    def attempt(address):
        return login(TestClient(app, client=(address, 1)), "mallory", "bogus password").status_code

    pool = ThreadPoolExecutor(max_workers=len(addresses))
    return pool, [pool.submit(attempt, address) for address in addresses]


def test_80_concurrent_bogus_logins_from_one_client_leave_a_real_login_fast(store, monkeypatch):
    probe = HashProbe(monkeypatch)
    app = new_app(store)
    pool, futures = bogus_logins(app, ["203.0.113.66"] * 80)
    waited = threading.Event()
    while probe.calls < 1 and not waited.wait(0.01):
        pass
    real = TestClient(app, client=("10.0.0.1", 1))
    assert login(real, "alice").status_code == 303  # while the attacker's check still holds its slot
    probe.release.set()
    statuses = sorted(f.result(timeout=20) for f in futures)
    pool.shutdown()
    assert probe.peak <= 2  # the attacker's one slot and the real login
    assert statuses.count(401) >= 1 and set(statuses) <= {401, 429} and statuses.count(429) >= 70


def test_concurrent_password_checks_are_bounded_and_excess_logins_answered_fast(store, monkeypatch):
    probe = HashProbe(monkeypatch)
    app = new_app(store, max_concurrent_password_checks=4, password_check_wait_s=0.2)
    pool, futures = bogus_logins(app, [f"198.51.100.{n}" for n in range(80)])  # a distributed attack
    done = set()
    waited = threading.Event()
    for _ in range(500):  # the refused ones come back while 4 checks still block
        done = {f for f in futures if f.done()}
        if len(done) >= 76 or waited.wait(0.02):
            break
    busy = [f.result() for f in done].count(503)
    probe.release.set()
    pool.shutdown()
    assert probe.peak <= 4 and probe.running == 0
    assert busy >= 70  # answered (503, Retry-After) without a hash, while the slots were held


# -- request size limits --------------------------------------------------------------------------------------
def raw_call(app, method, path, headers, chunks, cookie=None):
    """Send ``chunks`` as a streamed body; returns (status, bytes the app pulled)."""
    pulled = 0
    chunks = list(chunks)
    header_list = [(b"host", b"testserver")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if cookie:
        header_list.append((b"cookie", f"{COOKIE_NAME}={cookie}".encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": header_list,
        "client": ("127.0.0.1", 5),
        "server": ("testserver", 80),
    }
    sent = []

    async def receive():
        nonlocal pulled
        if not chunks:
            return {"type": "http.disconnect"}
        chunk = chunks.pop(0)
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return next(m for m in sent if m["type"] == "http.response.start")["status"], pulled


def routes(app):
    for route in app.routes:
        for method in getattr(route, "methods", None) or []:
            if method != "HEAD":
                yield method, route.path.format(**SAMPLES)


def test_oversized_bodies_are_refused_unread_on_every_route(store):
    app = new_app(store)
    _, cookie = session_of(store, app=app)
    found = list(routes(app))
    assert ("POST", "/login") in found and ("POST", "/api/batches/b1/decisions") in found
    for method, path in found:
        for session in (None, cookie):
            declared = {"content-length": str(600 * 2**20), "content-type": "application/json", **CSRF}
            status, pulled = raw_call(app, method, path, declared, [b"{}"], session)
            assert (status, pulled) == (413, 0), (method, path, session is not None)


def test_a_streamed_body_is_counted_and_stopped_at_the_limit(store):
    app = new_app(store, max_body_bytes=100_000, max_login_body_bytes=4096)
    _, cookie = session_of(store, app=app)
    chunk = b"x" * 1024
    status, pulled = raw_call(
        app,
        "POST",
        "/login",
        {"content-type": "multipart/form-data; boundary=b"},
        [b'--b\r\nContent-Disposition: form-data; name="password"\r\n\r\n'] + [chunk] * 600_000,
    )  # a 600 MB multipart body, no Content-Length
    assert status == 413 and pulled <= 4096 + 2 * len(chunk)
    status, pulled = raw_call(
        app,
        "POST",
        "/api/batches/b1/decisions",
        {"content-type": "application/json", **CSRF},
        [chunk] * 100_000,
        cookie,
    )  # 100 MB of JSON from a logged-in reviewer
    assert status == 413 and pulled <= 100_000 + len(chunk)
    small = b'{"decisions": [{"item_id": "i1", "decision": "accept"}]}'
    status, _ = raw_call(
        app,
        "POST",
        "/api/batches/b1/decisions",
        {"content-type": "application/json", "content-length": str(len(small)), **CSRF},
        [small],
        cookie,
    )
    assert status == 200  # a real decision still passes


# -- the reviewers file under concurrent admins ---------------------------------------------------------------
def test_concurrent_changes_of_the_reviewer_list_lose_nothing(any_store):
    auth.add_reviewer(any_store, "alice", PASSWORD)
    auth.add_reviewer(any_store, "gone", PASSWORD)

    def change(n):
        if n == 0:
            auth.remove_reviewer(any_store, "gone")
        else:
            auth.add_reviewer(any_store, f"reviewer{n:02d}", PASSWORD)

    with ThreadPoolExecutor(max_workers=21) as pool:
        list(pool.map(change, range(21)))
    reviewers = auth.read_reviewers(any_store)
    assert sorted(reviewers) == sorted(["alice", *(f"reviewer{n:02d}" for n in range(1, 21))])
    assert "gone" not in reviewers  # a removed reviewer never comes back
    assert auth.authenticate(reviewers, "reviewer07", PASSWORD)


def test_the_reviewers_file_is_readable_only_by_its_owner(file_store):
    auth.add_reviewer(file_store, "alice", PASSWORD)
    mode = stat.S_IMODE(os.stat(file_store.local_path(REVIEWERS_KEY)).st_mode)
    assert mode == 0o600, oct(mode)


def test_logout_ends_sessions_in_another_process_on_s3_too(s3_store):
    """On S3 the per-request check is one HEAD of reviewers.json (its ETag), not a stat."""
    auth.add_reviewer(s3_store, "alice", PASSWORD)
    first_process, second_process = new_app(s3_store), new_app(s3_store)
    laptop, cookie = session_of(s3_store, app=first_process)
    assert replay(second_process, cookie) == 200
    assert laptop.post("/logout", headers=CSRF).status_code == 204
    assert replay(second_process, cookie) == 401 and replay(first_process, cookie) == 401
    assert auth.read_reviewers(s3_store)["alice"]["session_generation"] == 2  # added (1), logged out (2)
