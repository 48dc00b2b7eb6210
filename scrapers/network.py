"""Where a crawl may connect: the retailer's own hosts, and never an internal address (server-side request forgery).

A shop's pages are hostile input: a product image, a redirect, a sitemap entry or a "next" link can point
anywhere, at another service on the crawl machine, the cloud metadata service (169.254.169.254) or the
office network. Two checks, both per request:

- ``HostPolicyMiddleware`` (a downloader middleware, first after the engine) refuses a request whose URL
  is not ``http(s)`` or whose host is not one of the retailer's allowed sites (``base_url``'s host and
  port plus ``allowed_hosts``, :func:`pipeline.settings.url_allowed`; for "any shop" the start URL's
  site), and a request to a literal IP address that is not public unless that exact address and port is
  one the retailer is configured on (the demo store on 127.0.0.1:8765 may fetch 127.0.0.1:8765 only).
  Redirect targets, image and robots.txt requests pass through it like any page.
- ``GuardedResolver`` (``DNS_RESOLVER``) checks the address a host *name* resolves to, at connect time,
  so a name that resolves (or rebinds) to a loopback, link-local, private, unspecified, reserved or
  multicast address is refused even when the name is allowed. The one exempt name is the base URL host
  of the bundled demo store (``kind: demo``), which runs inside our own deployment (``demo-store`` in
  docker-compose resolves to the compose network); any other shop on an internal address is configured
  by that address. The host of a configured HTTP(S) proxy (``HTTP_PROXY`` / ``HTTPS_PROXY``) is exempt
  too, as it is ours; through a proxy, the proxy resolves the shop's names, so only the URL check applies.

Refusals are never silent: each is counted under ``fashionnet/refused/<reason>`` (``scheme``,
``off_site``, ``private_address``), which the crawl summary reports as ``refused_requests``.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies

from scrapy import Request, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest
from scrapy.resolver import CachingThreadedResolver
from twisted.internet.base import ReactorBase
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import DNSLookupError

from pipeline.settings import DEFAULT_PORTS, allowed_sites, url_allowed

logger = logging.getLogger(__name__)

REFUSED_STAT = "fashionnet/refused/"
ALLOWED_SCHEMES = frozenset(DEFAULT_PORTS)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Host names GuardedResolver refused in this process (one crawl per process). Twisted reports a refused
#: lookup as "no results", so this is how the middlewares tell a refusal from a failed lookup.
REFUSED_NAMES: set[str] = set()
#: Host names that may resolve to an internal address in this process's crawl (:func:`internal_names`), set
#: when the spider opens: Scrapy builds the resolver before the crawler, so it cannot ask the spider.
INTERNAL_NAMES: set[str] = set()


class RefusedRequest(IgnoreRequest):
    """A request the host policy does not allow; ``reason`` is its stat name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class RefusedAddressError(DNSLookupError):
    """A host name resolved to an address the crawl must not connect to (a DNSLookupError, so that the
    download handlers report it as a failed lookup; it is never retried, see scrapers.middlewares)."""

    def __init__(self, name: str, address: str) -> None:
        super().__init__(f"{name} resolves to {address}, which is not a public address")
        self.name, self.address = name, address


def parse_ip(text: str) -> IPAddress | None:
    """The address of an IP literal (brackets of an IPv6 URL host allowed); None for a host name."""
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address


def is_public(address: IPAddress) -> bool:
    """Whether an address is on the public internet: not loopback, link-local (metadata services), private,
    shared (CGNAT), unspecified, reserved or multicast."""
    return address.is_global and not address.is_multicast


def retailer_entry(spider: Any) -> dict[str, Any]:
    """The retailer entry a spider crawls under: its settings entry, or for "any shop" its start URL's site."""
    entry = dict(getattr(spider, "retailer_config", None) or {})
    if not entry.get("base_url"):
        entry = {"base_url": getattr(spider, "base_url", "") or "", "allowed_hosts": []}
    return entry


def configured_addresses(entry: dict[str, Any]) -> set[tuple[IPAddress, int | None]]:
    """The non-public (address, port) pairs a retailer is itself configured on (port None: the scheme's)."""
    pairs: set[tuple[IPAddress, int | None]] = set()
    for host, port in allowed_sites(entry):
        address = parse_ip(host)
        if address is not None and not is_public(address):
            pairs.add((address, port))
    return pairs


