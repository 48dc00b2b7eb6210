"""Security checks across the project: every HTTP endpoint it serves refuses unauthenticated requests,
changes need the CSRF header, and no credential is committed.

HTTP servers of the project (found by :func:`test_every_http_server_in_the_project_is_known`):

* the review page (``pipeline/review/web``), standalone (``python -m pipeline.review.web serve``) and inside
  Airflow's api-server (``plugins/fashionnet_review.py``, which Airflow serves without its own login): every
  route, enumerated from the app's router, is tried with every method;
* the demo store (``fashionnet_tools/demo_store``): a fake retailer's public web shop, the crawlers' target. It is
  public by design (a shop is), read-only (GET only) and serves nothing but its generated pages;
* in the Docker deployment, the published services (Airflow's UI and API, MinIO, optional Flower).

The test doubles under ``tests/`` and the benchmark servers under ``bench/`` serve only their test.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import yaml
from itsdangerous import URLSafeTimedSerializer

from pipeline.review.web import auth, create_app
from pipeline.review.web.app import COOKIE_NAME, CSRF_VALUE, STATIC_DIR
from pipeline.settings import get_settings
from pipeline.storage import ObjectStore
from pipeline.store_layout import LOGIN_THROTTLE_PREFIX
from tests.conftest import REPO_ROOT
from tests.pipeline.review.test_review_view import make_review_batch

SECRET = "security-test-secret-" + "x" * 32
PASSWORD = "a long test password"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
UNSAFE = ["POST", "PUT", "PATCH", "DELETE"]
# A sample for every path parameter of the review app's routes; a route with a parameter missing here fails
# the enumeration below, so a new route cannot go untested.
SAMPLES = {"batch_id": "b1", "item_id": "i1", "name": "review.js"}
NOT_AUTHENTICATED = b'{"detail":"not authenticated: log in first"}'
CSRF_REFUSED = b'{"detail":"refused: a change needs the x-requested-with header from this site"}'
# Paths a client might use to slip past an exact-match gate; none is the login page, so all are refused.
TRICK_PATHS = [
    "//api/me",
    "/api/me/",
    "/api//me",
    "/login/../api/me",
    "/login/..%2Fapi%2Fme",
    "/LOGIN",
    "/login/",
    "/login;/api/me",
    "/login%00",
    "/static/../api/batches",
    "/./api/batches",
    "/%2e%2e/api/batches",
    "/api/batches%2Fb1%2Fitems",
    "/nonexistent",
    "/docs",
    "/redoc",
    "/openapi.json",
]


# -- a raw ASGI client: exactly the path and headers given, no normalisation, no cookie jar ------------------
def call(
    app, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"", query: str = ""
) -> tuple[int, dict[str, str], bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"testserver")] + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    inbox = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    response_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return (
        start["status"],
        response_headers,
        b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
    )


def http_routes(app, prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, declared methods) of every route of ``app``, mounted apps included."""
    from starlette.routing import Mount, Route, WebSocketRoute

    for route in app.routes:
        if isinstance(route, Mount):
            inner = getattr(route.app, "routes", None)
            if inner is None:  # a mounted ASGI app without a router (static files, ...): one path stands for it
                yield prefix + route.path + "/anything", set(METHODS)
            else:
                yield from http_routes(route.app, prefix + route.path)
        elif isinstance(route, Route):  # FastAPI's APIRoute is a Route
            yield prefix + route.path, set(route.methods or ())
        elif isinstance(route, WebSocketRoute):
            raise AssertionError(f"a websocket route {route.path}: add its authentication test here")
        else:
            raise AssertionError(f"a route of an unknown kind {route!r}: add its authentication test here")


def concrete(path: str) -> str:
    names = re.findall(r"\{(\w+)(?::\w+)?\}", path)
    missing = [name for name in names if name not in SAMPLES]
    assert not missing, f"route {path}: give its parameters {missing} a sample value in SAMPLES"
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: SAMPLES[m.group(1)], path)


def snapshot(store: ObjectStore) -> dict[str, bytes]:
    """Every object but the login throttle's counters (failed logins are meant to leave those)."""
    return {key: store.get_bytes(key) for key in store.list() if not key.startswith(LOGIN_THROTTLE_PREFIX + "/")}


@pytest.fixture
def store(file_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    make_review_batch(file_store)
    auth.add_reviewer(file_store, "alice", PASSWORD)
    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)  # for the plugin's app, which opens the configured store
    get_settings.cache_clear()
    return file_store


