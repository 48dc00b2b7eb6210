"""Serve a built demo site over HTTP on 127.0.0.1 (stdlib only, one thread per request).

Routes: ``/`` home, ``/catalog?page=N`` listing (rel=next pagination), ``/product/<sku>`` (schema.org
Product JSON-LD inside an ``@graph``), ``/search?q=...&page=N``, ``/sitemap.xml``, ``/robots.txt``
(disallows ``/account/``), ``/account/`` (a page crawlers must not fetch), ``/images/<file>``.
Everything else, including ``ground_truth.csv``, is a 404. Every requested path is recorded in
:attr:`DemoStoreServer.requests` so tests can check what a crawler fetched, and every answer in
:attr:`DemoStoreServer.responses` (path, status, body bytes) so the incremental benchmark can count them.

Incremental crawling (issue 11): a product page carries an ``ETag`` (a hash of its content) and a
``Last-Modified`` (when its product last changed: the catalog file's time, or the moment of
:meth:`DemoStoreServer.update_product`), answers ``If-None-Match`` / ``If-Modified-Since`` with a 304
without a body when it has not changed (``If-None-Match`` wins when both are sent, as RFC 9110 says), and
the sitemap gives every product's ``lastmod``.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import threading
import time
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from fashionnet_tools.demo_store.site import CATALOG_FILE, IMAGES_DIR, load_catalog

PAGE_SIZE = 24
_WORD = re.compile(r"[a-z0-9]+")
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9._-]+\.jpg$")


def words(text: str) -> list[str]:
    """Lower-case word tokens; the search matches whole words ('sleeve' does not match 'sleeveless')."""
    return _WORD.findall(text.lower())


def search_matches(product: dict[str, object], query: str) -> bool:
    """True when every word of ``query`` is a word of the product's title or description."""
    wanted = words(query)
    have = set(words(f"{product['title']} {product['description']}"))
    return bool(wanted) and all(w in have for w in wanted)