def refusal(entry: dict[str, Any], url: str) -> tuple[str, str] | None:
    """(reason, message) when ``url`` may not be fetched for the retailer ``entry``; None when it may."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return "off_site", f"{url!r} is not a valid URL: {error}"
    if parts.scheme not in ALLOWED_SCHEMES:
        return "scheme", f"{url[:200]!r} is not an http(s) URL"
    if not entry.get("base_url") or not url_allowed(entry, url):
        return "off_site", f"{url} is not on the retailer's site or allowed hosts"
    address = parse_ip(parts.hostname or "")
    if address is not None and not is_public(address):
        effective = port or DEFAULT_PORTS[parts.scheme]
        configured = configured_addresses(entry)
        default = effective == DEFAULT_PORTS[parts.scheme]
        if (address, effective) not in configured and not (default and (address, None) in configured):
            return "private_address", f"{url} is on {address}, which is not a public address"
    return None


def count_refusal(crawler: Crawler, reason: str, message: str) -> None:
    assert crawler.stats is not None
    crawler.stats.inc_value(REFUSED_STAT + reason)
    logger.warning("refused %s", message)


class HostPolicyMiddleware:
    """Refuses requests off the retailer's hosts or to internal addresses (see the module docstring)."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        crawler.signals.connect(self._spider_opened, signal=signals.spider_opened)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> HostPolicyMiddleware:
        return cls(crawler)

    def _spider_opened(self, spider: Any) -> None:
        INTERNAL_NAMES.clear()
        INTERNAL_NAMES.update(internal_names(retailer_entry(spider)))

    def process_request(self, request: Request) -> None:
        refused = refusal(retailer_entry(self.crawler.spider), request.url)
        if refused is not None:
            count_refusal(self.crawler, *refused)
            raise RefusedRequest(*refused)

    def process_exception(self, request: Request, exception: Exception) -> None:
        """A connection the resolver refused is a refusal (counted once, here), not a site failure."""
        if refused_by_resolver(request.url):
            message = f"{request.url}: its host name resolves to a non-public address"
            count_refusal(self.crawler, "private_address", message)
            raise RefusedRequest("private_address", message) from None


def refused_by_resolver(url: str) -> bool:
    """Whether the host name of ``url`` was refused by GuardedResolver in this crawl."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return host is not None and host.lower() in REFUSED_NAMES


def internal_names(entry: dict[str, Any], proxies: dict[str, str] | None = None) -> set[str]:
    """Host names that may resolve to an internal address: the demo store's own and the configured proxies'
    (see the module docstring); ``proxies`` defaults to the environment's (urllib's getproxies)."""
    urls = [
        str(url) for scheme, url in (getproxies() if proxies is None else proxies).items() if scheme in ALLOWED_SCHEMES
    ]
    if entry.get("kind") == "demo" and entry.get("base_url"):
        urls.append(str(entry["base_url"]))
    names = set()
    for url in urls:
        try:
            host = (urlsplit(url if "//" in url else "//" + url).hostname or "").lower()
        except ValueError:
            continue
        if host and parse_ip(host) is None:
            names.add(host)
    return names


class GuardedResolver(CachingThreadedResolver):
    """Scrapy's caching resolver, refusing names that resolve to a non-public address (cached or not)."""

    def __init__(self, reactor: ReactorBase, cache_size: int, timeout: float) -> None:
        super().__init__(reactor, cache_size, timeout)

    def getHostByName(self, name: str, timeout: Any = ()) -> Deferred[str]:  # noqa: N802 - Twisted's name
        if parse_ip(name) is not None:
            return succeed(name)  # an IP literal: HostPolicyMiddleware has judged it with its port
        return super().getHostByName(name, timeout).addCallback(self._check, name)

    @staticmethod
    def _check(address: str, name: str) -> str:
        parsed = parse_ip(address)
        if parsed is not None and not is_public(parsed) and name.lower() in INTERNAL_NAMES:
            return address
        if parsed is None or not is_public(parsed):
            REFUSED_NAMES.add(name.lower())
            logger.warning("refused to connect to %s: it resolves to %s, not a public address", name, address)
            raise RefusedAddressError(name, address)
        return address
