"""Users and what each may do: the ACL file, password hashes, the permission check.

An ACL file (TOML) names users; each has a password hash (``coordcore passwd``
prints one), the key prefixes it may lock, read and watch, and the command groups it
may use (``ids``, ``locks``, ``admin``)::

    [users.alice]
    password = "scrypt$16384$8$1$<salt hex>$<hash hex>"
    lock = ["jobs/"]            # LOCK.*, SEM.*, ELECT.* on keys under jobs/
    read = ["jobs/"]            # LOCK.INFO, LOCKS.KEYS/SCAN, ELECT.LEADER ...
    watch = ["jobs/"]           # WATCH prefix
    commands = ["ids", "locks"]
    cert_names = ["alice.example.com"]   # TLS client certificate names (default: the user's name)

A prefix ``"jobs/*"`` means ``"jobs/"`` and ``"*"`` (or ``""``) every key. A key is
allowed when it starts with one of the prefixes; a prefix argument (``WATCH``,
``LOCKS.KEYS``, ``LOCKS.SCAN MATCH``) when it starts with one, so a user limited to
``jobs/`` cannot watch or list ``""``. The connection commands (PING, AUTH, HELLO,
CLIENT, ACL WHOAMI ...) are everyone's; a command this module does not know is refused
to a limited user (a new command must be placed here to be served to one).

>>> line = hash_password("pw", n=16)  # a cheap hash for the example; coordcore passwd makes real ones
>>> acl = parse_acl(f'[users.a]\\npassword = "{line}"\\nlock = ["jobs/*"]\\ncommands = ["locks"]')
>>> a = acl.users["a"]
>>> a.denied([b"LOCK.ACQUIRE", b"jobs/1", b"1.ab"]) is None
True
>>> a.denied([b"lock.try", b"billing/1", b"1.ab"])
"user 'a' may not lock key b'billing/1'"
>>> a.denied([b"ID.NEXT"])
"user 'a' may not use ID.NEXT (group ids)"
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from coordcore.errors import BadArgument

__all__ = ["ACL", "DEFAULT", "GROUPS", "User", "hash_password", "load_acl", "parse_acl", "verify_password"]

GROUPS = frozenset({"ids", "locks", "admin"})
_ALL: tuple[bytes, ...] = (b"",)

#: Served to every authenticated user.
_EVERYONE = frozenset({b"PING", b"ECHO", b"QUIT", b"AUTH", b"HELLO", b"CLIENT", b"SELECT", b"COMMAND", b"ACL",
                        b"READONLY", b"READWRITE",
                        # A prefix: what it carries is checked as itself (a bad prefix runs nothing).
                        b"TRACEPARENT"})

#: Access kinds, and where a command names its key: an argument index, or _PREFIX_ARG
#: (an optional prefix argument, default every key), or _MATCH (LOCKS.SCAN's MATCH).
_LOCK, _READ, _WATCH = "lock", "read", "watch"
_PREFIX_ARG, _MATCH, _EVERY_KEY = -1, -2, -3

#: command -> (group, access kind or None, where the key is)
RULES: dict[bytes, tuple[str, str | None, int]] = {
    b"INFO": ("admin", None, 0),
    b"CLUSTER.STATE": ("admin", None, 0),
    b"CLUSTER.SNAPSHOT": ("admin", None, 0),
    b"CONFIG": ("admin", None, 0),
    b"SHUTDOWN": ("admin", None, 0),
    b"ID.NEXT": ("ids", None, 0),
    b"ID.RANGE": ("ids", None, 0),
    b"ID.DECODE": ("ids", None, 0),
    b"ID.WORKERS": ("ids", None, 0),
    b"SESSION.OPEN": ("locks", None, 0),
    b"SESSION.KEEPALIVE": ("locks", None, 0),
    b"SESSION.CLOSE": ("locks", None, 0),
    # Lists the keys of any session's holds: a read of every key.
    b"SESSION.INFO": ("locks", _READ, _EVERY_KEY),
    b"LOCK.ACQUIRE": ("locks", _LOCK, 1),
    b"LOCK.TRY": ("locks", _LOCK, 1),
    b"LOCK.RELEASE": ("locks", _LOCK, 1),
    b"LOCK.CANCEL": ("locks", _LOCK, 1),
    b"SEM.ACQUIRE": ("locks", _LOCK, 1),
    b"SEM.TRY": ("locks", _LOCK, 1),
    b"SEM.RELEASE": ("locks", _LOCK, 1),
    b"ELECT.CAMPAIGN": ("locks", _LOCK, 1),
    b"ELECT.PROCLAIM": ("locks", _LOCK, 1),
    b"ELECT.RESIGN": ("locks", _LOCK, 1),
    b"LOCK.INFO": ("locks", _READ, 1),
    b"SEM.INFO": ("locks", _READ, 1),
    b"ELECT.LEADER": ("locks", _READ, 1),
    b"LOCKS.KEYS": ("locks", _READ, _PREFIX_ARG),
    b"LOCKS.SCAN": ("locks", _READ, _MATCH),
    b"LOCKS.REVISION": ("locks", None, 0),
    # Names the busiest keys of every prefix: an operator's view, as INFO is.
    b"LOCKS.TOP": ("admin", None, 0),
    # Every user's events, whatever the prefix: admin only.
    b"AUDIT.HISTORY": ("admin", None, 0),
    b"AUDIT.CHECKPOINT": ("admin", None, 0),
    b"POOL.DEFINE": ("admin", None, 0),
    b"POOL.TENANT": ("admin", None, 0),
    b"POOL.ACQUIRE": ("locks", _LOCK, 1),
    b"POOL.TRY": ("locks", _LOCK, 1),
    b"POOL.RELEASE": ("locks", _LOCK, 1),
    b"POOL.RESIZE": ("locks", _LOCK, 1),
    b"POOL.INFO": ("locks", _READ, 1),
    b"WATCH": ("locks", _WATCH, 1),
    b"UNWATCH": ("locks", None, 0),
    b"SUBSCRIBE": ("locks", _WATCH, 1),
    b"UNSUBSCRIBE": ("locks", None, 0),
}


def _prefixes(values: Iterable[object], what: str) -> tuple[bytes, ...]:
    out: list[bytes] = []
    for value in values:
        if not isinstance(value, str):
            raise BadArgument(f"{what}: prefixes are strings, got {value!r}")
        prefix = value.removesuffix("*").encode()
        if not prefix:
            return _ALL
        out.append(prefix)
    return tuple(out)


def _allowed(prefixes: tuple[bytes, ...], key: bytes) -> bool:
    for prefix in prefixes:
        if key.startswith(prefix):
            return True
    return False


@dataclass(frozen=True)
class User:
    """One user: its password hash and what it may do."""

    name: str
    password: str | None = None
    lock: tuple[bytes, ...] = _ALL
    read: tuple[bytes, ...] = _ALL
    watch: tuple[bytes, ...] = _ALL
    groups: frozenset[str] = GROUPS
    cert_names: tuple[str, ...] = ()

    @property
    def owner(self) -> bytes:
        """What its sessions are bound to (the default user's: nothing, as before users)."""
        return b"" if self.name == "default" else self.name.encode()

    @property
    def unlimited(self) -> bool:
        """May run every command on every key (then no check runs per request)."""
        return self.groups == GROUPS and self.lock == self.read == self.watch == _ALL

    def denied(self, req: list[bytes]) -> str | None:
        """Why this user may not run ``req`` (None: it may). Arity errors are left to
        the command's handler, which refuses them before doing anything."""
        name = req[0].upper()
        if name in _EVERYONE:
            return None
        rule = RULES.get(name)
        shown = name[:32].decode("ascii", "replace")
        if rule is None:
            return f"user {self.name!r} may not use {shown}"
        group, kind, where = rule
        if group not in self.groups:
            return f"user {self.name!r} may not use {shown} (group {group})"
        if kind is None:
            return None
        if where >= 0:
            if len(req) <= where:
                return None
            key = req[where]
        elif where == _PREFIX_ARG:
            key = req[1] if len(req) > 1 else b""
        elif where == _MATCH:
            key = b""
            for i in range(2, len(req) - 1, 2):
                if req[i].upper() == b"MATCH":
                    key = req[i + 1]
        else:
            key = b""
        prefixes = self.lock if kind == _LOCK else self.read if kind == _READ else self.watch
        if _allowed(prefixes, key):
            return None
        what = "key" if where >= 0 and kind != _WATCH else "prefix"
        return f"user {self.name!r} may not {kind} {what} {key[:64]!r}"


#: Who a connection is when no ACL file names users (every right, as before users).
DEFAULT = User("default")


@dataclass(frozen=True)
class ACL:
    """The users of an ACL file."""

    users: dict[str, User]

    def for_cert(self, names: Iterable[str]) -> User | None:
        """The user a TLS client certificate with these names (CN, SANs) maps to."""
        wanted = set(names)
        for user in self.users.values():
            if wanted & set(user.cert_names or (user.name,)):
                return user
        return None


def parse_acl(text: str) -> ACL:
    """The ACL of a file's text; BadArgument saying what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadArgument(f"ACL file is not valid TOML: {exc}") from None
    users_table = data.get("users")
    if not isinstance(users_table, dict) or not users_table:
        raise BadArgument("ACL file names no users ([users.<name>] tables)")
    extra = set(data) - {"users"}
    if extra:
        raise BadArgument(f"ACL file: unknown top-level keys {sorted(extra)}")
    users: dict[str, User] = {}
    known = {"password", "lock", "read", "watch", "commands", "cert_names"}
    for name, spec in users_table.items():
        where = f"user {name!r}"
        if not isinstance(spec, dict):
            raise BadArgument(f"{where}: expected a table")
        unknown = set(spec) - known
        if unknown:
            raise BadArgument(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        if not name or any(c.isspace() for c in name):
            raise BadArgument(f"{where}: a user name has no spaces")
        password = spec.get("password")
        if password is not None and not isinstance(password, str):
            raise BadArgument(f"{where}: password must be a hash string (coordcore passwd)")
        if password is not None:
            _parse_hash(password, where)
        groups = spec.get("commands", sorted(GROUPS))
        if not isinstance(groups, list) or not set(groups) <= GROUPS:
            raise BadArgument(f"{where}: commands must be a list of {sorted(GROUPS)}")
        lists = {}
        for field in ("lock", "read", "watch", "cert_names"):
            value = spec.get(field, [] if field == "cert_names" else ["*"])
            if not isinstance(value, list):
                raise BadArgument(f"{where}: {field} must be a list")
            lists[field] = value
        users[name] = User(name, password, _prefixes(lists["lock"], where), _prefixes(lists["read"], where),
                           _prefixes(lists["watch"], where), frozenset(groups),
                           tuple(str(n) for n in lists["cert_names"]))
    return ACL(users)


def load_acl(path: Path) -> ACL:
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadArgument(f"cannot read ACL file {path}: {exc.strerror}") from None
    return parse_acl(text)


# --- password hashes -----------------------------------------------------------------

#: scrypt cost: 16 MiB and tens of ms per check, which AUTH runs in a thread.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A salted scrypt hash line: ``scrypt$n$r$p$salt$hash`` (hex).

    >>> line = hash_password("pw", n=16)
    >>> verify_password(line, b"pw"), verify_password(line, b"nope")
    (True, False)
    """
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def _parse_hash(line: str, where: str) -> tuple[int, int, int, bytes, bytes]:
    parts = line.split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
        if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * r * n > 1 << 30 or not salt or not digest:
            raise ValueError
    except ValueError:
        raise BadArgument(f"{where}: password is not a scrypt hash line (make one with coordcore passwd)") from None
    return n, r, p, salt, digest


def verify_password(line: str, password: bytes) -> bool:
    """Whether ``password`` matches the hash line (constant time in the comparison)."""
    n, r, p, salt, digest = _parse_hash(line, "hash")
    got = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=128 * r * n + (1 << 20))
    return hmac.compare_digest(got, digest)