@pytest.fixture
def app(store):
    return create_app(lambda: store, secret=SECRET, cache_ttl_s=0)


def session_cookies(store: ObjectStore) -> dict[str, str | None]:
    """Cookies that must not pass: none, garbage, alice's signed with another secret (right fingerprint), one
    for a reviewer who does not exist, and alice's valid one issued before her password changed."""
    record = auth.read_reviewers(store)["alice"]
    other = URLSafeTimedSerializer("another secret", salt=auth.SESSION_SALT)
    ours = auth.SessionSigner(SECRET, 3600)
    forged = other.dumps({"u": "alice", "f": auth._fingerprint(record)})
    stale = ours.issue("alice", {**record, "salt": "00" * 16})  # an older password record
    return {
        "none": None,
        "garbage": "garbage",
        "forged": forged,
        "unknown reviewer": ours.issue("mallory", record),
        "old password": stale,
    }


def login_bodies() -> set[bytes]:
    """What the public login route may answer: its static form, with or without an error (never any data)."""
    from pipeline.review.web.app import login_page

    pages = {
        login_page(error).body
        for error in (
            "",
            "Unknown reviewer or wrong password.",
            "This login form only accepts posts from its own page.",
            "Too many failed attempts; wait a few minutes.",
            "The server is busy checking passwords; try again in a moment.",
        )
    }
    return pages | {b'{"detail":"Method Not Allowed"}', b""}


def assert_refused(app, prefix: str, routes: list[tuple[str, set[str]]], cookies: dict[str, str | None]) -> int:
    """Every route, every method, every bad cookie: refused without data. Returns the requests made."""
    made = 0
    page = {prefix + "/", prefix}
    paths = sorted({concrete(path) for path, _ in routes} | {prefix + p for p in TRICK_PATHS} | {prefix})
    for label, cookie in cookies.items():
        headers = {"X-Requested-With": CSRF_VALUE, "Content-Type": "application/json"}
        if cookie:
            headers["Cookie"] = f"{COOKIE_NAME}={cookie}"
        for path in paths:
            for method in METHODS:
                status, response_headers, body = call(app, method, path, headers, b"{}")
                made += 1
                where = (label, method, path, status, body[:200])
                if path == prefix + "/login":
                    if method == "GET":
                        assert status == 200 and body in login_bodies(), where
                    else:
                        assert status in (401, 403, 405, 429, 503) and body in login_bodies(), where
                elif path == prefix and prefix and status == 307:
                    # the api-server's own slash redirect to the mounted app (which then decides), no body
                    assert response_headers["location"].endswith(prefix + "/") and body == b"", where
                elif path in page and method in ("GET", "HEAD", "OPTIONS"):
                    assert status == 303 and response_headers["location"] == "login" and body == b"", where
                else:
                    assert (status, body) == (401, NOT_AUTHENTICATED), where
                    assert response_headers["x-frame-options"] == "DENY", where
    return made


# -- which HTTP servers the project has ----------------------------------------------------------------------
SERVER_PATTERN = re.compile(
    r"FastAPI\(|APIRouter\(|Starlette\(|Flask\(|HTTPServer|uvicorn\.run|web\.Application\("
    r"|fastapi_apps|flask_blueprints|appbuilder_views|socketserver\.|aiohttp\.web|serve_forever"
)
KNOWN_SERVERS = {
    "pipeline/review/web/app.py": "the review page (FastAPI), tested below",
    "pipeline/review/web/api.py": "the review page's JSON API (a router of the same app), tested below",
    "pipeline/review/web/__main__.py": "serves the review page standalone (uvicorn), tested below",
    "plugins/fashionnet_review.py": "mounts the review page in Airflow's api-server, tested below",
    "fashionnet_tools/demo_store/server.py": "the demo store: a fake retailer's public shop, public by design",
    "fashionnet_tools/demo_store/__main__.py": "serves the demo store (its CLI), public by design",
}


def test_every_http_server_in_the_project_is_known():
    files = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    found = {
        f
        for f in files
        if not f.startswith(("tests/", "bench/"))
        and SERVER_PATTERN.search((REPO_ROOT / f).read_text(encoding="utf-8", errors="replace"))
    }
    assert found == set(KNOWN_SERVERS), (
        "a new HTTP server: test that it refuses unauthenticated requests, then "
        f"list it in KNOWN_SERVERS; unlisted {sorted(found - set(KNOWN_SERVERS))}"
    )


