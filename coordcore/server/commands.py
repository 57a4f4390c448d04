"""The server's commands that need no lock state: connection, introspection and IDs.

Each handler takes the connection (as :class:`~coordcore.server.core.Client`) and the
request (``[name, arg1, ...]`` as bytes) and returns the encoded reply; a handler that
must wait returns an awaitable instead (see :mod:`coordcore.server.protocol`). Bad
arguments raise coordcore errors, which the read loop turns into ``-CODE message``
replies. The tables are built by functions given what their handlers need (the
password check, the ID generator, the server's INFO lines): no handler reaches the
server.
"""
from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import secrets
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from coordcore.errors import AuthFailed, AuthRequired, BadArgument, NoPermission, NoProtocol
from coordcore.server import cmddocs, resp
from coordcore.server.acl import ACL, DEFAULT, User, hash_password, verify_password
from coordcore.server.core import Client, Command, CommandTable, Flag, Reply
from coordcore.server.log import StructLog

__all__ = ["Auth", "AuthGuard", "Control", "IdGenerator", "client_line", "core_commands", "id_commands", "parse_float", "parse_int",
           "require_args"]


def require_args(req: list[bytes], low: int, high: int | None = None) -> None:
    """Check the argument count (the command name not included)."""
    n = len(req) - 1
    if n < low or (high is not None and n > high):
        name = req[0].decode("ascii", "replace").lower()
        raise BadArgument(f"wrong number of arguments for '{name}'")


#: Plain decimal only: what ``int()``/``float()`` also take (``1_0``, `` 5``, ``+5``,
#: ``5e0``, ``0x10``...) is refused, as the native hot path refuses it, so one spelling
#: means one thing on both paths.
_INT = re.compile(rb"-?[0-9]+")
_FLOAT = re.compile(rb"-?[0-9]+(?:\.[0-9]+)?")


def parse_int(value: bytes, what: str, low: int, high: int) -> int:
    """An integer argument in [low, high], or BadArgument saying which one is wrong.

    >>> parse_int(b"42", "n", 0, 100)
    42
    >>> parse_int(b"1_0", "n", 0, 100)
    Traceback (most recent call last):
    ...
    coordcore.errors.BadArgument: n is not a plain decimal integer: b'1_0'
    >>> parse_int(b"99999999999999999999999", "n", 0, 100)
    Traceback (most recent call last):
    ...
    coordcore.errors.BadArgument: n must be in [0, 100], got 99999999999999999999999
    """
    if len(value) > 20 or _INT.fullmatch(value) is None or (value[:1] == b"-" and low >= 0):
        if len(value) <= 64 and _INT.fullmatch(value) is not None:  # plain, just out of range
            raise BadArgument(f"{what} must be in [{low}, {high}], got {value.decode()}")
        raise BadArgument(f"{what} is not a plain decimal integer: {value[:24]!r}")
    number = int(value)
    if not low <= number <= high:
        raise BadArgument(f"{what} must be in [{low}, {high}], got {number}")
    return number


def parse_options(args: list[bytes], allowed: dict[bytes, tuple[int, int]]) -> dict[bytes, int]:
    """``WORD n`` pairs, each word one of ``allowed`` and its number in that range.

    >>> parse_options([b"count", b"5"], {b"COUNT": (1, 10), b"AFTER": (0, 99)})
    {b'COUNT': 5}
    """
    out: dict[bytes, int] = {}
    if len(args) % 2:
        raise BadArgument(f"{args[-1][:32]!r} needs a value")
    for i in range(0, len(args), 2):
        word = args[i].upper()
        if word not in allowed:
            raise BadArgument(f"unexpected argument {args[i][:32]!r} (allowed: "
                              f"{', '.join(sorted(a.decode() for a in allowed))})")
        lo, hi = allowed[word]
        out[word] = parse_int(args[i + 1], word.decode(), lo, hi)
    return out


