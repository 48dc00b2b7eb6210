"""A crawl over a shop where about a third of the responses are errors or garbage: every good product is
kept (with its image, byte for byte) and every product that is not is counted once, by reason."""

from __future__ import annotations

import io
import random
import time

import numpy as np
import pytest
from PIL import Image

from pipeline.settings import get_settings
from pipeline.storage import ObjectStore
from tests.scrapers.test_politeness import TinyShop, crawl_listing, product_page

HTML = {"Content-Type": "text/html"}
JPEG_TYPE = {"Content-Type": "image/jpeg"}
GOOD = [f"good-{i:02d}" for i in range(1, 25)] + ["flaky-page", "flaky-image"]  # the flaky ones fail once, then work
# Products that cannot be kept, by where they fail: the product page, robots.txt, or the product's image.
BAD_PAGES = [
    "e404",
    "e500",
    "slow",
    "dropped",
    "cut-page",
    "loop",
    "chain",
    "bad-json-ld",
    "not-a-product",
    "half-html",
    "garbage-page",
]
BAD_IMAGES = [
    "html-image",
    "empty-image",
    "truncated-image",
    "tiny-image",
    "corrupt-image",
    "garbage-image",
    "image-404",
    "image-dropped",
]
LISTED = GOOD + BAD_PAGES + ["../private/p1"] + BAD_IMAGES


class Dropped(Exception):
    """Raised by a route: the server closes the connection without answering."""


def html(body: str, head: str = "") -> bytes:
    return f"<html><head>{head}</head><body>{body}</body></html>".encode()