# -- the review page ----------------------------------------------------------------------------------------
def test_the_review_app_refuses_every_route_and_method_without_a_valid_session(app, store):
    routes = list(http_routes(app))
    declared = {(method, path) for path, methods in routes for method in methods}
    assert {
        ("GET", "/login"),
        ("POST", "/login"),
        ("GET", "/"),
        ("GET", "/api/me"),
        ("GET", "/api/batches"),
        ("POST", "/api/batches/{batch_id}/decisions"),
        ("POST", "/api/batches/{batch_id}/accept-page"),
        ("POST", "/logout"),
    } <= declared  # the enumeration sees the routes
    before = snapshot(store)
    made = assert_refused(app, "", routes, session_cookies(store))
    assert made > 500
    assert snapshot(store) == before


def test_the_enumeration_catches_a_route_left_open(store, monkeypatch):
    """The check above fails for a route someone opens (here: /api/batches made public) and for a new route whose
    parameters it cannot fill, so a future route cannot slip through it."""
    import pipeline.review.web.app as review_app

    monkeypatch.setattr(review_app, "PUBLIC_PATHS", {"/login", "/api/batches"})
    leaky = create_app(lambda: store, secret=SECRET, cache_ttl_s=0)
    with pytest.raises(AssertionError, match="/api/batches"):
        assert_refused(leaky, "", list(http_routes(leaky)), {"none": None})

    @leaky.get("/api/new/{thing}")
    def new_route(thing: str) -> dict:
        return {"thing": thing}

    with pytest.raises(AssertionError, match=r"give its parameters \['thing'\] a sample value"):
        [concrete(path) for path, _ in http_routes(leaky)]


def test_the_login_page_shows_no_data(app, store):
    status, _, body = call(app, "GET", "/login")
    assert status == 200 and body == (STATIC_DIR / "login.html").read_bytes().replace(b"<!--error-->", b"")
    for secret in (b"alice", b"i1", b"b1", PASSWORD.encode(), b"scrypt"):
        assert secret not in body


def test_changes_need_the_csrf_header_from_this_site_even_with_a_valid_session(app, store):
    record = auth.read_reviewers(store)["alice"]
    cookie = f"{COOKIE_NAME}={auth.SessionSigner(SECRET, 3600).issue('alice', record)}"
    body = json.dumps({"decisions": [{"item_id": "i1", "decision": "accept"}], "item_ids": ["i1"]}).encode()
    bad_headers = {
        "no header": {},
        "wrong value": {"X-Requested-With": "XMLHttpRequest"},
        "empty value": {"X-Requested-With": ""},
        "cross-site fetch": {"X-Requested-With": CSRF_VALUE, "Sec-Fetch-Site": "cross-site"},
        "same-site (another origin)": {"X-Requested-With": CSRF_VALUE, "Sec-Fetch-Site": "same-site"},
        "foreign origin": {"X-Requested-With": CSRF_VALUE, "Origin": "https://evil.test"},
        "opaque origin": {"X-Requested-With": CSRF_VALUE, "Origin": "null"},
        "look-alike origin": {"X-Requested-With": CSRF_VALUE, "Origin": "http://testserver.evil.test"},
    }
    before = snapshot(store)
    routes = [concrete(path) for path, _ in http_routes(app) if path != "/login"]
    for label, extra in bad_headers.items():
        for path in routes:
            for method in UNSAFE:
                headers = {"Cookie": cookie, "Content-Type": "application/json", **extra}
                status, _, response = call(app, method, path, headers, body)
                assert (status, response) == (403, CSRF_REFUSED), (label, method, path, status, response[:200])
    assert snapshot(store) == before  # nothing recorded, nobody logged out

    # Reading needs no header, and never changes anything.
    for path in routes:
        for method in ("GET", "HEAD", "OPTIONS"):
            call(app, method, path, {"Cookie": cookie})
    assert snapshot(store) == before

    # The control: the same session with the header from this site is accepted (so the 403s are the check's).
    status, _, response = call(
        app,
        "POST",
        "/api/batches/b1/decisions",
        {
            "Cookie": cookie,
            "Content-Type": "application/json",
            "X-Requested-With": CSRF_VALUE,
            "Origin": "http://testserver",
            "Sec-Fetch-Site": "same-origin",
        },
        json.dumps({"decisions": [{"item_id": "i1", "decision": "accept"}]}).encode(),
    )
    assert status == 200, response
    assert snapshot(store) != before