def parse_float(value: bytes, what: str, low: float, high: float) -> float:
    """A number in [low, high] written as plain decimal digits with an optional
    fraction (``2``, ``2.5``), or BadArgument."""
    if len(value) > 32 or _FLOAT.fullmatch(value) is None or (value[:1] == b"-" and low >= 0):
        raise BadArgument(f"{what} is not a plain decimal number: {value[:24]!r}")
    number = float(value)
    if not low <= number <= high:
        raise BadArgument(f"{what} must be in [{low}, {high}], got {number}")
    return number


# --- connection ----------------------------------------------------------------------


def cmd_ping(conn: Client, req: list[bytes]) -> bytes:
    require_args(req, 0, 1)
    if len(req) == 2:
        return resp.encode_bulk(req[1])
    return resp.PONG


def cmd_echo(conn: Client, req: list[bytes]) -> bytes:
    require_args(req, 1, 1)
    return resp.encode_bulk(req[1])


def cmd_quit(conn: Client, req: list[bytes]) -> bytes:
    conn.close_after_reply()
    return resp.OK


class _Failures:
    __slots__ = ("count", "last", "next_free", "logged_at", "unlogged")

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0
        self.next_free = 0.0
        self.logged_at = float("-inf")
        self.unlogged = 0


class AuthGuard:
    """Slows password guessing down per client address.

    Each failed AUTH (or HELLO AUTH) of an address is answered only after a delay that
    doubles with its recent failures, from ``BASE`` up to ``MAX_DELAY``, and the
    failures of one address are answered one after another (``next_free``), so more
    connections from it do not guess faster. A failing AUTH parks its connection (it is
    a blocking handler), so pipelined guesses wait their turn too. Successes are never
    delayed, and other addresses are not affected: the table is per address, bounded
    (``MAX_ADDRESSES``, least recently failing dropped first), and an address is
    forgotten ``FORGET`` seconds after its last failure. Log lines are one per address
    per ``LOG_EVERY`` seconds: the first failure, then a count of the others.

    >>> guard = AuthGuard(None)
    >>> [round(guard.delay("10.0.0.1", now=100.0), 2) for _ in range(4)]
    [0.01, 0.03, 0.07, 0.15]
    >>> round(guard.delay("10.0.0.2", now=100.0), 2)  # another address: its own count
    0.01
    """

    BASE = 0.01
    MAX_DELAY = 1.0
    FORGET = 60.0
    LOG_EVERY = 10.0
    MAX_ADDRESSES = 4096

    def __init__(self, log: StructLog | None) -> None:
        self.log = log
        self._table: OrderedDict[str, _Failures] = OrderedDict()
        #: Addresses with failures not logged yet (see flush_logs).
        self._pending: set[str] = set()

    def delay(self, address: str, now: float | None = None) -> float:
        """Count a failure of ``address``: the seconds until it may be answered."""
        if now is None:
            now = time.monotonic()
        table = self._table
        entry = table.get(address)
        if entry is None or now - entry.last > self.FORGET:
            entry = _Failures()
            table[address] = entry
            if len(table) > self.MAX_ADDRESSES:
                dropped, _ = table.popitem(last=False)
                self._pending.discard(dropped)
        table.move_to_end(address)
        entry.count += 1
        entry.last = now
        step = min(self.MAX_DELAY, self.BASE * 2.0 ** min(entry.count - 1, 30))
        entry.next_free = max(now, entry.next_free) + step
        return entry.next_free - now

    def succeeded(self, address: str) -> None:
        entry = self._table.pop(address, None)
        if entry is not None and entry.unlogged:
            self._pending.discard(address)
            self._summary(address, entry)

    async def failed(self, conn: Client, user: bytes = b"default") -> bytes:
        """The reply to a failed AUTH of ``conn`` (as ``user``): AuthFailed, after the delay."""
        address = conn.peer_host
        wait = self.delay(address)
        entry = self._table[address]
        if entry.last - entry.logged_at >= self.LOG_EVERY:
            if self.log is not None:
                self.log.warning("auth failed", audit="auth", conn=conn.id, peer=conn.peer,
                                 user=user[:64].decode("utf-8", "replace"), failures=entry.count,
                                 delay=round(wait, 3))
            entry.logged_at = entry.last
        else:
            entry.unlogged += 1
            self._pending.add(address)
        await asyncio.sleep(wait)
        raise AuthFailed("invalid username-password pair or user is disabled")

    def flush_logs(self, now: float | None = None) -> None:
        """Log one summary line per address whose failures went unlogged for
        ``LOG_EVERY`` seconds (the server's sweep calls this)."""
        if not self._pending:
            return
        if now is None:
            now = time.monotonic()
        for address in list(self._pending):
            entry = self._table.get(address)
            if entry is None:
                self._pending.discard(address)
            elif now - entry.logged_at >= self.LOG_EVERY:
                self._pending.discard(address)
                self._summary(address, entry)
                entry.logged_at = now

    def _summary(self, address: str, entry: _Failures) -> None:
        if self.log is not None:
            self.log.warning("auth failures", peer=address, failures=entry.unlogged, total=entry.count,
                             seconds=self.LOG_EVERY)
        entry.unlogged = 0


