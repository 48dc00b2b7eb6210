import io
import json
import os
import subprocess
import sys
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from itsdangerous import URLSafeTimedSerializer

from pipeline.review.queue import read_decisions, read_queue, replay
from pipeline.review.web import auth, create_app
from pipeline.review.web.__main__ import main as cli
from pipeline.settings import get_settings
from pipeline.store_layout import REVIEWERS_KEY
from tests.conftest import REPO_ROOT
from tests.pipeline.review.test_review_view import make_review_batch

PASSWORD = "correct horse battery"
SECRET = "s" * 40
CSRF = {"X-Requested-With": "fashionnet-review"}
PATH_VALUES = {"batch_id": "b1", "item_id": "i1", "name": "review.js"}


@pytest.fixture
def store(file_store):
    make_review_batch(file_store)
    auth.add_reviewer(file_store, "alice", PASSWORD)
    auth.add_reviewer(file_store, "bob", PASSWORD)
    return file_store


@pytest.fixture
def app(store):
    return create_app(lambda: store, secret=SECRET, cache_ttl_s=0)


@pytest.fixture
def client(app):
    with TestClient(app) as test_client:
        yield test_client


def login(client, name="alice", password=PASSWORD, prefix=""):
    return client.post(f"{prefix}/login", data={"username": name, "password": password}, follow_redirects=False)


def decide(client, *decisions, batch="b1", headers=CSRF):
    return client.post(f"/api/batches/{batch}/decisions", json={"decisions": list(decisions)}, headers=headers)


def state(store, batch="b1"):
    return replay(read_queue(store, batch), read_decisions(store, batch), get_settings().taxonomy)


def app_routes(app):
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or []):
            if method != "HEAD":
                yield method, route.path


def test_every_route_but_login_refuses_without_a_session(app, client, store):
    routes = list(app_routes(app))
    assert ("GET", "/login") in routes and ("POST", "/api/batches/{batch_id}/decisions") in routes
    assert not [path for _, path in routes if path in ("/docs", "/redoc", "/openapi.json")]
    forged = URLSafeTimedSerializer("another secret", salt=auth.SESSION_SALT).dumps({"u": "alice", "f": "x"})
    for cookie in (None, forged, "garbage"):
        client.cookies.clear()
        if cookie:
            client.cookies.set("fashionnet_review_session", cookie)
        for method, path in routes:
            if path == "/login":
                continue
            url = path.format(**PATH_VALUES)
            response = client.request(method, url, headers=CSRF, json={}, follow_redirects=False)
            if path == "/":
                assert (response.status_code, response.headers["location"]) == (303, "login"), (method, path)
            else:
                assert response.status_code == 401, (method, path, cookie)
                assert response.json()["detail"].startswith("not authenticated")
                assert response.headers["X-Frame-Options"] == "DENY"
    assert client.get("/login").status_code == 200
    assert store.list("review/decisions") == []


def test_login_with_a_wrong_password_or_an_unknown_reviewer_fails(client):
    for name, password in (("alice", "wrong password"), ("mallory", PASSWORD), ("", "")):
        response = login(client, name, password)
        assert response.status_code == 401 and "wrong password" in response.text
        assert "set-cookie" not in response.headers
    assert client.get("/api/me").status_code == 401


def test_login_sets_a_strict_http_only_session(client):
    response = login(client)
    assert (response.status_code, response.headers["location"]) == (303, "./")
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/;" in cookie
    assert client.get("/api/me").json() == {"reviewer": "alice"}
    page = client.get("/")
    assert page.status_code == 200 and 'src="static/review.js"' in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert client.get("/static/review.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/index.html").status_code == 404
    assert client.get("/login", follow_redirects=False).headers["location"] == "./"


def test_passwords_are_stored_as_salted_hashes(store):
    text = store.get_bytes(REVIEWERS_KEY).decode()
    assert PASSWORD not in text
    reviewers = auth.read_reviewers(store)
    assert reviewers["alice"]["salt"] != reviewers["bob"]["salt"]
    assert reviewers["alice"]["hash"] != reviewers["bob"]["hash"]
    assert auth.authenticate(reviewers, "alice", PASSWORD) and not auth.authenticate(reviewers, "alice", "nope")
    with pytest.raises(ValueError, match="at least 8"):
        auth.add_reviewer(store, "carol", "short")
    with pytest.raises(ValueError, match="invalid reviewer name"):
        auth.add_reviewer(store, "../carol", PASSWORD)
    with pytest.raises(ValueError, match="exists"):
        auth.add_reviewer(store, "alice", PASSWORD)