def test_a_cross_site_login_post_is_refused(app, store):
    form = f"username=alice&password={PASSWORD.replace(' ', '+')}".encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, response_headers, _ = call(app, "POST", "/login", {**headers, "Origin": "https://evil.test"}, form)
    assert status == 403 and "set-cookie" not in response_headers
    status, response_headers, _ = call(app, "POST", "/login", headers, form)  # the control
    assert status == 303 and response_headers["set-cookie"].startswith(COOKIE_NAME)


def load_plugin(monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    monkeypatch.setenv("FASHIONNET_REVIEW_SECRET", SECRET)  # read when the plugin module builds its app
    spec = importlib.util.spec_from_file_location(
        "fashionnet_review_plugin_under_test", REPO_ROOT / "plugins" / "fashionnet_review.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FashionNetReviewPlugin


def test_the_review_app_inside_airflow_refuses_every_route_without_a_session(store, monkeypatch):
    """The plugin mounted by Airflow's own api-server wiring (init_plugins), which adds no authentication."""
    import airflow.plugins_manager
    from airflow.api_fastapi.app import init_plugins
    from fastapi import FastAPI

    plugin = load_plugin(monkeypatch)
    # No other way into the api-server: no root middleware, no Flask views, no React apps.
    for surface in (
        "fastapi_root_middlewares",
        "flask_blueprints",
        "appbuilder_views",
        "appbuilder_menu_items",
        "react_apps",
    ):
        assert not getattr(plugin, surface, None), surface
    [mounted] = plugin.fastapi_apps
    prefix = mounted["url_prefix"]
    assert [urlsplit(view["href"]).path for view in plugin.external_views] == [prefix + "/"]  # a link, nothing served
    monkeypatch.setattr(airflow.plugins_manager, "get_fastapi_plugins", lambda: ([mounted], []))
    api_server = FastAPI()
    init_plugins(api_server)
    routes = [(path, methods) for path, methods in http_routes(api_server) if path.startswith(prefix + "/")]
    assert {(p, m) for p, methods in routes for m in methods} >= {
        (prefix + "/api/batches", "GET"),
        (prefix + "/api/batches/{batch_id}/decisions", "POST"),
    }
    before = snapshot(store)
    cookies = session_cookies(store)
    assert assert_refused(api_server, prefix, routes, cookies) > 500
    assert snapshot(store) == before
    # ... while a real login works through the mount (so the refusals above are the gate's, not a broken mount).
    form = f"username=alice&password={PASSWORD.replace(' ', '+')}".encode()
    status, headers, _ = call(
        api_server, "POST", prefix + "/login", {"Content-Type": "application/x-www-form-urlencoded"}, form
    )
    assert status == 303
    cookie = headers["set-cookie"].split(";")[0]
    assert call(api_server, "GET", prefix + "/api/me", {"Cookie": cookie})[2] == b'{"reviewer":"alice"}'


# -- the demo store: public by design, read-only, nothing but the shop --------------------------------------
def test_the_demo_store_is_a_public_read_only_shop(tmp_path):
    import http.client

    from fashionnet_tools.demo_store.server import DemoStoreServer
    from fashionnet_tools.demo_store.site import build_site

    site = build_site(tmp_path / "site", n_products=2, seed=1)
    with DemoStoreServer(site) as shop:
        host, port = urlsplit(shop.base_url).hostname, urlsplit(shop.base_url).port
        assert host == "127.0.0.1"  # the default binds to this machine only

        def request(method: str, path: str) -> int:
            connection = http.client.HTTPConnection(host, port, timeout=10)
            connection.request(method, path, body=b"x" if method in UNSAFE else None)
            status = connection.getresponse().status
            connection.close()
            return status

        assert request("GET", "/catalog") == 200
        for method in UNSAFE:
            assert request(method, "/catalog") == 501  # no method that could change anything
        for path in [
            "/ground_truth.csv",
            "/catalog.json",
            "/../catalog.json",
            "/images/../ground_truth.csv",
            "/images/..%2fground_truth.csv",
            "/%2e%2e/%2e%2e/etc/passwd",
        ]:
            assert request("GET", path) == 404, path


# -- the Docker deployment's published services -------------------------------------------------------------
def compose_services() -> dict[str, dict]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def test_published_services_other_than_flower_require_a_login():
    services = compose_services()
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"airflow-apiserver", "minio", "flower"}, "a new published service: check its login here"
    assert "ports" not in services["demo-store"]  # the public demo shop stays on the compose network

    api = _env(services["airflow-apiserver"])
    assert api["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")  # logins for the UI and the REST API
    for name, value in api.items():
        assert "AUTH_ROLE_PUBLIC" not in name and "ALL_ADMINS" not in name, (name, value)
    assert api["FASHIONNET_REVIEW_SECRET"].startswith("${FASHIONNET_REVIEW_SECRET:?")  # the review page's own login

    minio = _env(services["minio"])
    assert minio["MINIO_ROOT_PASSWORD"].startswith("${MINIO_ROOT_PASSWORD:?")  # no default root password
    init = " ".join(services["minio-init"]["command"])
    assert not re.search(r"\banonymous\b|policy set public|--public|set-json .*public", init)  # no anonymous access


def test_flower_requires_a_login():
    """Flower has no login of its own: the compose file gives it HTTP basic auth whose password has no
    default (compose refuses to start without FLOWER_PASSWORD in .env)."""
    flower = compose_services()["flower"]
    auth = _env(flower).get("AIRFLOW__CELERY__FLOWER_BASIC_AUTH", "")
    user, password = re.fullmatch(r"(\$\{[^}]*\}|[^:$]+):(.*)", auth).groups()
    assert user and password.startswith("${FLOWER_PASSWORD:?") and password.endswith("}"), auth
    assert _env(flower)["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"  # the shared environment is kept


# -- no credentials in the repository -----------------------------------------------------------------------
CREDENTIAL_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b",
    "AWS secret key assignment": r"(?i)aws_?secret_?access_?key[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+]{40}\b",
    "private key": r"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
    "Slack token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    "Google API key": r"\bAIza[0-9A-Za-z_-]{35}\b",
    "JSON web token": r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.",
    "OpenAI-style key": r"\bsk-[A-Za-z0-9]{32,}\b",
}
# Outside tests/ (whose fixtures need made-up passwords): a URL with a password that is not a placeholder
# ("password", "***", "<POSTGRES_PASSWORD>", "${VAR}", "choose-one", "change-me", "your-password").
PLACEHOLDER = r"(password|pass|secret|\*+|<[A-Za-z_]+>|choose[-_]?one|change[-_]?me|your[-_a-z]*|x{3,}|\.\.\.)"
PASSWORD_IN_URL = r"[a-z][a-z0-9+.-]*://[^/\s:@\"'${}<>]*:(?!" + PLACEHOLDER + r"@)[^/\s@\"'${}]{3,}@"
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|_KEY)$")


def tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()


def test_no_credential_is_committed():
    hits = []
    for name in tracked_files():
        path = REPO_ROOT / name
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        patterns = dict(CREDENTIAL_PATTERNS)
        if not name.startswith("tests/"):
            patterns["password in a URL"] = PASSWORD_IN_URL
        for kind, pattern in patterns.items():
            hits += [f"{name}: {kind}: {m.group(0)[:40]}" for m in re.finditer(pattern, text)]
    assert hits == []
    credential_files = re.compile(
        r"(^|/)(\.env|\.netrc|\.pypirc|credentials|id_rsa|id_ed25519|airflow\.cfg)$"
        r"|\.(pem|key|p12|pfx|jks|keystore)$"
    )
    assert [name for name in tracked_files() if credential_files.search(name)] == []


def test_the_credential_patterns_find_credentials():
    """The patterns above are not vacuous (the samples are assembled here, so this file holds none)."""
    samples = {
        "AWS access key id": "AKIA" + "Q" * 16,
        "AWS secret key assignment": "aws_secret_access_key = " + "a1B2/c3D4+" * 3 + "a1B2/c3D4Z",
        "private key": "-----BEGIN RSA " + "PRIVATE KEY-----",
        "GitHub token": "ghp_" + "a" * 36,
        "JSON web token": "eyJ" + "a" * 12 + ".eyJ" + "b" * 12 + ".sig",
    }
    for kind, sample in samples.items():
        assert re.search(CREDENTIAL_PATTERNS[kind], sample), kind
    assert re.search(PASSWORD_IN_URL, "postgresql://airflow:" + "hunter22@postgres:5432/airflow")
    for placeholder in (
        "postgresql://user:password@host",
        "redis://:password@redis",
        "x://airflow:***@db",
        "postgresql://<POSTGRES_USER>:<POSTGRES_PASSWORD>@postgres",
        "redis://:${REDIS_PASSWORD}@r",
        "postgresql+psycopg2://airflow:choose-one@127.0.0.1:5432/airflow",
    ):
        assert not re.search(PASSWORD_IN_URL, placeholder), placeholder


