"""scrapers.network's host policy and the crawl child's environment allow-list (fast, no crawl)."""

from __future__ import annotations

import ipaddress

import pytest
from twisted.internet.defer import succeed

from pipeline.settings import get_settings, load_settings
from scrapers import network
from scrapers.crawl import crawl_env
from scrapers.network import GuardedResolver, RefusedAddressError, is_public, parse_ip, refusal
from scrapers.settings import fashionnet_settings

DEMO = {"base_url": "http://127.0.0.1:8765", "allowed_hosts": []}
SHOP = {
    "base_url": "https://www.shop.example",
    "allowed_hosts": ["cdn.shop.example", "img.example:8443", "10.1.2.3:9000"],
}


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://127.0.0.1:8765/product/1", None),
        ("http://127.0.0.1:8766/product/1", "off_site"),  # another local service
        ("http://localhost:8765/product/1", "off_site"),  # not the configured host (and resolves to loopback)
        ("http://169.254.169.254/latest/meta-data/", "off_site"),
        ("file:///etc/passwd", "scheme"),
        ("ftp://127.0.0.1:8765/x", "scheme"),
        ("data:text/html,<p>x</p>", "scheme"),
    ],
)
def test_the_demo_store_may_fetch_its_own_host_and_port_only(url: str, reason: str | None):
    found = refusal(DEMO, url)
    assert (found and found[0]) == reason


@pytest.mark.parametrize(
    "url, reason",
    [
        ("https://shop.example/p/1", None),
        ("https://www.shop.example/p/1", None),
        ("https://cdn.shop.example/i.jpg", None),
        ("http://cdn.shop.example/i.jpg", None),  # any scheme's default port
        ("https://cdn.shop.example:8443/i.jpg", "off_site"),
        ("https://img.example:8443/i.jpg", None),
        ("https://img.example/i.jpg", "off_site"),
        ("http://10.1.2.3:9000/i.jpg", None),  # configured on that private address and port
        ("http://10.1.2.3:9001/i.jpg", "off_site"),
        ("https://evil.example/p/1", "off_site"),
        ("http://[fe80::1]/", "off_site"),
        ("http://shop.example:99999/", "off_site"),  # not a valid port
    ],
)
def test_a_shop_may_fetch_its_site_and_allowed_hosts(url: str, reason: str | None):
    found = refusal(SHOP, url)
    assert (found and found[0]) == reason


def test_an_allowed_host_given_as_an_internal_address_needs_its_exact_port():
    entry = {"base_url": "https://shop.example", "allowed_hosts": ["169.254.169.254", "[::1]:8080"]}
    assert refusal(entry, "http://169.254.169.254/x") is None  # the scheme's default port, as configured
    assert refusal(entry, "http://[::1]:8080/x") is None
    assert refusal(entry, "http://[::1]:8081/x")[0] == "off_site"
    # Only a literal address is "configured on such an address": a shop on a name keeps no exception.
    assert network.configured_addresses({"base_url": "http://shop.internal:8080"}) == set()


@pytest.mark.parametrize(
    "text, public",
    [
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("10.0.0.1", False),
        ("172.16.0.1", False),
        ("172.31.255.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("100.64.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fd12::1", False),
        ("::", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("93.184.215.14", True),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
        ("172.32.0.1", True),
    ],
)
def test_public_addresses(text: str, public: bool):
    address = parse_ip(text)
    assert isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)) and is_public(address) == public


def resolve_with(monkeypatch: pytest.MonkeyPatch, address: str, name: str) -> list:
    """GuardedResolver's answer for ``name`` when the system resolver (Scrapy's, underneath) says ``address``."""
    from scrapy.resolver import CachingThreadedResolver
    from twisted.internet import reactor

    monkeypatch.setattr(CachingThreadedResolver, "getHostByName", lambda self, n, timeout=(): succeed(address))
    outcome: list = []
    GuardedResolver(reactor, cache_size=0, timeout=1.0).getHostByName(name).addBoth(outcome.append)
    return outcome