class Auth:
    """The password check of AUTH and HELLO AUTH, and the guard that slows guessing
    down: ``requirepass`` (the one user ``default``), or the users of an ACL file
    (scrypt hashes, checked in a thread so the loop keeps serving), or neither (no AUTH).

    >>> auth = Auth("s3cret", AuthGuard(None))
    >>> auth.required
    True
    """

    def __init__(self, requirepass: str | None, guard: AuthGuard, acl: ACL | None = None) -> None:
        self.requirepass = requirepass
        self.guard = guard
        self.acl = acl
        #: Passwords already verified: (user, SHA-256 of the password) -> the hash line
        #: it matched, so a client that reconnects often costs one scrypt, not one each.
        self._verified: dict[tuple[str, bytes], str] = {}
        self._decoy_line: str | None = None

    @property
    def required(self) -> bool:
        return self.requirepass is not None or self.acl is not None

    def _decoy(self) -> str:
        """A hash line of a random password with the default cost, checked for unknown users."""
        if self._decoy_line is None:
            self._decoy_line = hash_password(secrets.token_hex(16))
        return self._decoy_line

    def set_acl(self, acl: ACL) -> None:
        """A reloaded ACL file: later AUTHs check against it."""
        self.acl = acl
        self._verified.clear()

    def check(self, conn: Client, user: bytes, password: bytes) -> bool | Awaitable[bool]:
        """Whether ``user``/``password`` are right (then ``conn`` is logged in as the user);
        an awaitable of it when an ACL's hash must be computed."""
        if self.acl is not None:
            return self._check_acl(conn, user, password)
        expected = self.requirepass
        if expected is None:
            raise AuthFailed("AUTH called without any password configured for this server")
        # Constant time, and the user name is checked the same way (only 'default' exists).
        ok_pass = hmac.compare_digest(password, expected.encode())
        ok_user = hmac.compare_digest(user, b"default")
        if not (ok_pass and ok_user):
            return False
        self._succeeded(conn, DEFAULT)
        return True

    async def _check_acl(self, conn: Client, user: bytes, password: bytes) -> bool:
        assert self.acl is not None
        found = self.acl.users.get(user.decode("utf-8", "replace"))
        loop = asyncio.get_running_loop()
        if found is None or found.password is None:
            # Cost what a wrong password costs, so that timing does not tell which users exist.
            await loop.run_in_executor(None, verify_password, self._decoy(), password)
            return False
        key = (found.name, hashlib.sha256(password).digest())
        if self._verified.get(key) != found.password:
            line = found.password
            ok = await loop.run_in_executor(None, verify_password, line, password)
            if not ok:
                return False
            self._verified[key] = line
        if self.acl is None or self.acl.users.get(found.name) != found:
            return False  # the ACL was reloaded meanwhile without this user
        self._succeeded(conn, found)
        return True

    def _succeeded(self, conn: Client, user: User) -> None:
        self.guard.succeeded(conn.peer_host)
        conn.login(user)

    async def _finish(self, conn: Client, user: bytes, pending: Awaitable[bool], reply: Callable[[], bytes]) -> bytes:
        if await pending:
            return reply()
        return await self.guard.failed(conn, user)

    def login(self, conn: Client, user: bytes, password: bytes, reply: Callable[[], bytes]) -> Reply:
        """``reply()`` if the login succeeds, else AuthFailed after the guard's delay."""
        ok = self.check(conn, user, password)
        if ok is True:
            return reply()
        if ok is False:
            return self.guard.failed(conn, user)
        return self._finish(conn, user, ok, reply)

    def cmd_auth(self, conn: Client, req: list[bytes]) -> Reply:
        require_args(req, 1, 2)
        if len(req) == 2:
            return self.login(conn, b"default", req[1], lambda: resp.OK)
        return self.login(conn, req[1], req[2], lambda: resp.OK)


