"""``python -m fashionnet_tools.demo_store --site DIR --port N [--products N]``: build (if missing) and serve."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from fashionnet_tools.demo_store.server import DemoStoreServer
from fashionnet_tools.demo_store.site import build_site, site_exists
from pipeline.settings import get_settings

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the FashionNet demo store on 127.0.0.1.")
    parser.add_argument("--site", type=Path, required=True, help="site folder (built here when missing)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--products", type=int, default=240, help="products when building a new site")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # the lines as printed before
    if not site_exists(args.site):
        logger.info("building %d products into %s", args.products, args.site)
        build_site(args.site, n_products=args.products, seed=args.seed, settings=get_settings())
    # Ctrl-C (SIGINT) stops the store even when it inherited SIGINT ignored (a shell's background job, a
    # parent that ignores it): Python keeps an inherited SIG_IGN, and the store would then never stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = DemoStoreServer(args.site, host=args.host, port=args.port).start()
    logger.info("demo store at %s (Ctrl-C stops)", server.base_url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
