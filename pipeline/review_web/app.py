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

import html
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.middleware.base import BaseHTTPMiddleware

from pipeline.review_web import auth

if TYPE_CHECKING:
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
PAGE_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")
LOGIN_CSP = PAGE_CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'").replace(
    "script-src 'self'", "script-src 'none'")


class ReviewContext:
    """What the routes share: the store (opened on first use), the session signer and short-lived caches."""

    def __init__(self, store_factory: Callable[[], ObjectStore], signer: auth.SessionSigner,
                 secure_cookie: bool | None, cache_ttl_s: float) -> None:
        self._store_factory = store_factory
        self._store: ObjectStore | None = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self.signer = signer
        self.secure_cookie = secure_cookie
        self.cache_ttl_s = cache_ttl_s
        self.throttle = LoginThrottle()

    @property
    def store(self) -> ObjectStore:
        with self._lock:
            if self._store is None:
                self._store = self._store_factory()
            return self._store

    def cached(self, kind: str, key: str, load: Callable[[], Any]) -> Any:
        """``load()``, reused for ``cache_ttl_s`` (reviewers on every request, image keys on every image)."""
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

    def reviewers(self) -> dict[str, dict[str, Any]]:
        return self.cached("reviewers", "", lambda: auth.read_reviewers(self.store))


class LoginThrottle:
    """At most ``limit`` failed logins per reviewer name in ``window_s``; later tries are refused unchecked."""

    def __init__(self, limit: int = 5, window_s: float = 300.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, name: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(name, deque())
        while failures and now - failures[0] > self.window_s:
            failures.popleft()
        return failures

    def blocked(self, name: str) -> bool:
        with self._lock:
            return len(self._recent(name, time.monotonic())) >= self.limit

    def failed(self, name: str) -> None:
        with self._lock:
            now = time.monotonic()
            self._recent(name, now).append(now)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)


# -- request helpers -------------------------------------------------------------------------------
def route_path(request: Request) -> str:
    """The path inside this app, without the prefix it is mounted under."""
    path, root = request.url.path, request.scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


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
                return RedirectResponse("login", status_code=303)
            return JSONResponse({"detail": "not authenticated: log in first"}, status_code=401)
        if request.method not in SAFE_METHODS and (
                request.headers.get(CSRF_HEADER) != CSRF_VALUE or cross_site(request)):
            return JSONResponse({"detail": f"refused: a change needs the {CSRF_HEADER} header from this site"},
                                status_code=403)
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
def login_page(error: str = "", status_code: int = 200) -> HTMLResponse:
    text = (STATIC_DIR / "login.html").read_text()
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return HTMLResponse(text.replace("<!--error-->", message), status_code=status_code,
                        headers={"Content-Security-Policy": LOGIN_CSP})


def add_page_routes(app: FastAPI) -> None:
    @app.get("/login", include_in_schema=False)
    def show_login(request: Request) -> Response:
        ctx = context(request)
        token = request.cookies.get(COOKIE_NAME)
        if token and ctx.signer.reviewer(token, ctx.reviewers()):
            return RedirectResponse("./", status_code=303)
        return login_page()

    @app.post("/login", include_in_schema=False)
    def do_login(request: Request, username: str = Form(""), password: str = Form("")) -> Response:
        ctx = context(request)
        if cross_site(request):
            return login_page("This login form only accepts posts from its own page.", 403)
        username = username.strip()
        if ctx.throttle.blocked(username):
            log.warning("review login for %r refused: too many failed attempts", username)
            return login_page("Too many failed attempts; wait a few minutes.", 429)
        ctx.forget("reviewers")  # a reviewer added a moment ago can log in at once
        reviewers = ctx.reviewers()
        if not auth.authenticate(reviewers, username, password):
            ctx.throttle.failed(username)
            log.warning("review login failed for %r", username)
            return login_page("Unknown reviewer or wrong password.", 401)
        ctx.throttle.succeeded(username)
        log.info("review login: %s", username)
        response = RedirectResponse("./", status_code=303)
        secure = ctx.secure_cookie if ctx.secure_cookie is not None else request.url.scheme == "https"
        response.set_cookie(COOKIE_NAME, ctx.signer.issue(username, reviewers[username]),
                            max_age=ctx.signer.max_age_s, path=cookie_path(request), httponly=True,
                            samesite="strict", secure=secure)
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
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
def create_app(store_factory: Callable[[], ObjectStore] | None = None, *, secret: str | None = None,
               session_max_age_s: int = 12 * 3600, secure_cookie: bool | None = None,
               cache_ttl_s: float = 5.0) -> FastAPI:
    """The review app over the store ``store_factory()`` returns (default: the configured store).

    ``secret`` signs sessions (default ``FASHIONNET_REVIEW_SECRET``, else random per process);
    ``secure_cookie`` forces the cookie's Secure flag (default: set on https requests);
    ``cache_ttl_s`` is how long the reviewers file and a batch's image keys are reused.
    """
    from pipeline.review_web.api import router  # the API pulls in pandas; still nothing at factory time

    if store_factory is None:
        from pipeline.storage import open_store

        store_factory = open_store
    app = FastAPI(title="FashionNet review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = ReviewContext(store_factory, auth.SessionSigner(auth.session_secret(secret), session_max_age_s),
                                     secure_cookie, cache_ttl_s)
    add_page_routes(app)
    app.include_router(router, prefix="/api")
    app.add_middleware(SessionGate)
    app.middleware("http")(security_headers)  # added last: outermost, so refusals get the headers too
    return app