def photo(seed: int, size: int = 96) -> bytes:
    """A JPEG of noise: big enough that a cut lands inside its compressed data, unique per seed."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def corrupt(jpeg: bytes) -> bytes:
    """Valid headers, then a frame marker in the middle of the scan data: 'broken data stream'."""
    scan = jpeg.index(b"\xff\xda") + 2000
    return jpeg[:scan] + b"\xff\xc0" + b"\0" * 40 + jpeg[scan:]


def garbage(n: int, seed: int) -> bytes:
    return bytes(random.Random(seed).randrange(256) for _ in range(n))


def sleepy(seconds: float, sku: str):
    def reply(n: int):
        time.sleep(seconds)
        return 200, HTML, product_page(sku)

    return reply


def drop_connection(n: int):
    raise Dropped


def flaky(first: tuple, then: tuple):
    return lambda n: first if n == 1 else then


@pytest.fixture
def store(file_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    monkeypatch.setenv("FASHIONNET_STORE", file_store.uri)
    get_settings.cache_clear()
    return file_store


def test_bad_input_is_counted_and_good_products_are_kept(store: ObjectStore):
    images = {sku: photo(i) for i, sku in enumerate(GOOD + BAD_PAGES + BAD_IMAGES)}
    with TinyShop(GOOD + BAD_PAGES + BAD_IMAGES) as shop:
        shop.httpd.handle_error = lambda request, address: None  # a Dropped route: close quietly, no answer
        routes = shop.routes
        for sku, data in images.items():
            routes[f"/img/{sku}.jpg"] = lambda n, data=data: (200, JPEG_TYPE, data)
        routes["/list"] = lambda n: shop.listing(LISTED)
        bad = {  # path -> reply: every response these give is an error or garbage
            # product pages
            "/product/e404": lambda n: (404, HTML, html("gone")),
            "/product/e500": lambda n: (500, HTML, html("oops")),
            "/product/slow": sleepy(2.5, "slow"),  # past the 1 s download timeout
            "/product/dropped": drop_connection,  # connection closed, no response
            "/product/cut-page": lambda n: (
                200,
                {**HTML, "Content-Length": "4000", "Connection": "close"},
                product_page("cut-page")[:150],
            ),  # the body stops short of its length
            "/product/loop": lambda n: (302, {"Location": "/product/loop-b"}, b""),
            "/product/loop-b": lambda n: (301, {"Location": "/product/loop"}, b""),
            "/product/chain": lambda n: (302, {"Location": f"/product/chain?hop={n}"}, b""),
            "/product/bad-json-ld": lambda n: (
                200,
                HTML,
                html("", '<script type="application/ld+json">{"@type": "Product", "name": </script>'),
            ),
            "/product/not-a-product": lambda n: (200, HTML, html("<h1>About us</h1>")),
            "/product/half-html": lambda n: (200, HTML, product_page("half-html")[:90]),  # cut inside the JSON-LD
            "/product/garbage-page": lambda n: (200, HTML, garbage(3000, 1)),
            # images of products whose page is fine
            "/img/html-image.jpg": lambda n: (200, HTML, html("<h1>Error 500</h1>")),
            "/img/empty-image.jpg": lambda n: (200, JPEG_TYPE, b""),
            "/img/truncated-image.jpg": lambda n: (200, JPEG_TYPE, images["truncated-image"][:5000]),
            "/img/tiny-image.jpg": lambda n: (200, JPEG_TYPE, photo(99, size=16)),
            "/img/corrupt-image.jpg": lambda n: (200, JPEG_TYPE, corrupt(images["corrupt-image"])),
            "/img/garbage-image.jpg": lambda n: (200, JPEG_TYPE, garbage(5000, 2)),
            "/img/image-404.jpg": lambda n: (404, HTML, html("no such image")),
            "/img/image-dropped.jpg": drop_connection,
        }
        routes.update(bad)
        routes["/product/flaky-page"] = flaky((503, HTML, html("busy")), (200, HTML, product_page("flaky-page")))
        good_image = routes["/img/flaky-image.jpg"]
        routes["/img/flaky-image.jpg"] = flaky((500, HTML, html("oops")), good_image(1))
        routes["/private/p1"] = lambda n: (200, HTML, product_page("private"))
        # A good product whose stated price is negative: kept without a price, the refusal counted.
        routes["/product/good-24"] = lambda n: (200, HTML, product_page("good-24").replace(b'"12.50"', b'"-49.99"'))
        summary = crawl_listing(
            shop,
            "bad-1",
            DOWNLOAD_TIMEOUT="1.0",
            RETRY_TIMES="1",
            FASHIONNET_RETRY_BACKOFF_BASE="0.05",
            REDIRECT_MAX_TIMES="4",
        )
        hits = [path for path, _, _ in shop.hits]
        counts = dict(shop.counts)

    # About a third of all responses were errors or garbage (the flaky routes' first answers included).
    n_bad = sum(path in bad for path in hits) + 2
    assert 0.3 <= n_bad / len(hits) <= 0.4, f"{n_bad} bad of {len(hits)} responses"

    # Every good product is kept, with its own image byte for byte; nothing else is.
    products = {row["sku"]: row for row in store.read_parquet("crawls/bad-1/products.parquet").to_pylist()}
    assert set(products) == set(GOOD)
    for sku, row in products.items():
        assert store.get_bytes(row["image_key"]) == images[sku], sku
    assert summary["products"] == summary["images"] == len(GOOD)
    assert products["good-24"]["price"] is None and products["good-01"]["price"] == 12.5
    assert summary["refused_fields"] == {"price": 1}
    assert set(store.list("images/full/")) == {row["image_key"] for row in products.values()}  # no bad image stored

    # Every other product is counted once, by reason.
    assert summary["drops"] == {
        "image_download_failed": 1,
        "image_empty": 1,
        "image_http_error": 1,
        "image_invalid": 3,
        "image_too_small": 1,
        "image_truncated": 1,
    }
    assert summary["http_errors"] == {"404": 1, "500": 1}
    # Lost connections: the page closed without an answer, the page cut short, the image closed without one.
    assert summary["failed_requests"] == {"connection_lost": 3, "redirect_loop": 2, "timeout": 1}
    assert summary["pages_without_product"] == 4  # malformed JSON-LD, no product, cut inside the JSON-LD, garbage
    assert summary["robots_forbidden"] == 1 and "/private/p1" not in counts
    image_transfer_failures = 1  # image-dropped: in failed_requests and, as its product's drop, in drops
    accounted = (
        len(products)
        + sum(summary["drops"].values())
        + sum(summary["http_errors"].values())
        + sum(summary["failed_requests"].values())
        - image_transfer_failures
        + summary["pages_without_product"]
        + summary["robots_forbidden"]
    )
    assert accounted == len(LISTED)

    # 5xx, timeouts and lost connections were retried once (and the flaky ones recovered); 4xx never.
    assert summary["retries_by_reason"] == {"connection_lost": 3, "http_500": 2, "http_503": 1, "timeout": 1}
    assert [
        counts[p]
        for p in ("/product/e500", "/product/slow", "/product/cut-page", "/product/e404", "/img/image-404.jpg")
    ] == [2, 2, 2, 1, 1]
    # (Twisted itself also retries a request once when a reused keep-alive connection closes unanswered.)
    assert counts["/product/dropped"] >= 2 and counts["/img/image-dropped.jpg"] >= 2
    assert counts["/product/flaky-page"] == counts["/img/flaky-image.jpg"] == 2
    assert store.read_json("crawls/bad-1/summary.json") == summary


def test_lost_connections_are_named_however_scrapy_wraps_them():
    """Scrapy >= 2.14 hands middlewares its own DownloadFailedError around Twisted's ResponseNeverReceived /
    ResponseFailed; the reason must still say what happened (it said "download_failed_error")."""
    from scrapy.exceptions import DownloadFailedError, DownloadTimeoutError, ResponseDataLossError
    from twisted.internet.error import ConnectionDone, ConnectionLost
    from twisted.python.failure import Failure
    from twisted.web.client import ResponseFailed, ResponseNeverReceived

    from scrapers.middlewares import failure_reason

    def wrapped(cause: Exception) -> DownloadFailedError:
        try:
            try:
                raise cause
            except Exception as error:
                raise DownloadFailedError(str(error)) from error
        except DownloadFailedError as error:
            return error

    assert failure_reason(wrapped(ResponseNeverReceived([Failure(ConnectionDone())]))) == "connection_lost"
    assert failure_reason(wrapped(ResponseFailed([Failure(ConnectionLost())]))) == "connection_lost"
    assert failure_reason(wrapped(ResponseFailed([Failure(ValueError("bad status line"))]))) == "download_failed"
    assert failure_reason(ResponseDataLossError()) == "connection_lost"
    assert failure_reason(DownloadTimeoutError()) == "timeout" and failure_reason(KeyError()) == "key_error"


def stored_image(body: bytes) -> tuple[Image.Image, bytes]:
    """What StoreImagesPipeline stores for an image response: (decoded image, stored bytes)."""
    from scrapy.http import Request, Response
    from scrapy.utils.test import get_crawler

    from scrapers.pipelines import StoreImagesPipeline

    crawler = get_crawler(
        settings_dict={"IMAGES_STORE": "memory-unused", "IMAGES_MIN_WIDTH": 32, "IMAGES_MIN_HEIGHT": 32}
    )
    pipeline = StoreImagesPipeline.from_crawler(crawler)
    pipeline.max_image_pixels = get_settings().curation.max_image_pixels
    request = Request("http://shop.test/img/a")
    ((_, image, buffer),) = list(pipeline.get_images(Response(request.url, body=body, request=request), request, None))
    return image, buffer.getvalue()


def test_crawled_images_are_stored_as_the_shared_decoder_sees_them():
    """Upright (EXIF orientation applied), 16-bit greys scaled, CMYK as RGB; an upright RGB JPEG as served;
    a bomb refused from its header (pipeline.images)."""
    import struct
    import zlib

    from scrapy.pipelines.images import ImageException

    from scrapers.pipelines import image_failure_reason

    served = photo(1, 64)
    assert stored_image(served)[1] == served
    portrait = Image.new("RGB", (60, 120), "navy")
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    portrait.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", exif=exif.tobytes())
    image, stored = stored_image(buffer.getvalue())
    assert image.size == (60, 120) and Image.open(io.BytesIO(stored)).size == (60, 120)
    grey = (np.mgrid[0:64, 0:64][1] * 1000).astype(np.uint16)  # 0..63000 across
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "PNG")
    stored_grey = np.asarray(Image.open(io.BytesIO(stored_image(buffer.getvalue())[1])).convert("L"), dtype=int)
    assert (stored_grey >= 250).mean() < 0.1 and abs(stored_grey[:, 32].mean() - 32000 / 257) < 3
    buffer = io.BytesIO()
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(buffer, "JPEG", quality=95)  # red
    stored_cmyk = Image.open(io.BytesIO(stored_image(buffer.getvalue())[1]))
    assert stored_cmyk.mode == "RGB" and np.abs(np.asarray(stored_cmyk, dtype=int) - [255, 0, 0]).max() <= 10

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 12_000, 12_000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageException) as caught:
        stored_image(bomb)
    assert image_failure_reason(caught.value) == "image_too_many_pixels"
