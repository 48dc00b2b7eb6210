"""``python -m pipeline.review.web``: manage reviewers and serve the review page.

    python -m pipeline.review.web add-reviewer alice              # asks for the password twice
    echo "$PW" | python -m pipeline.review.web add-reviewer alice --password-stdin [--replace]
    python -m pipeline.review.web remove-reviewer alice
    python -m pipeline.review.web list-reviewers
    python -m pipeline.review.web serve --host 127.0.0.1 --port 8080

``--store URI`` (any subcommand) overrides the configured store (``FASHIONNET_STORE``).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys

from pipeline.review.web import auth
from pipeline.store_layout import REVIEWERS_KEY


def _store(uri: str | None):
    from pipeline.storage import open_store

    return open_store(uri)


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("Password: ")
    if getpass.getpass("Repeat the password: ") != password:
        raise ValueError("the passwords differ")
    return password


DESCRIPTION = "Manage reviewers and serve the review page."


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The CLI's options and subcommands on ``parser`` (this module's own, or ``fashionnet review``'s)."""
    parser.add_argument("--store", help="store URI (default: FASHIONNET_STORE or config/settings.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add-reviewer", help="add a reviewer (or, with --replace, set a new password)")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first stdin line")
    add.add_argument("--replace", action="store_true", help="set a new password for an existing reviewer")
    remove = commands.add_parser("remove-reviewer", help="remove a reviewer (ends their sessions)")
    remove.add_argument("name")
    listing = commands.add_parser("list-reviewers", help="list reviewer names")
    serve = commands.add_parser(
        "serve",
        help="serve the review page",
        description="Serve the reviewers' keyboard-driven review page, with its own login, until Ctrl-C "
        "(docs/review.md).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.add_argument("--root-path", default="", help="the URL prefix a reverse proxy serves the app under")
    for sub in (add, remove, listing, serve):
        sub.add_argument("--store", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.review.web", description=DESCRIPTION)
    return add_arguments(parser).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the subcommand of ``args`` (:func:`add_arguments`); 0, or 2 with the reason on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "add-reviewer":
            auth.validate_name(args.name)
            auth.add_reviewer(_store(args.store), args.name, read_password(args.password_stdin), replace=args.replace)
            print(f"reviewer {args.name} saved in {REVIEWERS_KEY}")
        elif args.command == "remove-reviewer":
            auth.remove_reviewer(_store(args.store), args.name)
            print(f"reviewer {args.name} removed")
        elif args.command == "list-reviewers":
            print("\n".join(sorted(auth.read_reviewers(_store(args.store)))))
        else:
            import uvicorn

            from pipeline.review.web import create_app

            app = create_app(lambda: _store(args.store))
            uvicorn.run(app, host=args.host, port=args.port, root_path=args.root_path, log_level="info")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
