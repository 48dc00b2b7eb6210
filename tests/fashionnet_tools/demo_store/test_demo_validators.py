"""The demo store's incremental-crawl support: ETag / Last-Modified, 304 answers, sitemap lastmod."""

from __future__ import annotations

import urllib.request
from email.utils import parsedate_to_datetime
from urllib.error import HTTPError

from fashionnet_tools.demo_store.server import DemoStoreServer
from scrapers.spiders.base import sitemap_lastmods


def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except HTTPError as error:  # urllib raises for 304
        return error.code, dict(error.headers), error.read()


def test_product_pages_answer_conditional_requests(demo_site):
    with DemoStoreServer(demo_site) as server:
        sku = server.products[0]["sku"]
        url = f"{server.base_url}/product/{sku}"
        status, headers, body = get(url)
        assert status == 200 and body and headers["ETag"].startswith('"')
        etag, modified = headers["ETag"], headers["Last-Modified"]
        assert get(url, **{"If-None-Match": etag})[0] == 304
        status, _, body = get(url, **{"If-Modified-Since": modified})
        assert status == 304 and body == b""
        assert get(url, **{"If-None-Match": '"other"', "If-Modified-Since": modified})[0] == 200  # ETag wins
        assert server.responses[-2][1:] == (304, 0)

        before = parsedate_to_datetime(modified)
        server.update_product(sku, price=1.0)
        status, headers, _ = get(url, **{"If-None-Match": etag, "If-Modified-Since": modified})
        assert status == 200 and headers["ETag"] != etag and parsedate_to_datetime(headers["Last-Modified"]) > before
        other = f"{server.base_url}/product/{server.products[1]['sku']}"
        assert get(other, **{"If-Modified-Since": modified})[0] == 304  # the others did not change


def test_sitemap_gives_every_product_its_lastmod(demo_site):
    with DemoStoreServer(demo_site) as server:
        _, _, body = get(f"{server.base_url}/sitemap.xml")
        lastmods = sitemap_lastmods(body)
        assert len(lastmods) == len(server.products) and len(set(lastmods.values())) == 1
        server.update_product(server.products[2]["sku"], title="New")
        changed = sitemap_lastmods(get(f"{server.base_url}/sitemap.xml")[2])
        moved = [url for url in changed if changed[url] != lastmods[url]]
        assert moved == [f"{server.base_url}/product/{server.products[2]['sku']}"]
        assert changed[moved[0]] > lastmods[moved[0]]