def _hello(auth: Auth, version: str) -> Callable[[Client, list[bytes]], Reply]:
    def cmd_hello(conn: Client, req: list[bytes]) -> Reply:
        args = req[1:]
        proto = 3 if conn.resp3 else 2
        if args:
            proto = parse_int(args[0], "protocol version", 0, 2**31)
            if proto not in (2, 3):
                raise NoProtocol(f"unsupported protocol version {proto}: coordcore speaks 2 (RESP2) and 3 (RESP3)")
            i = 1
            login: tuple[bytes, bytes] | None = None
            while i < len(args):
                opt = args[i].upper()
                if opt == b"AUTH":
                    if i + 2 >= len(args):
                        raise BadArgument("HELLO AUTH needs a user name and a password")
                    login = (args[i + 1], args[i + 2])
                    i += 3
                elif opt == b"SETNAME" and i + 1 < len(args):
                    conn.name = args[i + 1][:128]
                    i += 2
                else:
                    raise BadArgument(f"syntax error in HELLO option {args[i][:24]!r}")
            if login is not None:
                return auth.login(conn, login[0], login[1], lambda: answer(conn, proto))
        return answer(conn, proto)

    def answer(conn: Client, proto: int) -> bytes:
        if not conn.authenticated:
            raise AuthRequired("authentication required: HELLO 3 AUTH <user> <password>, or AUTH <password>")
        conn.resp3 = proto == 3
        pairs = [
            (b"server", resp.encode_bulk(b"coordcore")),
            (b"version", resp.encode_bulk(version.encode())),
            (b"proto", resp.encode_int(proto)),
            (b"id", resp.encode_int(conn.id)),
            (b"mode", resp.encode_bulk(b"standalone")),
            (b"role", resp.encode_bulk(b"master")),
            (b"modules", resp.encode_array([])),
        ]
        return resp.encode_map(pairs, conn.resp3)

    return cmd_hello


def cmd_acl(conn: Client, req: list[bytes]) -> bytes:
    """``ACL WHOAMI``: the connection's user."""
    require_args(req, 1, 1)
    if req[1].upper() != b"WHOAMI":
        raise BadArgument(f"unknown ACL subcommand {req[1][:24]!r} (coordcore has ACL WHOAMI; "
                          "users live in the ACL file, reloaded on SIGHUP)")
    return resp.encode_bulk(conn.user.name.encode())


def cmd_readonly(conn: Client, req: list[bytes]) -> bytes:
    """``READONLY`` / ``READWRITE`` (as Redis Cluster's): whether a cluster follower may
    answer this connection's reads from its own state, which may lag the leader's."""
    require_args(req, 0, 0)
    conn.readonly = req[0].upper() == b"READONLY"
    return resp.OK


def cmd_select(conn: Client, req: list[bytes]) -> bytes:
    require_args(req, 1, 1)
    if req[1] != b"0":
        raise BadArgument("coordcore has only database 0")
    return resp.OK


class Control:
    """What the server lends the connection and introspection commands: the names in
    its command table, its settings (CONFIG GET), its connections (CLIENT LIST/KILL) and
    a stop request (SHUTDOWN, as SIGTERM)."""

    def __init__(self, *, names: Callable[[], list[bytes]], settings: Callable[[], dict[str, str]],
                 clients: Callable[[], Iterable[Client]], stop: Callable[[], None]) -> None:
        self.names = names
        self.settings = settings
        self.clients = clients
        self.stop = stop