def test_expired_sessions_and_changed_passwords_end_sessions(client, store, monkeypatch):
    record = auth.read_reviewers(store)["alice"]
    now = time.time()
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: now - 13 * 3600)
        old = auth.SessionSigner(SECRET, 12 * 3600).issue("alice", record)
    client.cookies.set("fashionnet_review_session", old)
    assert client.get("/api/me").status_code == 401
    client.cookies.set("fashionnet_review_session", auth.SessionSigner(SECRET, 12 * 3600).issue("alice", record))
    assert client.get("/api/me").status_code == 200
    client.cookies.clear()
    login(client)
    assert client.get("/api/me").status_code == 200
    auth.add_reviewer(store, "alice", "a new password", replace=True)
    assert client.get("/api/me").status_code == 401


def test_decisions_are_recorded_under_the_authenticated_reviewer(client, store):
    login(client, "bob")
    response = decide(
        client,
        {"item_id": "i1", "decision": "accept"},
        {"item_id": "i3", "decision": "relabel", "attribute": "pattern", "new_label": "checkered", "reason": "a check"},
        {"item_id": "i4", "decision": "reject"},
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["recorded"] == 3 and data["counts"] == {"items": 5, "pending": 2, "accept": 2, "reject": 1}
    assert {item["item_id"]: item["status"] for item in data["items"]} == {
        "i1": "accept",
        "i3": "accept",
        "i4": "reject",
    }
    log = read_decisions(store, "b1")
    assert set(log["reviewer"]) == {"bob"} and log["decision"].tolist() == ["accept", "relabel", "reject"]
    assert log.iloc[1]["reason"] == "a check" and log.iloc[1]["old_label"] == "floral"
    assert state(store).labels["i3"]["pattern"] == ("checkered", "review:bob")


@pytest.mark.parametrize(
    "body, headers, status",
    [
        ({"decisions": [{"item_id": "i1", "decision": "accept", "reviewer": "mallory"}]}, CSRF, 422),
        ({"decisions": [{"item_id": "i1", "decision": "accept"}], "reviewer": "mallory"}, CSRF, 422),
        ({"decisions": [{"item_id": "i1", "decision": "accept"}]}, {}, 403),
        ({"decisions": [{"item_id": "i1", "decision": "accept"}]}, {**CSRF, "Origin": "https://evil.test"}, 403),
        ({"decisions": [{"item_id": "i1", "decision": "accept"}]}, {**CSRF, "Sec-Fetch-Site": "cross-site"}, 403),
        (
            {"decisions": [{"item_id": "i1", "decision": "relabel", "attribute": "pattern", "new_label": "polka"}]},
            CSRF,
            400,
        ),
        ({"decisions": [{"item_id": "i1", "decision": "undo"}]}, CSRF, 400),
        ({"decisions": [{"item_id": "zz", "decision": "accept"}]}, CSRF, 400),
        ({"decisions": [{"item_id": "i1", "decision": "approve"}]}, CSRF, 422),
        ({"decisions": []}, CSRF, 422),
    ],
)
def test_refused_decisions_write_nothing(client, store, body, headers, status):
    login(client)
    response = client.post("/api/batches/b1/decisions", json=body, headers=headers)
    assert response.status_code == status, response.text
    assert store.list("review/decisions") == []


def test_same_origin_requests_pass_the_csrf_check(client, store):
    login(client)
    headers = {**CSRF, "Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert decide(client, {"item_id": "i1", "decision": "skip"}, headers=headers).status_code == 200
    cross = client.post(
        "/login",
        data={"username": "alice", "password": PASSWORD},
        headers={"Origin": "https://evil.test"},
        follow_redirects=False,
    )
    assert cross.status_code == 403


def test_images_are_served_only_for_the_batch_items_and_clusters(client, store):
    login(client)
    response = client.get("/api/batches/b1/images/i1")
    assert response.status_code == 200 and response.content == store.get_bytes("images/full/i1.jpg")
    assert response.headers["content-type"] == "image/jpeg" and response.headers["x-content-type-options"] == "nosniff"
    assert client.get("/api/batches/b1/images/i2").headers["content-type"] == "image/png"
    assert client.get("/api/batches/b1/images/d2").status_code == 200  # a dropped duplicate of i1
    refused = [
        "/api/batches/b1/images/d9",  # duplicates an earlier batch's item: not this batch's cluster
        "/api/batches/b1/images/nope",
        "/api/batches/b1/images/images%2Ffull%2Fi1.jpg",
        "/api/batches/b1/images/..%2F..%2Freview%2Freviewers.json",
        "/api/batches/b1/images/%2E%2E",
        "/api/batches/..%2Freview/images/i1",
        "/api/batches/%2E%2E/images/i1",
        "/api/batches/b2/images/i1",
        "/api/batches/b1/images/i1%00",
    ]
    for url in refused:
        response = client.get(url)
        assert response.status_code == 404, url
        assert b"scrypt" not in response.content
    store.put_bytes("images/full/i1.jpg", b"")  # the queue names it; the bytes are gone: still no crash
    store.fs.rm_file(store.path("images/full/i1.jpg"))
    assert client.get("/api/batches/b1/images/i1").status_code == 404


def test_batches_items_sorting_and_the_audit_log(client, store):
    login(client)
    assert client.get("/api/batches").json()["batches"] == [
        {"batch_id": "b1", "items": 5, "pending": 5, "accept": 0, "reject": 0}
    ]
    data = client.get("/api/batches/b1/items", params={"sort": "confidence"}).json()
    assert [item["item_id"] for item in data["items"]] == ["i4", "i2", "i1", "i3", "i5"]
    assert data["attributes"]["pattern"][0] == "checkered" and data["has_predictions"]
    assert data["items"][2]["members"][0] == {
        "item_id": "d1",
        "image_key": "images/full/d1.jpg",
        "kind": "exact",
        "distance": 0,
    }
    assert client.get("/api/batches/b1/items", params={"sort": "random"}).status_code == 422
    assert client.get("/api/batches/nope/items").status_code == 404
    decide(client, {"item_id": "i2", "decision": "reject"})
    decide(client, {"item_id": "i2", "decision": "undo"})
    pending_first = client.get("/api/batches/b1/items", params={"sort": "disagreement", "pending_first": "true"})
    assert [item["item_id"] for item in pending_first.json()["items"]] == ["i3", "i4", "i1", "i2", "i5"]
    log = client.get("/api/batches/b1/log").json()
    assert log["total"] == 2 and [d["decision"] for d in log["decisions"]] == ["undo", "reject"]
    assert log["decisions"][0]["reviewer"] == "alice" and log["decisions"][0]["decided_at"].startswith("20")


def test_accept_page_accepts_only_pending_items_and_undo_reverts_it(client, store):
    login(client)
    decide(client, {"item_id": "i2", "decision": "reject"}, {"item_id": "i5", "decision": "skip"})
    response = client.post(
        "/api/batches/b1/accept-page", json={"item_ids": ["i1", "i2", "i3", "i4", "i5"]}, headers=CSRF
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == ["i1", "i3", "i4", "i5"]  # skipped counts as pending; i2 stays rejected
    assert state(store).status == {"i1": "accept", "i2": "reject", "i3": "accept", "i4": "accept", "i5": "accept"}
    log = read_decisions(store, "b1")
    assert set(log[log["reason"] == "accept page"]["item_id"]) == {"i1", "i3", "i4", "i5"}
    again = client.post("/api/batches/b1/accept-page", json={"item_ids": ["i1", "i2"]}, headers=CSRF).json()
    assert again["recorded"] == 0 and again["log_key"] is None

    undo = decide(client, *({"item_id": i, "decision": "undo"} for i in ("i1", "i3", "i4", "i5")))
    assert undo.status_code == 200
    assert state(store).status == {"i2": "reject"} and state(store).last["i5"] == "skip"
    assert client.post("/api/batches/b1/accept-page", json={"item_ids": ["i1", "zz"]}, headers=CSRF).status_code == 400
    assert client.post("/api/batches/b1/accept-page", json={"item_ids": ["i1"]}).status_code == 403


def test_logout_deletes_the_cookie(client, store):
    login(client)
    response = client.post("/logout", headers=CSRF)
    assert response.status_code == 204 and 'fashionnet_review_session=""' in response.headers["set-cookie"]
    assert client.get("/api/me").status_code == 401
    assert login(client, "alice").status_code == 303  # and logging in again works


def test_the_app_works_under_a_url_prefix(store):
    parent = FastAPI()
    parent.mount("/fashionnet-review", create_app(lambda: store, secret=SECRET))
    with TestClient(parent) as client:
        first = client.get("/fashionnet-review/", follow_redirects=False)
        assert (first.status_code, first.headers["location"]) == (303, "login")
        assert client.get("/fashionnet-review/login").status_code == 200
        response = login(client, prefix="/fashionnet-review")
        assert response.headers["location"] == "./" and "Path=/fashionnet-review/" in response.headers["set-cookie"]
        page = client.get("/fashionnet-review/")
        assert page.status_code == 200 and page.url.path == "/fashionnet-review/"
        assert client.get("/fashionnet-review/static/review.css").status_code == 200
        assert client.get("/fashionnet-review/api/me").json() == {"reviewer": "alice"}
        assert client.get("/fashionnet-review/api/batches/b1/images/d1").status_code == 200
        bare = client.get("/fashionnet-review", follow_redirects=False)
        assert bare.headers["location"].endswith("/fashionnet-review/")


def test_cli_manages_reviewers(file_store, monkeypatch, capsys):
    uri = file_store.uri
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli(["--store", uri, "add-reviewer", "carol", "--password-stdin"]) == 0
    assert auth.authenticate(auth.read_reviewers(file_store), "carol", PASSWORD)
    monkeypatch.setattr("sys.stdin", io.StringIO("another password\n"))
    assert cli(["add-reviewer", "carol", "--password-stdin", "--store", uri]) == 2
    assert "exists" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("another password\n"))
    assert cli(["--store", uri, "add-reviewer", "carol", "--password-stdin", "--replace"]) == 0
    assert auth.authenticate(auth.read_reviewers(file_store), "carol", "another password")
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "typed password")
    assert cli(["--store", uri, "add-reviewer", "dave"]) == 0
    capsys.readouterr()
    assert cli(["--store", uri, "list-reviewers"]) == 0
    assert capsys.readouterr().out.split() == ["carol", "dave"]
    assert cli(["--store", uri, "remove-reviewer", "dave"]) == 0
    assert cli(["--store", uri, "remove-reviewer", "dave"]) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli(["--store", uri, "add-reviewer", "erin", "--password-stdin"]) == 2
    assert PASSWORD not in file_store.get_bytes(REVIEWERS_KEY).decode()


def test_airflow_loads_the_plugin_and_mounts_the_app(tmp_path):
    """In a fresh interpreter: Airflow's plugins manager finds the plugin, and its api-server wiring
    (init_plugins) mounts the app, login page public, everything else refused. No pandas at import."""
    script = """
import json, sys
from airflow import plugins_manager
apps, _ = plugins_manager.get_fastapi_plugins()
pandas_at_import = "pandas" in sys.modules
from fastapi import FastAPI
from fastapi.testclient import TestClient
from airflow.api_fastapi.app import init_plugins
app = FastAPI()
init_plugins(app)
client = TestClient(app)
page = client.get("/fashionnet-review/", follow_redirects=False)
print(json.dumps({"prefixes": [a["url_prefix"] for a in apps], "pandas_at_import": pandas_at_import,
                  "page": [page.status_code, page.headers.get("location")],
                  "login": client.get("/fashionnet-review/login").status_code,
                  "api": client.get("/fashionnet-review/api/batches").status_code}))
"""
    env = {
        **os.environ,
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "PYTHONPATH": str(REPO_ROOT),
        "FASHIONNET_STORE": f"file://{tmp_path / 'store'}",
        "FASHIONNET_REVIEW_SECRET": SECRET,
    }
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "prefixes": ["/fashionnet-review"],
        "pandas_at_import": False,
        "page": [303, "login"],
        "login": 200,
        "api": 401,
    }


def test_a_link_to_a_batch_opens_that_batch_after_the_login(client):
    """Issue 12: the approval request's link (.../fashionnet-review/?batch=<id>) lost the batch at the login."""
    batch = "ingest-20261128-093005-demo-store"
    to_login = client.get(f"/?batch={batch}", follow_redirects=False)
    assert to_login.status_code == 303 and to_login.headers["location"] == f"login?batch={batch}"
    form = client.get(f"/login?batch={batch}")
    assert '<form method="post" action="">' in form.text  # posts back to login?batch=...
    back = client.post(
        f"/login?batch={batch}", data={"username": "alice", "password": PASSWORD}, follow_redirects=False
    )
    assert back.status_code == 303 and back.headers["location"] == f"./?batch={batch}"
    again = client.get(f"/login?batch={batch}", follow_redirects=False)  # already logged in
    assert again.headers["location"] == f"./?batch={batch}"
    # Anything but a batch id is dropped, never echoed into a redirect.
    for bad in ("https://evil.example/", "../x", "a b", "x" * 300):
        assert client.get("/login", params={"batch": bad}, follow_redirects=False).headers["location"] == "./"
