"""Reviewers, their passwords and their sessions.

``review/reviewers.json`` in the store holds every reviewer's scrypt password hash with its own random
salt (never a password). It is managed with ``python -m pipeline.review.web add-reviewer``. Every change
of it is one :meth:`ObjectStore.update_json` (a lock file locally, a compare-and-swap on S3), so two
admins changing it at once never lose each other's change; a local file is 0600.

A session is a cookie signed with ``FASHIONNET_REVIEW_SECRET`` (itsdangerous, timestamped). It names
the reviewer and carries a fingerprint of their password record *and of its session generation*, a
counter in the record that logout raises: the server checks the fingerprint against the stored record
on every request, so logout, a password change or the reviewer's removal ends every session of that
reviewer at once, in every server process. Without the variable every process draws a random
secret: sessions then end with the process and do not work across several api-server workers.

:class:`LoginThrottle` (failed logins per client and name, in the store) and :class:`PasswordCheckGate`
(bounded concurrent scrypt checks) protect the login.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from pipeline.storage import ObjectStore
from pipeline.store_layout import REVIEWERS_KEY, login_throttle_key

log = logging.getLogger(__name__)

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
    digest = hashlib.scrypt(
        password.encode(),
        salt=bytes.fromhex(record["salt"]),
        dklen=len(record["hash"]) // 2,
        n=int(record["n"]),
        r=int(record["r"]),
        p=int(record["p"]),
        maxmem=64 * 2**20,
    )
    return hmac.compare_digest(digest.hex(), record["hash"])


_DUMMY_RECORD = hash_password("not a password", salt=b"\0" * 16)


# -- the reviewers file ----------------------------------------------------------------------------
def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid reviewer name {name!r}: 1-64 letters, digits, '_', '.', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def read_reviewers(store: ObjectStore) -> dict[str, dict[str, Any]]:
    """name -> password record; {} when no reviewer was added yet."""
    if not store.exists(REVIEWERS_KEY):
        return {}
    return dict(store.read_json(REVIEWERS_KEY).get("reviewers", {}))


def change_reviewers(
    store: ObjectStore, change: Callable[[dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """Apply ``change`` (name -> record, to a new mapping; it may run more than once) to the reviewers
    file atomically against every other change; returns the new mapping."""

    def apply(value: Any) -> dict[str, Any]:
        return {"version": 1, "reviewers": change(dict((value or {}).get("reviewers", {})))}

    return store.update_json(REVIEWERS_KEY, apply, private=True)["reviewers"]


def add_reviewer(store: ObjectStore, name: str, password: str, replace: bool = False) -> None:
    """Add ``name`` (or, with ``replace``, set a new password for an existing reviewer)."""
    validate_name(name)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    record = {**hash_password(password), "updated_at": datetime.now(UTC).isoformat()}

    def add(reviewers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if name in reviewers and not replace:
            raise ValueError(f"reviewer {name!r} exists; pass --replace to set a new password")
        generation = int(reviewers.get(name, {}).get("session_generation", 0))
        return {**reviewers, name: {**record, "session_generation": generation + 1}}

    change_reviewers(store, add)


def remove_reviewer(store: ObjectStore, name: str) -> None:
    def remove(reviewers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if name not in reviewers:
            raise ValueError(f"no reviewer {name!r}")
        return {n: r for n, r in reviewers.items() if n != name}

    change_reviewers(store, remove)


def end_sessions(store: ObjectStore, name: str) -> None:
    """End every session of ``name`` (logout): their record's session generation goes up by one."""

    def bump(reviewers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if name not in reviewers:
            return reviewers  # removed meanwhile: no session of theirs is valid anyway
        record = reviewers[name]
        return {**reviewers, name: {**record, "session_generation": int(record.get("session_generation", 0)) + 1}}

    change_reviewers(store, bump)


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
    log.warning(
        "%s is not set: sessions are signed with a random per-process secret, so they end when "
        "the process restarts and do not work across several workers",
        SECRET_ENV,
    )
    return secrets.token_urlsafe(32)


def _fingerprint(record: dict[str, Any]) -> str:
    """What a session must match in the stored record: the password hash and the session generation."""
    generation = int(record.get("session_generation", 0))
    return hashlib.sha256(f"{record['salt']}:{record['hash']}:{generation}".encode()).hexdigest()[:16]


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
        if (
            record is None
            or not isinstance(fingerprint, str)
            or not hmac.compare_digest(fingerprint, _fingerprint(record))
        ):
            return None
        return name


# -- login throttling, shared through the store ----------------------------------------------------
class LoginThrottle:
    """Growing delays after failed logins, per client address and reviewer name, kept in the store.

    Keyed by both, so an attacker's failures delay only the attacker's next tries for that name: a
    reviewer logging in from another address is never delayed (nobody can lock them out), and the
    attacker's guessing rate for one name falls to one try per ``max_delay_s``. The counters live in
    the store (one small object per client and name, changed with :meth:`ObjectStore.update_json`), so
    every server process sees them and a restart forgets nothing. Time is wall-clock time for the same
    reason.
    """

    def __init__(
        self,
        store: Callable[[], ObjectStore],
        free_failures: int,
        delay_s: float,
        max_delay_s: float,
        memory_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.free_failures, self.delay_s, self.max_delay_s, self.memory_s = (
            free_failures,
            delay_s,
            max_delay_s,
            memory_s,
        )
        self.clock = clock

    @staticmethod
    def key(client: str, name: str) -> str:
        digest = hashlib.sha256(f"{client}\0{name}".encode()).hexdigest()[:40]
        return login_throttle_key(digest)

    def _failures(self, record: dict[str, Any] | None, now: float) -> int:
        if not record or now - float(record.get("last_failure_at", 0)) > self.memory_s:
            return 0
        return int(record.get("failures", 0))

    def delay_after(self, failures: int) -> float:
        """How long the next try must wait after ``failures`` failures in a row."""
        if failures < self.free_failures:
            return 0.0
        return min(self.delay_s * 2 ** (failures - self.free_failures), self.max_delay_s)

    def wait_s(self, client: str, name: str) -> float:
        """Seconds this client must still wait before it may try ``name`` again (0: it may now)."""
        key, now = self.key(client, name), self.clock()
        store = self._store()
        record = store.read_json(key) if store.exists(key) else None
        failures = self._failures(record, now)
        if not failures or record is None:  # no record counts no failures
            return 0.0
        return max(0.0, float(record["last_failure_at"]) + self.delay_after(failures) - now)

    def failed(self, client: str, name: str) -> int:
        """Count a failed try; returns the failures in a row."""
        now = self.clock()

        def count(record: Any) -> dict[str, Any]:
            return {"failures": self._failures(record, now) + 1, "last_failure_at": now}

        return int(self._store().update_json(self.key(client, name), count)["failures"])

    def succeeded(self, client: str, name: str) -> None:
        store, key = self._store(), self.key(client, name)
        if store.exists(key):
            try:
                store.delete(key)
            except FileNotFoundError:  # another process forgot it first
                pass


# -- bounded password checks -----------------------------------------------------------------------
class PasswordCheckGate:
    """At most ``max_concurrent`` scrypt checks at once in this process, ``per_client`` per address.

    A check over the per-client bound is refused at once; one over the global bound waits ``wait_s`` at
    most, then is refused. Refused logins cost no hash, so 80 concurrent bogus logins hold at most
    ``max_concurrent`` x 16 MiB and leave slots for other clients' real logins.
    """

    def __init__(self, max_concurrent: int, per_client: int, wait_s: float) -> None:
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._by_client: dict[str, int] = {}
        self.max_concurrent, self.per_client, self.wait_s = max_concurrent, per_client, wait_s

    def acquire(self, client: str) -> str | None:
        """None when a check may run (call :meth:`release`), else why not: ``"client"`` or ``"busy"``."""
        with self._lock:
            if self._by_client.get(client, 0) >= self.per_client:
                return "client"
            self._by_client[client] = self._by_client.get(client, 0) + 1
        if not self._slots.acquire(timeout=self.wait_s):
            self._release_client(client)
            return "busy"
        return None

    def release(self, client: str) -> None:
        self._slots.release()
        self._release_client(client)

    def _release_client(self, client: str) -> None:
        with self._lock:
            left = self._by_client.get(client, 1) - 1
            if left:
                self._by_client[client] = left
            else:
                self._by_client.pop(client, None)