def _admin(conn: Client, what: str) -> None:
    """Once users exist, only a user of the ``admin`` group may ``what``."""
    if "admin" not in conn.user.groups:
        raise NoPermission(f"user '{conn.user.name}' may not {what} (group admin)")


def client_line(conn: Client, now: float) -> bytes:
    """One CLIENT LIST line, in Redis's field order (the fields coordcore has)."""
    qbuf, obl = conn.buffered
    cmd = conn.last_cmd[:64].decode("ascii", "replace").lower().replace(" ", "?") or "NULL"
    name = conn.name.decode("utf-8", "replace").replace(" ", "?").replace("\n", "?")
    return (f"id={conn.id} addr={conn.peer} laddr={conn.laddr} fd={conn.fd} name={name} "
            f"age={int(now - conn.created)} idle={int(now - conn.last_read)} flags={'P' if conn.watching else 'N'} "
            f"db=0 sub={int(conn.watching)} psub=0 ssub=0 multi=-1 qbuf={qbuf} obl={obl} omem={obl} "
            f"events=r cmd={cmd} user={conn.user.name} resp={3 if conn.resp3 else 2}").encode()


def _client(control: Control) -> Callable[[Client, list[bytes]], bytes]:
    def cmd_client(conn: Client, req: list[bytes]) -> bytes:
        """CLIENT ID, SETNAME, GETNAME, INFO, LIST, KILL, SETINFO."""
        require_args(req, 1)
        sub = req[1].upper()
        if sub == b"SETNAME":
            require_args(req, 2, 2)
            if any(c <= 0x20 or c > 0x7E for c in req[2]):
                raise BadArgument("a client name cannot contain spaces, newlines or special characters")
            conn.name = req[2][:128]
            return resp.OK
        if sub == b"GETNAME":
            require_args(req, 1, 1)
            return resp.encode_bulk(conn.name) if conn.name else resp.encode_null(conn.resp3)
        if sub == b"ID":
            require_args(req, 1, 1)
            return resp.encode_int(conn.id)
        if sub == b"SETINFO":
            return resp.OK
        now = time.monotonic()
        if sub == b"INFO":
            require_args(req, 1, 1)
            return resp.encode_bulk(client_line(conn, now) + b"\n")
        if sub == b"LIST":
            _admin(conn, "list connections")
            ids: set[int] | None = None
            if len(req) > 2:
                if req[2].upper() != b"ID" or len(req) < 4:
                    raise BadArgument("CLIENT LIST takes ID id [id ...]")
                ids = {parse_int(v, "client id", 1, 2**63 - 1) for v in req[3:]}
            lines = [client_line(c, now) + b"\n" for c in sorted(control.clients(), key=lambda c: c.id)
                     if ids is None or c.id in ids]
            return resp.encode_bulk(b"".join(lines))
        if sub == b"KILL":
            return _kill(control, conn, req[2:])
        raise BadArgument(f"unknown CLIENT subcommand {req[1][:24]!r} (coordcore has ID, SETNAME, GETNAME, "
                          "INFO, LIST, KILL, SETINFO)")

    return cmd_client


def _kill(control: Control, conn: Client, args: list[bytes]) -> bytes:
    """``CLIENT KILL ID n | ADDR ip:port | USER name`` (filters combine; at least one):
    the number of connections closed. The old form ``CLIENT KILL ip:port`` is refused."""
    _admin(conn, "kill connections")
    if not args or len(args) % 2:
        raise BadArgument("CLIENT KILL takes filters: ID id, ADDR ip:port, USER name")
    tests: list[Callable[[Client], bool]] = []
    for word, value in zip(args[::2], args[1::2]):
        w = word.upper()
        if w == b"ID":
            ident = parse_int(value, "client id", 1, 2**63 - 1)
            tests.append(lambda c, ident=ident: c.id == ident)  # type: ignore[misc]
        elif w == b"ADDR":
            addr = value.decode("utf-8", "replace")
            tests.append(lambda c, addr=addr: c.peer == addr)  # type: ignore[misc]
        elif w == b"USER":
            user = value.decode("utf-8", "replace")
            tests.append(lambda c, user=user: c.user.name == user)  # type: ignore[misc]
        else:
            raise BadArgument(f"unknown CLIENT KILL filter {word[:24]!r} (ID, ADDR, USER)")
    victims = [c for c in control.clients() if all(test(c) for test in tests)]
    for victim in victims:
        if victim is conn:
            conn.close_after_reply()  # as Redis: the reply is written, then the close
        else:
            victim.abort()
    return resp.encode_int(len(victims))


