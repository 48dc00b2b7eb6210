"""``fashionnet``: one command for what FashionNet does from a terminal.

    fashionnet demo                 the whole pipeline on the embedded default (``make demo``)
    fashionnet crawl ...            crawl one shop of your own, from its sitemap or a list of product URLs
    fashionnet review serve         the reviewers' web page (and ``add-reviewer``, ``remove-reviewer``, ...)
    fashionnet recommend USER       one user's recommendations from the published networks and repository
    fashionnet airflow              Airflow standalone with the project's DAGs (``make airflow``)

Every subcommand delegates to the code that did the job before this command existed, with the same
options: :mod:`fashionnet_tools.demo`, :func:`scrapers.crawl.run_crawl` (``scrapy crawl product`` as a
subprocess, as the DAGs run it), :mod:`pipeline.review.web.__main__`,
:func:`pipeline.recommend.recommendations.recommend_for_user` (what the ``fashionnet_recommend`` DAG does for one user,
without Airflow) and :mod:`fashionnet_tools.airflow_local`. ``fashionnet COMMAND --help`` lists each one's
options.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Any

from fashionnet_tools import airflow_local, console, demo
from pipeline.review.web import __main__ as review_cli

logger = logging.getLogger(__name__)

SCORES = ("matches", "weighted", "embedding", "hybrid")


def use_settings(store: str | None, profile: str | None) -> None:
    """``--store``/``--profile`` as the environment the settings (and any subprocess) read, before the
    settings are first loaded: what ``FASHIONNET_STORE``/``FASHIONNET_PROFILE`` would do."""
    from pipeline.settings import get_settings

    if store:
        os.environ["FASHIONNET_STORE"] = store
    if profile is not None:
        os.environ["FASHIONNET_PROFILE"] = profile
    get_settings.cache_clear()


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", help="store URI (default: FASHIONNET_STORE or config/settings.yaml: var/store/)")
    parser.add_argument(
        "--profile",
        default=None,
        help="settings profile: config/profiles/<name>.yaml or a YAML file's path (default: FASHIONNET_PROFILE)",
    )


# -- the handlers: each hands its parsed options to the code that does the work -------------------------
def run_demo(args: argparse.Namespace) -> int:
    return demo.run(args)


def run_airflow(args: argparse.Namespace) -> int:
    return airflow_local.run(args)


def run_review(args: argparse.Namespace) -> int:
    return review_cli.run(args)


def crawl_spider_args(args: argparse.Namespace) -> dict[str, str]:
    """The product spider's ``-a`` arguments (README "Crawl your own shop") from the options. A URL file is
    made absolute: the crawl runs with the repository root as its working directory."""
    spider_args: dict[str, str] = {}
    if args.sitemap_url:
        spider_args["sitemap_url"] = args.sitemap_url
    elif args.listing_url:
        spider_args["listing_url"] = args.listing_url
    elif args.urls:
        spider_args["urls"] = args.urls
    else:
        spider_args["urls_file"] = str(Path(args.urls_file).resolve())
    if args.url_pattern:
        spider_args["url_pattern"] = args.url_pattern
    if not args.images:
        spider_args["images"] = "false"
    return spider_args


def run_crawl(args: argparse.Namespace) -> int:
    from scrapers import crawl

    if args.url_pattern and not args.sitemap_url:
        logger.error("error: --url-pattern filters a sitemap's entries: it needs --sitemap-url")
        return 2
    use_settings(args.store, args.profile)
    crawl_id = args.crawl_id or f"{args.retailer}-{dt.datetime.now(dt.UTC):%Y%m%d}"
    try:
        summary = crawl.run_crawl(
            "product",
            crawl_id,
            args.retailer,
            timeout_s=args.timeout_s,
            incremental=args.incremental,
            spider_args=crawl_spider_args(args),
        )
    except ValueError as error:
        logger.error("error: %s", error)
        return 2
    except crawl.CrawlError as error:
        logger.error("error: %s", error)
        return 1
    from pipeline.storage import open_store

    print(
        f"crawl {crawl_id} of {args.retailer}: {summary.get('products', 0)} products from "
        f"{summary.get('pages', 0)} pages ({summary.get('finish_reason')}); rows in "
        f"{open_store().url(f'crawls/{crawl_id}/')}"
    )
    return 0


def recommend_params(args: argparse.Namespace) -> dict[str, Any]:
    """The ``fashionnet_recommend`` DAG's Params from the options (None and [] as the DAG's empty fields)."""
    return {
        "user_id": args.user_id,
        "image_keys": args.image_keys,
        "k": args.k,
        "score": args.score,
        "mmr_lambda": args.mmr_lambda,
        "retailers": args.retailers,
        "categories": args.categories,
        "price_min": args.price_min,
        "price_max": args.price_max,
    }


def run_recommend(args: argparse.Namespace) -> int:
    use_settings(args.store, args.profile)
    from pipeline.recommend import recommendations as recommend
    from pipeline.recommend.options import InvalidRequest, options_from_params
    from pipeline.storage import open_store

    params = recommend_params(args)
    run_date = args.date or f"{dt.datetime.now(dt.UTC):%Y-%m-%d}"
    try:
        options = options_from_params(params)
        request = recommend.UserRequest(params["user_id"], params["image_keys"] or None, run_date, options, args.run_id)
        summary = recommend.recommend_for_user(open_store(), request)
    except InvalidRequest as error:
        logger.error("error: %s", error)
        return 2
    store = open_store()
    print(f"{summary['n_recommended']} recommendations for {summary['user_id']} ({summary['score_kind']}):")
    for row in summary["top_k"]:
        price = "" if row.get("price") is None else f"  {row['price']:.2f} {row.get('currency') or ''}"
        print(
            f"  {row.get('rank')!s:>3}  {row.get('score') or 0:.3f}  {row.get('title')}{price}  {row.get('product_url')}"
        )
    for name, key in summary["keys"].items():
        print(f"{name:16s} {store.local_path(key) or store.url(key)}")
    return 0


# -- the parser --------------------------------------------------------------------------------------
def add_crawl_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retailer", required=True, help="the shop's name: any name, it keys the rows")
    parser.add_argument(
        "--crawl-id", help="names the crawl: letters, digits, '.', '_', '-' (default: <retailer>-<YYYYMMDD>, UTC)"
    )
    entry = parser.add_mutually_exclusive_group(required=True)
    entry.add_argument("--sitemap-url", help="the shop's sitemap (a sitemap index is followed)")
    entry.add_argument("--urls", help="product URLs, comma-separated")
    entry.add_argument("--urls-file", help="a file of product URLs, one per line (# comments)")
    entry.add_argument("--listing-url", help="a category page: its product and pagination links are followed")
    parser.add_argument("--url-pattern", help="with --sitemap-url: only sitemap entries matching this regex")
    parser.add_argument(
        "--no-images", dest="images", action="store_false", help="record the rows without downloading images"
    )
    parser.add_argument(
        "--incremental",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="re-request an unchanged product conditionally, or not at all (default: the crawl.incremental setting)",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=None,
        help="the crawl's deadline: there it keeps what it has and fails (default: the crawl.timeout_s "
        "setting, 600 s; raise it for a big shop)",
    )
    add_settings_arguments(parser)


def add_recommend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user_id", help="the user: photos under users/<user_id>/ in the store (demo: demo-user)")
    parser.add_argument(
        "--image-key",
        dest="image_keys",
        action="append",
        default=[],
        help="a store key users/<user_id>/<image> to profile (repeat it; default: every photo of the user)",
    )
    parser.add_argument("--k", type=int, help="how many items, 1 to 100 (default: the recommend.k setting, 10)")
    parser.add_argument("--score", choices=SCORES, help="how items are ranked (default: recommend.score, hybrid)")
    parser.add_argument(
        "--mmr-lambda", type=float, help="0 to 1: 1 = relevance only, lower = more diverse (default: 0.7)"
    )
    parser.add_argument(
        "--retailer", dest="retailers", action="append", default=[], help="only this retailer's items (repeat it)"
    )
    parser.add_argument(
        "--category", dest="categories", action="append", default=[], help="only this category's items (repeat it)"
    )
    parser.add_argument("--price-min", type=float, help="only items at this price or more")
    parser.add_argument("--price-max", type=float, help="only items at this price or less")
    parser.add_argument("--date", help="the run's date, YYYY-MM-DD, in the output keys (default: today, UTC)")
    parser.add_argument("--run-id", help="the run's id in the output keys (default: adhoc__<UTC time>)")
    add_settings_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashionnet",
        description="FashionNet: fashion attribute networks and recommendations as Apache Airflow 3 DAGs.",
        epilog="fashionnet COMMAND --help: the command's options. README.md: what each one does in full.",
    )
    commands = parser.add_subparsers(dest="tool", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str, handler: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=description)
        sub.set_defaults(handler=handler)
        return sub

    demo.add_arguments(
        command(
            "demo",
            "run the whole pipeline on the embedded default (make demo)",
            f"{demo.DESCRIPTION} Starts the bundled demo store on 127.0.0.1, runs the four DAGs in order with "
            "dag.test() and prints the networks' accuracy, the top recommendations and where every output is.",
            run_demo,
        )
    )
    add_crawl_arguments(
        command(
            "crawl",
            "crawl a shop of your own (its sitemap, product URLs or a listing page)",
            "Crawl one shop with the product spider (README: Crawl your own shop): product structured data "
            "or the visible page, into crawls/<crawl_id>/ and images/full/ in the store. Obeys robots.txt "
            "and the crawl: politeness settings; fetches only the shop's own site.",
            run_crawl,
        )
    )
    review_cli.add_arguments(
        command(
            "review",
            "the review page: serve it, add or remove reviewers",
            f"{review_cli.DESCRIPTION} (docs/review.md)",
            run_review,
        )
    )
    add_recommend_arguments(
        command(
            "recommend",
            "one user's recommendations from the published networks and the repository",
            "Recommend for one user, as a manual run of the fashionnet_recommend DAG does, without Airflow: "
            "the user's photos -> style profile -> scored, filtered, diversified repository items; writes the "
            "recommendations, the profile, the HTML page and the shown-items list to the store.",
            run_recommend,
        )
    )
    airflow_local.add_arguments(
        command(
            "airflow",
            "Airflow standalone with the project's DAGs and the review page, until Ctrl-C (make airflow)",
            f"{airflow_local.DESCRIPTION} On the embedded default it also serves the demo shop and puts the "
            "demo user's photos in the store.",
            run_airflow,
        )
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.configure_logging()  # progress and errors as bare lines; a command's answer is print()ed
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
