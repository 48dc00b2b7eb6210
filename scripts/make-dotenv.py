#!/usr/bin/env python3
"""Write the deployment's ``.env`` from ``.env.example`` with fresh secrets (standard library only).

Every empty value whose name says it is a secret (``*PASSWORD``, ``*SECRET``, ``*_KEY``) gets a new random
value: a Fernet key for ``*FERNET_KEY``, else 32 random bytes as url-safe base64 (letters, digits, ``-``,
``_``: safe inside the database and broker URLs). Everything else is copied as it is. An existing file is
never overwritten. Usage: ``python3 scripts/make-dotenv.py [--example .env.example] [--output .env]``.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|_KEY)$")


def secret_for(name: str) -> str:
    if name.endswith("FERNET_KEY"):
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    return secrets.token_urlsafe(32)


def render(example: str) -> tuple[str, list[str]]:
    """The .env text and the names that got a generated value."""
    lines, generated = [], []
    for line in example.splitlines():
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=\s*", line)
        if match and SECRET_NAME.search(match.group(1)):
            name = match.group(1)
            line = f"{name}={secret_for(name)}"
            generated.append(name)
        lines.append(line)
    return "\n".join(lines) + "\n", generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, default=ROOT / ".env.example")
    parser.add_argument("--output", type=Path, default=ROOT / ".env")
    args = parser.parse_args(argv)
    if args.output.exists():
        print(f"{args.output} exists; not overwriting it (delete it first to start over)", file=sys.stderr)
        return 1
    text, generated = render(args.example.read_text())
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    print(f"wrote {args.output} (mode 600) with new values for: {', '.join(generated) or 'nothing'}")
    admin = dict(re.findall(r"^(AIRFLOW_ADMIN_(?:USER|PASSWORD))=(.*)$", text, re.M))
    if admin:
        print(f"Airflow UI login: {admin.get('AIRFLOW_ADMIN_USER')} / the AIRFLOW_ADMIN_PASSWORD in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
