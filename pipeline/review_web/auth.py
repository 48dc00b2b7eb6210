"""Reviewers, their passwords and their sessions.

``review/reviewers.json`` in the store holds every reviewer's scrypt password hash with its own random
salt (never a password). It is managed with ``python -m pipeline.review_web add-reviewer``.

A session is a cookie signed with ``FASHIONNET_REVIEW_SECRET`` (itsdangerous, timestamped). It names
the reviewer and carries a fingerprint of their password record, so changing a reviewer's password or
removing the reviewer ends their open sessions. Without the variable every process draws a random
secret: sessions then end with the process and do not work across several api-server workers.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from datetime import datetime, timezone
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from pipeline.storage import ObjectStore

log = logging.getLogger(__name__)

REVIEWERS_KEY = "review/reviewers.json"
SECRET_ENV = "FASHIONNET_REVIEW_SECRET"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MIN_PASSWORD_LENGTH = 8
# scrypt cost: about 50 ms and 16 MiB per check; stored with every record so it can be raised later.
SCRYPT_PARAMS = {"n": 2**14, "r": 8, "p": 1}
SCRYPT_DKLEN = 32
SESSION_SALT = "fashionnet-review-session"


# -- passwords -------------------------------------------------------------------------------------
def hash_password(password: str, salt: bytes | None = None) -> dict[str, Any]:
    """A password record: scrypt parameters, a random 16-byte salt and the derived key (hex)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=SCRYPT_DKLEN, maxmem=64 * 2**20, **SCRYPT_PARAMS)
    return {"algorithm": "scrypt", **SCRYPT_PARAMS, "salt": salt.hex(), "hash": digest.hex()}


def verify_password(password: str, record: dict[str, Any]) -> bool:
    if record.get("algorithm") != "scrypt":
        return False
    digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(record["salt"]), dklen=len(record["hash"]) // 2,
                            n=int(record["n"]), r=int(record["r"]), p=int(record["p"]), maxmem=64 * 2**20)
    return hmac.compare_digest(digest.hex(), record["hash"])


_DUMMY_RECORD = hash_password("not a password", salt=b"\0" * 16)


# -- the reviewers file ----------------------------------------------------------------------------
def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"invalid reviewer name {name!r}: 1-64 letters, digits, '_', '.', '@' or '-', "
                         "starting with a letter or digit")
    return name


def read_reviewers(store: ObjectStore) -> dict[str, dict[str, Any]]:
    """name -> password record; {} when no reviewer was added yet."""
    if not store.exists(REVIEWERS_KEY):
        return {}
    return dict(store.read_json(REVIEWERS_KEY).get("reviewers", {}))


def _write_reviewers(store: ObjectStore, reviewers: dict[str, dict[str, Any]]) -> None:
    store.write_json(REVIEWERS_KEY, {"version": 1, "reviewers": reviewers})


def add_reviewer(store: ObjectStore, name: str, password: str, replace: bool = False) -> None:
    """Add ``name`` (or, with ``replace``, set a new password for an existing reviewer)."""
    validate_name(name)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    reviewers = read_reviewers(store)
    if name in reviewers and not replace:
        raise ValueError(f"reviewer {name!r} exists; pass --replace to set a new password")
    reviewers[name] = {**hash_password(password), "updated_at": datetime.now(timezone.utc).isoformat()}
    _write_reviewers(store, reviewers)


def remove_reviewer(store: ObjectStore, name: str) -> None:
    reviewers = read_reviewers(store)
    if name not in reviewers:
        raise ValueError(f"no reviewer {name!r}")
    del reviewers[name]
    _write_reviewers(store, reviewers)


def authenticate(reviewers: dict[str, dict[str, Any]], name: str, password: str) -> bool:
    """Whether ``password`` is ``name``'s; an unknown name costs the same time as a wrong password."""
    record = reviewers.get(name)
    ok = verify_password(password, record or _DUMMY_RECORD)
    return ok and record is not None


# -- sessions --------------------------------------------------------------------------------------
def session_secret(explicit: str | None = None) -> str:
    """The signing secret: ``explicit``, else ``FASHIONNET_REVIEW_SECRET``, else a random one (warned)."""
    secret = explicit or os.environ.get(SECRET_ENV)
    if secret:
        if len(secret) < 32:
            log.warning("%s is shorter than 32 characters; use a long random value", SECRET_ENV)
        return secret
    log.warning("%s is not set: sessions are signed with a random per-process secret, so they end when "
                "the process restarts and do not work across several workers", SECRET_ENV)
    return secrets.token_urlsafe(32)


def _fingerprint(record: dict[str, Any]) -> str:
    return hashlib.sha256(f"{record['salt']}:{record['hash']}".encode()).hexdigest()[:16]


class SessionSigner:
    """Issues and checks the signed session cookie's value."""

    def __init__(self, secret: str, max_age_s: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=SESSION_SALT)
        self.max_age_s = max_age_s

    def issue(self, name: str, record: dict[str, Any]) -> str:
        return self._serializer.dumps({"u": name, "f": _fingerprint(record)})

    def reviewer(self, token: str | None, reviewers: dict[str, dict[str, Any]]) -> str | None:
        """The reviewer a valid, unexpired token names, if they still exist with the same password."""
        if not token:
            return None
        try:
            data = self._serializer.loads(token, max_age=self.max_age_s)
        except BadSignature:  # SignatureExpired is a BadSignature too
            return None
        if not isinstance(data, dict):
            return None
        name, fingerprint = data.get("u"), data.get("f")
        record = reviewers.get(name) if isinstance(name, str) else None
        if record is None or not isinstance(fingerprint, str) or not hmac.compare_digest(
                fingerprint, _fingerprint(record)):
            return None
        return name