def test_the_env_template_holds_no_secret_values():
    """.env.example: every secret is empty (scripts/make-dotenv.py draws them per install); what has a value is a
    name, a port, an address, a count or a switch."""
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", (REPO_ROOT / ".env.example").read_text(), re.M))
    secrets = {name for name in values if SECRET_NAME.search(name) and not name.endswith("ACCESS_KEY")}
    assert secrets >= {
        "AIRFLOW_ADMIN_PASSWORD",
        "POSTGRES_PASSWORD",
        "FASHIONNET_S3_SECRET_KEY",
        "FASHIONNET_REVIEW_SECRET",
        "AIRFLOW_FERNET_KEY",
    }
    assert {name: values[name] for name in secrets if values[name]} == {}
    # An S3 access key id is the account's name, not its secret; a made-up local one is fine.
    assert values["FASHIONNET_S3_ACCESS_KEY"] == "fashionnet-airflow"
    for name, value in values.items():
        looks_random = (
            len(value) >= 20
            and re.fullmatch(r"[A-Za-z0-9+/=_-]+", value)
            and len({c.isdigit() for c in value} | {c.isupper() for c in value}) > 2
        )
        assert not looks_random, f"{name} looks like a real secret"


def test_secret_settings_come_from_the_environment_never_from_a_file():
    """Compose passes every secret through from .env (no literal, no default); the Dockerfile and the
    settings files name none."""
    for name, service in compose_services().items():
        for variable, value in _env(service).items():
            if SECRET_NAME.search(variable) and not variable.endswith("ACCESS_KEY"):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*)?\}", value), (name, variable, value)
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert not re.search(r"^\s*(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN|_KEY)\b", dockerfile, re.M | re.I)
    for path in sorted((REPO_ROOT / "config").rglob("*.yaml")):
        secret_setting = r"(?im)^\s*[a-z_]*(password|secret|token|access_key|secret_key)\s*:\s*\S"
        assert not re.search(secret_setting, path.read_text()), path


def test_no_value_of_a_local_env_file_is_committed():
    """A developer's .env (untracked, made by scripts/make-dotenv.py) must not reach a tracked file."""
    env = REPO_ROOT / ".env"
    if not env.exists():
        pytest.skip("no local .env in this checkout")
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", env.read_text(), re.M))
    secrets = [v for k, v in values.items() if SECRET_NAME.search(k) and len(v) >= 8]
    leaked = []
    for name in tracked_files():
        path = REPO_ROOT / name
        if path.is_file() and path.stat().st_size <= 5_000_000:
            data = path.read_bytes()
            leaked += [name for value in secrets if value.encode() in data]
    assert leaked == []


# -- issue 17: the local Airflow metadata database is the owner's only ----------------------------------------
def test_the_demo_and_local_airflow_metadata_databases_are_0600(tmp_path, monkeypatch):
    """airflow.db was 0644 (SQLite creates it with the umask's mode) while airflow.cfg was 0600. Both
    launchers now create it 0600 first; SQLite keeps the mode of a file it finds (and gives its journal
    the same), as the table written below shows."""
    import argparse
    import os
    import sqlite3
    import stat
    import sys

    from fashionnet_tools import airflow_local, demo

    monkeypatch.setattr(os, "environ", dict(os.environ))  # configure_environment sets variables
    monkeypatch.setattr(sys, "path", list(sys.path))
    previous = os.umask(0o022)  # the usual umask, whatever the test runner has
    try:
        demo.configure_environment(argparse.Namespace(work_dir=tmp_path / "demo", profile="demo", store=None))
        args = argparse.Namespace(
            **{**vars(airflow_local.parse_args(["--home", str(tmp_path / "local")])), "store": None}
        )
        airflow_local.airflow_environment(args, base={})
    finally:
        os.umask(previous)
    for db in (tmp_path / "demo" / "airflow" / "airflow.db", tmp_path / "local" / "airflow.db"):
        with sqlite3.connect(db) as connection:
            connection.execute("create table t (x int)")
        assert stat.S_IMODE(db.stat().st_mode) == 0o600, (db, oct(db.stat().st_mode))