def _page(title: str, body: str, head: str = "") -> bytes:
    nav = '<nav><a href="/">Home</a> | <a href="/catalog">All tops</a> | <a href="/account/">My account</a></nav>'
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{head}</head>"
        f"<body>{nav}<h1>{html.escape(title)}</h1>{body}</body></html>"
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    server: _StoreHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        """Quiet: the store records paths in ``requests`` instead of logging to stderr."""

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        store = self.server.store
        store.record(self.path)
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        path = parts.path
        try:
            if path == "/":
                self._html(
                    _page(
                        "FashionNet Demo Store",
                        '<p><a href="/catalog">Browse all tops</a></p>'
                        '<form action="/search"><input name="q"><button>Search</button></form>',
                    )
                )
            elif path == "/catalog":
                self._listing("All tops", "/catalog", {}, store.products, query)
            elif path == "/search":
                q = query.get("q", [""])[0]
                hits = [p for p in store.products if search_matches(p, q)]
                self._listing(f"Search: {q}", "/search", {"q": q}, hits, query)
            elif path.startswith("/product/"):
                self._product(path[len("/product/") :])
            elif path == "/sitemap.xml":
                self._sitemap()
            elif path == "/robots.txt":
                body = f"User-agent: *\nDisallow: /account/\n\nSitemap: {self._origin()}/sitemap.xml\n"
                self._send(200, "text/plain; charset=utf-8", body.encode())
            elif path.startswith("/account"):
                self._html(_page("My account", "<p>Orders, addresses and payment details.</p>"))
            elif path.startswith("/images/"):
                self._image(path[len("/images/") :])
            else:
                self._not_found()
        except _NotFound:
            self._not_found()

    def _origin(self) -> str:
        """``http://host:port`` as the client addressed us (absolute URLs in JSON-LD and the sitemap)."""
        host = self.headers.get("Host")
        return f"http://{host}" if host and re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+", host) else self.server.store.base_url

    # -- responses ----------------------------------------------------------------------------
    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        # Recorded before the client can see the response: recorded after it, the handler thread of the
        # client's next request could record first, and the log's order would not be the requests' order.
        self.server.store.record_response(self.path, status, len(body))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _not_modified(self, validators: dict[str, str]) -> None:
        self.server.store.record_response(self.path, 304, 0)  # first, as in _send
        self.send_response(304)
        for name, value in validators.items():
            self.send_header(name, value)
        self.end_headers()

    def _unchanged_for_client(self, etag: str, modified: float) -> bool:
        """Whether the request's conditional headers say the client holds this version."""
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            return etag in [tag.strip() for tag in if_none_match.split(",")] or if_none_match.strip() == "*"
        if_modified_since = self.headers.get("If-Modified-Since")
        if if_modified_since:
            try:
                since = parsedate_to_datetime(if_modified_since)
            except (TypeError, ValueError):
                return False
            return int(modified) <= since.timestamp()
        return False

    def _html(self, body: bytes, status: int = 200) -> None:
        self._send(status, "text/html; charset=utf-8", body)

    def _not_found(self) -> None:
        self._html(_page("Not found", "<p>No such page.</p>"), status=404)

    def _listing(self, title: str, route: str, params: dict[str, str], items: list[dict], query: dict) -> None:
        page = _page_number(query)
        pages = max(1, math.ceil(len(items) / PAGE_SIZE))
        if page > pages:
            raise _NotFound
        shown = items[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        rows = "".join(
            f'<li class="product"><a href="/product/{quote(p["sku"])}">{html.escape(p["title"])}</a> '
            f'<span class="price">{p["price"]:.2f} {p["currency"]}</span></li>'
            for p in shown
        )
        head, links = "", f"<p>Page {page} of {pages} ({len(items)} products)</p>"
        if page < pages:
            url = f"{route}?{urlencode({**params, 'page': page + 1})}"
            head += f'<link rel="next" href="{html.escape(url)}">'
            links += f'<a rel="next" href="{html.escape(url)}">Next page</a>'
        if page > 1:
            url = f"{route}?{urlencode({**params, 'page': page - 1})}"
            links += f' <a rel="prev" href="{html.escape(url)}">Previous page</a>'
        empty = "" if items else "<p>No products found.</p>"
        self._html(_page(title, f'{empty}<ul class="products">{rows}</ul>{links}', head))

    def _product(self, sku: str) -> None:
        store = self.server.store
        product = store.by_sku.get(sku)
        if product is None:
            raise _NotFound
        origin = self._origin()
        image_url = f"{origin}/{IMAGES_DIR}/{product['image']}"
        ld = {
            "@context": "https://schema.org",
            "@graph": [
                {
                    "@type": "BreadcrumbList",
                    "itemListElement": [
                        {"@type": "ListItem", "position": 1, "name": "Tops", "item": f"{origin}/catalog"}
                    ],
                },
                {
                    "@type": "Product",
                    "name": product["title"],
                    "image": image_url,
                    "sku": product["sku"],
                    "description": product["description"],
                    "category": product["category"],
                    "offers": {
                        "@type": "Offer",
                        "price": f"{product['price']:.2f}",
                        "priceCurrency": product["currency"],
                        "availability": "https://schema.org/InStock",
                    },
                },
            ],
        }
        modified = store.modified_at(sku)
        etag = '"' + hashlib.sha1(json.dumps([ld, product["image"]], sort_keys=True).encode()).hexdigest()[:20] + '"'
        validators = {"ETag": etag, "Last-Modified": http_date(modified)}
        if self._unchanged_for_client(etag, modified):
            self._not_modified(validators)
            return
        script = json.dumps(ld).replace("</", "<\\/")
        body = (
            f'<img src="/{IMAGES_DIR}/{html.escape(product["image"])}" alt="{html.escape(product["title"])}">'
            f'<p class="price">{product["price"]:.2f} {product["currency"]}</p>'
            f'<p class="description">{html.escape(product["description"])}</p>'
            f'<p class="sku">SKU {html.escape(product["sku"])}</p>'
        )
        page = _page(product["title"], body, f'<script type="application/ld+json">{script}</script>')
        self._send(200, "text/html; charset=utf-8", page, validators)

    def _sitemap(self) -> None:
        store = self.server.store
        origin = self._origin()
        urls = "".join(
            f"<url><loc>{origin}/product/{quote(p['sku'])}</loc>"
            f"<lastmod>{w3c_datetime(store.modified_at(p['sku']))}</lastmod></url>"
            for p in store.products
        )
        body = f'<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>'
        self._send(200, "application/xml", body.encode())

    def _image(self, name: str) -> None:
        if not _IMAGE_NAME.match(name):
            raise _NotFound
        path = self.server.store.site_dir / IMAGES_DIR / name
        if not path.is_file():
            raise _NotFound
        self._send(200, "image/jpeg", path.read_bytes())


class _NotFound(Exception):
    pass


def http_date(timestamp: float) -> str:
    """An HTTP date (``Last-Modified``), whole seconds."""
    return format_datetime(datetime.fromtimestamp(int(timestamp), UTC), usegmt=True)


def w3c_datetime(timestamp: float) -> str:
    """A sitemap ``lastmod`` (W3C datetime in UTC), whole seconds."""
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _page_number(query: dict[str, list[str]]) -> int:
    raw = query.get("page", ["1"])[0]
    if not raw.isdigit() or int(raw) < 1:
        raise _NotFound
    return int(raw)


class _StoreHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    store: DemoStoreServer


class DemoStoreServer:
    """The demo store on ``host:port`` (port 0 picks a free one), served from a background thread."""

    def __init__(self, site_dir: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.site_dir = Path(site_dir)
        self.products: list[dict] = load_catalog(self.site_dir)
        self.by_sku = {p["sku"]: p for p in self.products}
        # When each product last changed (whole seconds, as HTTP dates have): the catalog file's time.
        built = int((self.site_dir / CATALOG_FILE).stat().st_mtime)
        self.modified: dict[str, float] = {p["sku"]: built for p in self.products}
        self.host, self.port = host, port
        self.requests: list[str] = []
        self.responses: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()
        self._httpd: _StoreHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        return f"http://{self.host}:{self.port}"

    def record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)

    def record_response(self, path: str, status: int, body_bytes: int) -> None:
        with self._lock:
            self.responses.append((path, status, body_bytes))

    def modified_at(self, sku: str) -> float:
        with self._lock:
            return self.modified[sku]

    def update_product(self, sku: str, **changes: object) -> None:
        """Change a product's public fields; its Last-Modified and sitemap lastmod move to now (at least
        one second past the previous value, so the change is visible at HTTP dates' resolution)."""
        with self._lock:
            self.by_sku[sku].update(changes)  # the same dict as in ``products``
            self.modified[sku] = max(int(time.time()), int(self.modified[sku]) + 1)

    def requested_paths(self) -> list[str]:
        """The paths (without query) requested so far."""
        with self._lock:
            return [urlsplit(p).path for p in self.requests]

    def start(self) -> DemoStoreServer:
        if self._httpd is not None:
            return self
        self._httpd = _StoreHTTPServer((self.host, self.port), _Handler)
        self._httpd.store = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="demo-store", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def serve_forever(self) -> None:
        """Block until interrupted (the CLI)."""
        self.start()
        assert self._thread is not None
        try:
            while self._thread.is_alive():
                self._thread.join(timeout=0.5)
        finally:
            self.stop()

    def __enter__(self) -> DemoStoreServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
