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
import hashlib
import hmac
import secrets
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from coordcore.errors import AuthFailed, AuthRequired, BadArgument
from coordcore.server import resp
from coordcore.server.acl import ACL, DEFAULT, User, hash_password, verify_password
from coordcore.server.core import Client, Command, CommandTable, Flag, Reply
from coordcore.server.log import StructLog

__all__ = ["Auth", "AuthGuard", "IdGenerator", "core_commands", "id_commands", "parse_float", "parse_int",
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
    """
    if len(value) > 20 or _INT.fullmatch(value) is None or (value[:1] == b"-" and low >= 0):
        raise BadArgument(f"{what} is not a plain decimal integer: {value[:24]!r}")
    number = int(value)
    if not low <= number <= high:
        raise BadArgument(f"{what} must be in [{low}, {high}], got {number}")
    return number


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
                raise BadArgument(f"unsupported protocol version {proto} (NOPROTO)")
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


def cmd_client(conn: Client, req: list[bytes]) -> bytes:
    """The few CLIENT subcommands Redis client libraries send on connect."""
    require_args(req, 1)
    sub = req[1].upper()
    if sub == b"SETNAME":
        require_args(req, 2, 2)
        conn.name = req[2][:128]
        return resp.OK
    if sub == b"GETNAME":
        return resp.encode_bulk(conn.name) if conn.name else resp.encode_null(conn.resp3)
    if sub == b"ID":
        return resp.encode_int(conn.id)
    if sub == b"SETINFO":
        return resp.OK
    raise BadArgument(f"unknown CLIENT subcommand {req[1][:24]!r}")


def cmd_acl(conn: Client, req: list[bytes]) -> bytes:
    """``ACL WHOAMI``: the connection's user."""
    require_args(req, 1, 1)
    if req[1].upper() != b"WHOAMI":
        raise BadArgument(f"unknown ACL subcommand {req[1][:24]!r} (coordcore has ACL WHOAMI; "
                          "users live in the ACL file, reloaded on SIGHUP)")
    return resp.encode_bulk(conn.user.name.encode())


def cmd_select(conn: Client, req: list[bytes]) -> bytes:
    require_args(req, 1, 1)
    if req[1] != b"0":
        raise BadArgument("coordcore has only database 0")
    return resp.OK


def cmd_config(conn: Client, req: list[bytes]) -> bytes:
    """``CONFIG GET`` answers an empty map (redis-benchmark asks for 'save'/'appendonly')."""
    require_args(req, 1)
    if req[1].upper() == b"GET":
        return resp.encode_map([(param, resp.encode_bulk(b"")) for param in req[2:3]], conn.resp3)
    raise BadArgument("coordcore is configured by its command line, not CONFIG")


def core_commands(auth: Auth, *, version: str, info: Callable[[str | None], list[str]],
                  command_count: Callable[[], int]) -> CommandTable:
    """The connection and introspection commands. ``info(section)`` gives INFO's lines
    (section: lowercase, or None for the default set),
    ``command_count()`` the number COMMAND COUNT answers."""

    def cmd_command(conn: Client, req: list[bytes]) -> bytes:
        """Minimal COMMAND: enough for redis-cli and redis-benchmark, which only probe it."""
        if len(req) >= 2:
            sub = req[1].upper()
            if sub == b"COUNT":
                return resp.encode_int(command_count())
            if sub == b"DOCS":
                return resp.encode_map([], conn.resp3)
        return resp.encode_array([])

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
        b"CLIENT": Command(cmd_client),
        b"ACL": Command(cmd_acl),
        b"SELECT": Command(cmd_select),
        b"COMMAND": Command(cmd_command),
        b"CONFIG": Command(cmd_config),
        b"INFO": Command(cmd_info),
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