def _config(control: Control) -> Callable[[Client, list[bytes]], bytes]:
    def cmd_config(conn: Client, req: list[bytes]) -> bytes:
        """``CONFIG GET pattern [pattern ...]``: the settings whose names match a glob
        pattern (Redis's names too), an empty map if none; ``CONFIG SET`` is refused."""
        require_args(req, 1)
        sub = req[1].upper()
        if sub == b"GET":
            require_args(req, 2)
            settings = control.settings()
            found: dict[str, str] = {}
            for pattern in req[2:]:
                if len(pattern) > 256:
                    raise BadArgument("a CONFIG GET pattern is at most 256 bytes")
                # compiled here, not by fnmatch's unbounded-size cache of patterns
                match = re.compile(fnmatch.translate(pattern.decode("utf-8", "replace").lower())).match
                for key, value in settings.items():
                    if match(key):
                        found.setdefault(key, value)
            return resp.encode_map([(k.encode(), resp.encode_bulk(v.encode())) for k, v in found.items()],
                                   conn.resp3)
        if sub in (b"SET", b"RESETSTAT", b"REWRITE"):
            raise BadArgument(f"CONFIG {sub.decode()} is not supported: coordcore's settings are fixed at start "
                              "(command line or --config file); CONFIG GET reads them")
        raise BadArgument(f"unknown CONFIG subcommand {req[1][:24]!r} (coordcore has CONFIG GET)")

    return cmd_config


def _shutdown(control: Control) -> Callable[[Client, list[bytes]], bytes]:
    def cmd_shutdown(conn: Client, req: list[bytes]) -> bytes:
        """``SHUTDOWN [NOSAVE|SAVE]``: stop as SIGTERM does. The lock log is durable at
        every commit, so SAVE and NOSAVE both just stop; other options are refused."""
        _admin(conn, "shut the server down")
        for word in req[1:]:
            if word.upper() not in (b"NOSAVE", b"SAVE"):
                raise BadArgument(f"SHUTDOWN takes NOSAVE or SAVE, not {word[:24]!r} (every commit is "
                                  "already durable: both just stop)")
        control.stop()
        conn.close_after_reply()
        return b""  # as Redis: no reply, the connection closes

    return cmd_shutdown


def core_commands(auth: Auth, *, version: str, info: Callable[[str | None], list[str]],
                  control: Control) -> CommandTable:
    """The connection and introspection commands. ``info(section)`` gives INFO's lines
    (section: lowercase, or None for the default set), ``control`` the server's names,
    settings, connections and stop."""

    def cmd_command(conn: Client, req: list[bytes]) -> bytes:
        """COMMAND [COUNT | LIST | INFO name... | DOCS name...] from coordcore.server.cmddocs."""
        names = control.names()
        sub = req[1].upper() if len(req) > 1 else b"INFO"
        if sub == b"COUNT":
            require_args(req, 1, 1)
            return resp.encode_int(len(names))
        if sub == b"LIST":
            require_args(req, 1, 1)
            return resp.encode_array([resp.encode_bulk(cmddocs.DOCS[n].name.lower().encode() if n in cmddocs.DOCS
                                                       else n.lower()) for n in names])
        asked = [a.upper() for a in req[2:]] or names
        if sub == b"INFO":
            return resp.encode_array([cmddocs.command_info(n, conn.resp3) if n in cmddocs.DOCS and n in names
                                      else resp.encode_null(conn.resp3) for n in asked])
        if sub == b"DOCS":
            return cmddocs.command_docs([n for n in asked if n in names], conn.resp3)
        raise BadArgument(f"unknown COMMAND subcommand {req[1][:24]!r} (coordcore has COUNT, LIST, INFO, DOCS)")

    def cmd_info(conn: Client, req: list[bytes]) -> bytes:
        """``INFO [section]``, as Redis answers it: ``# Section`` headers, ``field:value``
        lines; an unknown section answers empty (as Redis does)."""
        require_args(req, 0, 1)
        section = req[1].decode("ascii", "replace").lower()[:32] if len(req) == 2 else None
        return resp.encode_bulk("\r\n".join(info(section)).encode())

    return {
        b"PING": Command(cmd_ping, Flag.WATCH),
        b"ECHO": Command(cmd_echo),
        b"QUIT": Command(cmd_quit, Flag.NOAUTH | Flag.WATCH),
        # A failing AUTH parks its connection: it waits out its delay before anything
        # pipelined behind it is read.
        b"AUTH": Command(auth.cmd_auth, Flag.NOAUTH | Flag.PARKS),
        b"HELLO": Command(_hello(auth, version), Flag.NOAUTH | Flag.PARKS),
        b"CLIENT": Command(_client(control)),
        b"ACL": Command(cmd_acl),
        b"SELECT": Command(cmd_select),
        b"READONLY": Command(cmd_readonly),
        b"READWRITE": Command(cmd_readonly),
        b"COMMAND": Command(cmd_command),
        b"CONFIG": Command(_config(control)),
        b"INFO": Command(cmd_info),
        b"SHUTDOWN": Command(_shutdown(control)),
    }


