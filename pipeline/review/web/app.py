"""The review app: login, the session gate, the page and its static files; the JSON API is in ``api.py``.

Every request passes :class:`SessionGate` first. Only ``GET``/``POST /login`` get through without a
valid session; the page (``/``) redirects to the login page, everything else answers 401. This holds
whether the app runs standalone or mounted in Airflow's api-server, which serves plugin apps without
its own authentication. State-changing requests also need ``X-Requested-With: fashionnet-review``
(a header a cross-site form cannot send, and a cross-site script cannot send without a CORS preflight
this app never grants) on top of the ``SameSite=Strict`` session cookie; requests a browser marks as
cross-site (``Sec-Fetch-Site`` or a foreign ``Origin``) are refused, the login form's included.

All URLs the page uses are relative, so the app works under any prefix (``/fashionnet-review/`` in
Airflow). FastAPI's own docs routes are switched off.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.middleware.base import BaseHTTPMiddleware

from pipeline.review.web import auth
from pipeline.store_layout import REVIEWERS_KEY

if TYPE_CHECKING:
    from pipeline.settings import ReviewSettings, Taxonomy
    from pipeline.storage import ObjectStore

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"review.js": "text/javascript", "review.css": "text/css"}
COOKIE_NAME = "fashionnet_review_session"
CSRF_HEADER = "x-requested-with"
CSRF_VALUE = "fashionnet-review"
PUBLIC_PATHS = {"/login"}
PAGE_PATHS = {"/", ""}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# A batch id the page may be opened on (?batch=...), kept through the login (the approval request's link).
BATCH_QUERY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
LOGIN_CSP = PAGE_CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'").replace(
    "script-src 'self'", "script-src 'none'"
)


class ReviewContext:
    """What the routes share: the store (opened on first use), the session signer, the login guards
    (:class:`auth.LoginThrottle`, :class:`auth.PasswordCheckGate`) and short-lived caches."""

    def __init__(
        self,
        store_factory: Callable[[], ObjectStore],
        signer: auth.SessionSigner,
        secure_cookie: bool | None,
        cache_ttl_s: float,
        settings: ReviewSettings,
        taxonomy: Taxonomy,
    ) -> None:
        self._store_factory = store_factory
        self._store: ObjectStore | None = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self._reviewers: tuple[str | None, dict[str, dict[str, Any]]] | None = None
        self.signer = signer
        self.secure_cookie = secure_cookie
        self.cache_ttl_s = cache_ttl_s
        self.settings = settings
        self.taxonomy = taxonomy
        self.throttle = auth.LoginThrottle(
            lambda: self.store,
            settings.free_login_failures,
            float(settings.login_delay_s),
            float(settings.login_max_delay_s),
            float(settings.login_failure_memory_s),
        )
        self.password_checks = auth.PasswordCheckGate(
            settings.max_concurrent_password_checks,
            settings.max_password_checks_per_client,
            float(settings.password_check_wait_s),
        )

    @property
    def store(self) -> ObjectStore:
        with self._lock:
            if self._store is None:
                self._store = self._store_factory()
            return self._store

    def cached(self, kind: str, key: str, load: Callable[[], Any]) -> Any:
        """``load()``, reused for ``cache_ttl_s`` (a batch's image keys on every image)."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get((kind, key))
        if hit is not None and now - hit[0] < self.cache_ttl_s:
            return hit[1]
        value = load()
        with self._lock:
            self._cache[(kind, key)] = (now, value)
        return value

    def forget(self, kind: str) -> None:
        with self._lock:
            for cache_key in [k for k in self._cache if k[0] == kind]:
                del self._cache[cache_key]
            if kind == "reviewers":
                self._reviewers = None

    def reviewers(self) -> dict[str, dict[str, Any]]:
        """The reviewers file as it is now: its version is checked on every call (a stat, or one HEAD on
        S3) and the file read again when it changed, so a logout, removal or new password elsewhere
        ends a session on the very next request, in every process."""
        version = self.store.version(REVIEWERS_KEY)
        with self._lock:
            if self._reviewers is not None and self._reviewers[0] == version:
                return self._reviewers[1]
        reviewers = auth.read_reviewers(self.store) if version is not None else {}
        with self._lock:
            self._reviewers = (version, reviewers)
        return reviewers


class BodySizeLimit:
    """Refuse request bodies over the limit of their route with 413, before the route reads them.

    A declared ``Content-Length`` over the limit is answered at once, unread; a body without one
    (chunked) is counted as it arrives and refused at the first byte over the limit. Wraps the whole
    app (outermost), so it holds on every route, the login form and unauthenticated requests included.
    """

    def __init__(self, app: Any, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, root = scope.get("path", ""), scope.get("root_path", "")
        limit = self.limit_for(path[len(root) :] if root and path.startswith(root) else path)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                return await self._refuse(send, 400, "a malformed Content-Length")
            if too_big:
                return await self._refuse(send, 413, f"the request body is over {limit} bytes")
        received, started, refused = 0, False, False

        async def counted_receive() -> dict:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and not started:
                    # answer now and tell the app the client left: it stops reading, and what it
                    # still sends is dropped (raising here would reach FastAPI as a 400)
                    refused = True
                    await self._refuse(send, 413, f"the request body is over {limit} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception:
            if not refused:
                raise
            log.info("request to %s refused (body over %d bytes); the app's error after it: dropped", path, limit)

    @staticmethod
    async def _refuse(send: Callable[[dict], Awaitable[None]], status: int, why: str) -> None:
        body = json.dumps({"detail": f"refused: {why}"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# -- request helpers -------------------------------------------------------------------------------
def route_path(request: Request) -> str:
    """The path inside this app, without the prefix it is mounted under."""
    path, root = request.url.path, request.scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def client_address(request: Request) -> str:
    """The client's address: the configured proxy header's last entry, else the connection's peer."""
    header = context(request).settings.client_address_header
    if header:
        forwarded = request.headers.get(header)
        if forwarded and forwarded.split(",")[-1].strip():
            return forwarded.split(",")[-1].strip()
    return request.client.host if request.client else "unknown"


def cookie_path(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") + "/"


def context(request: Request) -> ReviewContext:
    return request.app.state.review


def reviewer(request: Request) -> str:
    """The authenticated reviewer (set by :class:`SessionGate`; routes never trust a client field)."""
    return request.state.reviewer


def cross_site(request: Request) -> bool:
    """Whether the browser says the request comes from another site.

    ``Sec-Fetch-Site`` (set by the browser, not by page scripts) decides when present; otherwise a
    foreign or opaque (``null``) ``Origin`` is cross-site, and a request without either (a non-browser
    client) is not.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return False
    hosts = {request.headers.get("host"), request.headers.get("x-forwarded-host")} - {None}
    return urlsplit(origin).netloc not in hosts


def with_batch(target: str, request: Request) -> str:
    """``target`` with the request's ``?batch=`` when it is a batch id (anything else is dropped), so the page a
    link opened on a batch still opens on it after the login."""
    batch = request.query_params.get("batch", "")
    return f"{target}?batch={batch}" if BATCH_QUERY.fullmatch(batch) else target


class SessionGate(BaseHTTPMiddleware):
    """Deny by default: no valid session, no route (but the login page); no CSRF header, no change."""

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = route_path(request)
        if path in PUBLIC_PATHS:
            return await call_next(request)
        ctx = context(request)
        token = request.cookies.get(COOKIE_NAME)
        name = ctx.signer.reviewer(token, ctx.reviewers()) if token else None
        if name is None:
            if path in PAGE_PATHS and request.method in SAFE_METHODS:
                return RedirectResponse(with_batch("login", request), status_code=303)
            return JSONResponse({"detail": "not authenticated: log in first"}, status_code=401)
        if request.method not in SAFE_METHODS and (
            request.headers.get(CSRF_HEADER) != CSRF_VALUE or cross_site(request)
        ):
            return JSONResponse(
                {"detail": f"refused: a change needs the {CSRF_HEADER} header from this site"}, status_code=403
            )
        request.state.reviewer = name
        return await call_next(request)


async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")  # no-referrer would make forms send Origin: null
    response.headers.setdefault("Cache-Control", "no-store")
    if response.headers.get("content-type", "").startswith("text/html"):
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
    return response


# -- pages -----------------------------------------------------------------------------------------
TOO_MANY_FAILURES = "Too many failed attempts; wait a few minutes."
BUSY = "The server is busy checking passwords; try again in a moment."


def login_page(error: str = "", status_code: int = 200, retry_after_s: float | None = None) -> HTMLResponse:
    text = (STATIC_DIR / "login.html").read_text()
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    headers = {"Content-Security-Policy": LOGIN_CSP}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return HTMLResponse(text.replace("<!--error-->", message), status_code=status_code, headers=headers)


def add_page_routes(app: FastAPI) -> None:
    @app.get("/login", include_in_schema=False)
    def show_login(request: Request) -> Response:
        ctx = context(request)
        token = request.cookies.get(COOKIE_NAME)
        if token and ctx.signer.reviewer(token, ctx.reviewers()):
            return RedirectResponse(with_batch("./", request), status_code=303)
        return login_page()

    @app.post("/login", include_in_schema=False)
    def do_login(request: Request, username: str = Form(""), password: str = Form("")) -> Response:
        ctx = context(request)
        if cross_site(request):
            return login_page("This login form only accepts posts from its own page.", 403)
        username, client = username.strip(), client_address(request)
        wait_s = ctx.throttle.wait_s(client, username)
        if wait_s > 0:
            log.warning(
                "review login for %r from %s refused: %.0f s to wait after failed attempts", username, client, wait_s
            )
            return login_page(TOO_MANY_FAILURES, 429, retry_after_s=wait_s)
        refused = ctx.password_checks.acquire(client)
        if refused is not None:
            log.warning(
                "review login for %r from %s refused: %s",
                username,
                client,
                "a check of this client is running" if refused == "client" else "too many checks at once",
            )
            return login_page(BUSY, 429 if refused == "client" else 503, retry_after_s=1)
        try:
            reviewers = ctx.reviewers()
            ok = auth.authenticate(reviewers, username, password)
        finally:
            ctx.password_checks.release(client)
        if not ok:
            failures = ctx.throttle.failed(client, username)
            log.warning("review login failed for %r from %s (%d in a row)", username, client, failures)
            return login_page("Unknown reviewer or wrong password.", 401)
        ctx.throttle.succeeded(client, username)
        log.info("review login: %s", username)
        response = RedirectResponse(with_batch("./", request), status_code=303)
        secure = ctx.secure_cookie if ctx.secure_cookie is not None else request.url.scheme == "https"
        response.set_cookie(
            COOKIE_NAME,
            ctx.signer.issue(username, reviewers[username]),
            max_age=ctx.signer.max_age_s,
            path=cookie_path(request),
            httponly=True,
            samesite="strict",
            secure=secure,
        )
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        """End every session of this reviewer, server side (not only this browser's cookie)."""
        ctx = context(request)
        auth.end_sessions(ctx.store, reviewer(request))
        ctx.forget("reviewers")
        log.info("review logout: %s (every session ended)", reviewer(request))
        response = Response(status_code=204)
        response.delete_cookie(COOKIE_NAME, path=cookie_path(request), httponly=True, samesite="strict")
        return response

    @app.get("/", include_in_schema=False)
    def page(request: Request) -> Response:
        if not request.url.path.endswith("/"):  # the page's relative URLs need the trailing slash
            return RedirectResponse(request.url.path + "/", status_code=307)
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            return JSONResponse({"detail": "not found"}, status_code=404)
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])


# -- the factory -----------------------------------------------------------------------------------
def create_app(
    store_factory: Callable[[], ObjectStore] | None = None,
    *,
    secret: str | None = None,
    session_max_age_s: int = 12 * 3600,
    secure_cookie: bool | None = None,
    cache_ttl_s: float = 5.0,
    review_settings: dict[str, Any] | None = None,
) -> FastAPI:
    """The review app over the store ``store_factory()`` returns (default: the configured store).

    ``secret`` signs sessions (default ``FASHIONNET_REVIEW_SECRET``, else random per process);
    ``secure_cookie`` forces the cookie's Secure flag (default: set on https requests);
    ``cache_ttl_s`` is how long a batch's image keys are reused; ``review_settings``: overrides of
    the ``review:`` section of ``config/settings.yaml`` (body limits, login throttling, password checks).
    """
    from pipeline.review.web.api import router  # the API pulls in pandas; still nothing at factory time

    if store_factory is None:
        from pipeline.storage import open_store

        store_factory = open_store
    app = FastAPI(title="FashionNet review", docs_url=None, redoc_url=None, openapi_url=None)
    from pipeline.settings import get_settings

    loaded = get_settings()  # read once: the routes take the review section and the taxonomy from the context
    settings = dataclasses.replace(loaded.review, **(review_settings or {}))
    app.state.review = ReviewContext(
        store_factory,
        auth.SessionSigner(auth.session_secret(secret), session_max_age_s),
        secure_cookie,
        cache_ttl_s,
        settings,
        loaded.taxonomy,
    )
    add_page_routes(app)
    app.include_router(router, prefix="/api")
    app.add_middleware(SessionGate)
    app.middleware("http")(security_headers)  # refusals get the headers too
    login_limit, body_limit = settings.max_login_body_bytes, settings.max_body_bytes
    app.add_middleware(BodySizeLimit, limit_for=lambda path: login_limit if path in PUBLIC_PATHS else body_limit)
    return app