def test_the_resolver_refuses_names_that_resolve_to_internal_addresses(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(network, "REFUSED_NAMES", set())
    assert resolve_with(monkeypatch, "93.184.215.14", "shop.example") == ["93.184.215.14"]
    for address, name in (
        ("169.254.169.254", "Rebind.Example"),
        ("127.0.0.1", "localhost"),
        ("10.0.0.5", "db.internal"),
    ):
        [refused] = resolve_with(monkeypatch, address, name)
        assert isinstance(refused.value, RefusedAddressError), (address, name)
    monkeypatch.setattr(network, "INTERNAL_NAMES", {"demo-store"})
    assert resolve_with(monkeypatch, "172.18.0.5", "demo-store") == ["172.18.0.5"]
    # IP literals are the middleware's to judge (with their port); the resolver passes them through.
    assert resolve_with(monkeypatch, "0.0.0.0", "127.0.0.1") == ["127.0.0.1"]
    assert {"rebind.example", "localhost", "db.internal"} == network.REFUSED_NAMES
    assert network.refused_by_resolver("http://REBIND.example:8080/x") and not network.refused_by_resolver(
        "http://shop.example/"
    )


def test_only_the_demo_stores_own_name_may_resolve_to_an_internal_address():
    """docker-compose's demo store is http://demo-store:8765, on the compose network."""
    none: dict[str, str] = {}
    assert network.internal_names({"kind": "demo", "base_url": "http://demo-store:8765"}, none) == {"demo-store"}
    assert network.internal_names({"kind": "demo", "base_url": "http://127.0.0.1:8765"}, none) == set()
    assert network.internal_names({"kind": "sitemap", "base_url": "http://shop.internal"}, none) == set()
    assert network.internal_names({"base_url": "http://localhost:8000"}, none) == set()  # any shop: no exception
    # Our own proxy may live on the office network; a "no" list or a SOCKS entry adds nothing.
    proxies = {"http": "http://proxy.corp:3128", "https": "proxy2.corp:3129", "no": "localhost", "ftp": "ftp.corp"}
    assert network.internal_names({"base_url": "https://shop.example"}, proxies) == {"proxy.corp", "proxy2.corp"}


def test_size_limits_come_from_the_crawl_settings():
    settings = load_settings()
    scrapy_settings = fashionnet_settings(settings)
    assert scrapy_settings["DOWNLOAD_MAXSIZE"] == settings.crawl.max_page_bytes < 1024**3
    assert scrapy_settings["FASHIONNET_MAX_IMAGE_BYTES"] == settings.crawl.max_image_bytes
    assert scrapy_settings["FASHIONNET_MAX_IMAGE_PIXELS"] == settings.curation.max_image_pixels


SECRETS = {
    "AIRFLOW__CORE__FERNET_KEY": "fernet-secret-1",
    "AIRFLOW__API_AUTH__JWT_SECRET": "jwt-secret-2",
    "AIRFLOW_CONN_FASHIONNET_DB": "postgresql://airflow:pw3@db/airflow",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://airflow:pw4@db/airflow",
    "DATABASE_URL": "postgresql://u:pw5@db/x",
    "REDIS_PASSWORD": "pw6",
    "POSTGRES_PASSWORD": "pw7",
    "AWS_PROFILE": "admin",
    "AWS_SHARED_CREDENTIALS_FILE": "/root/.aws/credentials",
}
NEEDED = {
    "PATH": "/usr/bin",
    "HOME": "/home/x",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "UTC",
    "FASHIONNET_STORE": "s3://bucket",
    "AWS_ACCESS_KEY_ID": "k",
    "AWS_SECRET_ACCESS_KEY": "s",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "HTTPS_PROXY": "http://proxy:3128",
}


def test_the_crawl_child_gets_an_allow_list_of_the_environment():
    env = crawl_env({**SECRETS, **NEEDED, "PYTHONPATH": "/opt/lib"})
    assert not set(SECRETS) & set(env)
    assert {name: env[name] for name in NEEDED} == NEEDED
    assert env["SCRAPY_SETTINGS_MODULE"] == "scrapers.settings" and env["PYTHONPATH"].endswith("/opt/lib")


def test_settings_still_load_with_the_new_crawl_keys():
    get_settings.cache_clear()
    assert get_settings().crawl.timeout_grace_s > 0