# --- IDs -----------------------------------------------------------------------------


class IdGenerator(Protocol):
    """What the ID commands use of :class:`coordcore.ids.Snowflake`."""

    def next_id(self) -> int: ...
    def next_run(self, max_count: int) -> tuple[int, int]: ...
    def decode(self, id: int) -> Any: ...


def id_commands(ids: IdGenerator, *, max_range: int, endpoints: Callable[[], list[str]]) -> CommandTable:
    """The ID commands over ``ids``; ``ID.RANGE`` hands out at most ``max_range`` per
    request, ``ID.WORKERS`` lists ``endpoints()``."""

    def cmd_id_next(conn: Client, req: list[bytes]) -> bytes:
        if len(req) != 1:
            require_args(req, 0, 0)
        return b":%d\r\n" % ids.next_id()

    def cmd_id_range(conn: Client, req: list[bytes]) -> bytes:
        """``ID.RANGE n``: exactly n IDs as runs ``[[start, count], ...]`` of consecutive
        integers; each run comes from one millisecond, so one run holds up to 4096."""
        require_args(req, 1, 1)
        n = parse_int(req[1], "count", 1, max_range)
        next_run = ids.next_run
        runs: list[bytes] = []
        while n > 0:
            first, count = next_run(n)
            runs.append(b"*2\r\n:%d\r\n:%d\r\n" % (first, count))
            n -= count
        return b"*%d\r\n%b" % (len(runs), b"".join(runs))

    def cmd_id_decode(conn: Client, req: list[bytes]) -> bytes:
        require_args(req, 1, 1)
        ident = parse_int(req[1], "id", 0, 2**63 - 1)
        d = ids.decode(ident)
        return resp.encode_map([
            (b"id", resp.encode_int(d.id)),
            (b"timestamp_ms", resp.encode_int(d.timestamp_ms)),
            (b"datetime", resp.encode_bulk(d.datetime.isoformat().encode())),
            (b"datacenter", resp.encode_int(d.datacenter)),
            (b"worker", resp.encode_int(d.worker)),
            (b"sequence", resp.encode_int(d.sequence)),
        ], conn.resp3)

    def cmd_id_workers(conn: Client, req: list[bytes]) -> bytes:
        """``ID.WORKERS``: the ``host:port`` of every ID-serving process of this server."""
        require_args(req, 0, 0)
        return resp.encode_array([resp.encode_bulk(a.encode()) for a in endpoints()])

    return {
        # The plain ID.NEXT is answered natively (WireConn.id_next); this serves the rest.
        b"ID.NEXT": Command(cmd_id_next, Flag.HOT),
        b"ID.RANGE": Command(cmd_id_range),
        b"ID.DECODE": Command(cmd_id_decode),
        b"ID.WORKERS": Command(cmd_id_workers),
    }
