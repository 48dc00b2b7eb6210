"""The built site (files, public catalog, kept-aside truth) and the served routes."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from fashionnet_tools.demo_store.server import PAGE_SIZE, DemoStoreServer, search_matches
from fashionnet_tools.demo_store.site import build_site, load_catalog, load_ground_truth, make_user_images


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def text(url: str) -> str:
    status, _, body = get(url)
    assert status == 200, url
    return body.decode()


def product_links(html: str) -> list[str]:
    return re.findall(r'href="/product/([^"]+)"', html)


def test_site_files_and_ground_truth(demo_site: Path):
    catalog = load_catalog(demo_site)
    truth = load_ground_truth(demo_site)
    assert len(catalog) == truth.num_rows == 40
    assert truth.column_names == ["sku", "pattern", "fabric", "style", "shape", "text_noise"]
    assert truth.column("sku").to_pylist() == [p["sku"] for p in catalog]
    for product in catalog:
        assert not {"pattern", "fabric", "style", "shape", "noise"} & set(product)
        with Image.open(demo_site / "images" / product["image"]) as img:
            assert img.format == "JPEG" and img.size == (128, 128)


def test_build_is_deterministic(tmp_path: Path, demo_site: Path):
    again = build_site(tmp_path / "again", n_products=40, seed=3)
    assert (again / "catalog.json").read_text() == (demo_site / "catalog.json").read_text()
    assert (again / "ground_truth.csv").read_text() == (demo_site / "ground_truth.csv").read_text()
    first = sorted(p.name for p in (demo_site / "images").iterdir())
    assert first == sorted(p.name for p in (again / "images").iterdir())
    assert (again / "images" / first[0]).read_bytes() == (demo_site / "images" / first[0]).read_bytes()


def test_user_images_are_one_consistent_style(tmp_path: Path):
    paths = make_user_images(
        tmp_path / "user", n=3, seed=2, pattern="floral", fabric="silk", style="summer", shape="sleeveless"
    )
    assert [p.name for p in paths] == ["user-00.jpg", "user-01.jpg", "user-02.jpg"]
    pictures = [Image.open(p).convert("RGB").tobytes() for p in paths]
    assert len(set(pictures)) == 3


def test_robots_and_sitemap(demo_server: DemoStoreServer, demo_site: Path):
    robots = text(demo_server.base_url + "/robots.txt")
    assert "Disallow: /account/" in robots
    assert f"Sitemap: {demo_server.base_url}/sitemap.xml" in robots
    sitemap = text(demo_server.base_url + "/sitemap.xml")
    locs = re.findall(r"<loc>([^<]+)</loc>", sitemap)
    assert locs == [f"{demo_server.base_url}/product/{p['sku']}" for p in load_catalog(demo_site)]


def test_catalog_pagination_covers_every_product_once(demo_server: DemoStoreServer, demo_site: Path):
    seen, url, pages = [], demo_server.base_url + "/catalog", 0
    while url:
        html = text(url)
        pages += 1
        links = product_links(html)
        assert len(links) <= PAGE_SIZE
        seen += links
        nxt = re.search(r'<a rel="next" href="([^"]+)"', html)
        url = demo_server.base_url + nxt.group(1).replace("&amp;", "&") if nxt else None
    assert pages == 2
    assert seen == [p["sku"] for p in load_catalog(demo_site)]
    assert get(demo_server.base_url + "/catalog?page=3")[0] == 404
    assert get(demo_server.base_url + "/catalog?page=zero")[0] == 404


def test_product_page_has_schema_org_json_ld(demo_server: DemoStoreServer, demo_site: Path):
    product = load_catalog(demo_site)[5]
    html = text(f"{demo_server.base_url}/product/{product['sku']}")
    block = re.search(r'<script type="application/ld\+json">(.*?)</script>', html, re.S).group(1)
    node = next(n for n in json.loads(block)["@graph"] if n["@type"] == "Product")
    assert node["name"] == product["title"] and node["sku"] == product["sku"]
    assert node["image"] == f"{demo_server.base_url}/images/{product['image']}"
    assert float(node["offers"]["price"]) == product["price"] and node["offers"]["priceCurrency"] == "EUR"
    assert product["description"] in html
    status, ctype, body = get(node["image"])
    assert status == 200 and ctype == "image/jpeg" and body[:2] == b"\xff\xd8"


@pytest.mark.parametrize("query", ["long sleeve", "Striped", "party", "sleeveless", "cotton top"])
def test_search_returns_products_containing_every_query_word(demo_server: DemoStoreServer, demo_site: Path, query: str):
    expected = [p["sku"] for p in load_catalog(demo_site) if search_matches(p, query)]
    found = product_links(text(f"{demo_server.base_url}/search?q={query.replace(' ', '+')}"))
    assert found == expected[:PAGE_SIZE]


def test_search_semantics_are_whole_words_and_all_words():
    product = {"title": "Striped Cotton Party Top, Sleeveless", "description": "A top."}
    assert search_matches(product, "STRIPED cotton")
    assert not search_matches(product, "striped wool")
    assert not search_matches(product, "sleeve")
    assert not search_matches(product, "")


def test_search_paginates(tmp_path: Path):
    site = build_site(tmp_path / "big", n_products=120, seed=1)
    with DemoStoreServer(site) as server:
        expected = [p["sku"] for p in load_catalog(site) if search_matches(p, "top")]
        assert len(expected) > PAGE_SIZE
        page1 = text(f"{server.base_url}/search?q=top")
        assert 'rel="next" href="/search?q=top&amp;page=2"' in page1
        page2 = text(f"{server.base_url}/search?q=top&page=2")
        assert product_links(page1) + product_links(page2) == expected[: 2 * PAGE_SIZE]


@pytest.mark.parametrize(
    "path",
    [
        "/ground_truth.csv",
        "/catalog.json",
        "/images/../ground_truth.csv",
        "/images/%2e%2e/ground_truth.csv",
        "/product/NOPE",
        "/nothing",
        "/images/missing.jpg",
    ],
)
def test_unknown_paths_and_the_ground_truth_are_404(demo_server: DemoStoreServer, path: str):
    assert get(demo_server.base_url + path)[0] == 404


def test_ground_truth_labels_are_never_served(demo_server: DemoStoreServer, demo_site: Path):
    truth = load_ground_truth(demo_site).to_pylist()
    sku = truth[0]["sku"]
    pages = [
        text(demo_server.base_url + p) for p in ("/", "/catalog", "/sitemap.xml", f"/product/{sku}", "/search?q=top")
    ]
    assert all("ground_truth" not in page and "text_noise" not in page for page in pages)


def test_account_page_exists_and_requests_are_recorded(demo_server: DemoStoreServer):
    assert get(demo_server.base_url + "/account/")[0] == 200
    assert "/account/" in demo_server.requested_paths()
