"""What the server's parts agree on, so that none of them imports another in a circle.

* :class:`Command`: one entry of the command table, its handler and its flags
  (:class:`Flag`): whether it is served before AUTH, parks its connection, reads lock
  state, is allowed while a RESP2 connection watches, has a native hot form, writes
  through the lock log.
* :class:`Client`: a connection as a command handler sees it (what it may read and ask).
* :class:`ServerView`: the server as a connection sees it (its limits, the table, the
  buffer budget, the log, the hot path, registration).

The connection (:mod:`coordcore.server.protocol`) implements :class:`Client`; the
server (:mod:`coordcore.server.server`) implements :class:`ServerView`; the command
modules (:mod:`~coordcore.server.commands`, :mod:`~coordcore.server.lockcmds`) build
tables of :class:`Command` entries. They import this module, and the connection and
the command modules never import the server or each other's peers: only the server
imports them all (``tests/server/test_server_layers.py`` checks there is no cycle).

>>> entry = Command(lambda conn, req: b"+PONG\\r\\n", Flag.NOAUTH | Flag.WATCH)
>>> entry.allowed(Flag.WATCH), entry.allowed(Flag.NOAUTH), entry.parks
(True, True, False)
>>> entry
Command(<lambda>, NOAUTH|WATCH)
"""
from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from coordcore.server.acl import User
from coordcore.server.budget import Budget
from coordcore.server.log import StructLog

__all__ = ["Client", "Command", "CommandTable", "ConnectionConfig", "Flag", "Handler", "Reply", "ServerView"]


class Flag(enum.IntFlag):
    """What the connection must know of a command before it runs it."""

    NONE = 0
    #: Served before the connection authenticates (AUTH, HELLO, QUIT).
    NOAUTH = enum.auto()
    #: May wait for other clients: parks its connection, later requests stay unparsed
    #: until it is answered (Redis blocking-command semantics).
    PARKS = enum.auto()
    #: Reads lock state: waits for its connection's writes in flight, so it sees them.
    READS = enum.auto()
    #: Allowed on a RESP2 connection while it watches (as Redis allows in pub/sub).
    WATCH = enum.auto()
    #: Its plain form is served by the native lane (or ID generator) without a handler
    #: call; the handler serves the other forms.
    HOT = enum.auto()
    #: Commits through the lock log.
    WRITES = enum.auto()


class Client(Protocol):
    """A connection as command handlers see it."""

    #: This connection's number (``CLIENT ID``) and peer (``host:port``, and host).
    id: int
    peer: str
    peer_host: str
    #: ``CLIENT SETNAME``/``HELLO SETNAME``.
    name: bytes
    #: For ``CLIENT LIST``: the local address, the socket's descriptor (-1: none), when
    #: the connection was made and last read from (time.monotonic()), the last command
    #: the table served (the native hot path does not note its commands), watching.
    laddr: str
    fd: int
    created: float
    last_read: float
    last_cmd: bytes
    watching: bool
    #: The connection speaks RESP3 (after ``HELLO 3``).
    resp3: bool
    #: Callbacks run when the connection goes (watch cancellation, ...).
    on_close: list[Callable[[], object]]
    #: Per-connection state the lock commands keep (their reply encoders, watches).
    lock_state: Any
    #: The client takes a cluster follower's state for reads (``READONLY``), which may
    #: lag the leader's; else a follower redirects reads to the leader too.
    readonly: bool
    #: Who the connection acts for (the default user until an AUTH names another).
    user: User

    @property
    def authenticated(self) -> bool: ...

    @property
    def buffered(self) -> tuple[int, int]:
        """Bytes of unparsed input and of unsent output."""

    def login(self, user: User) -> None:
        """AUTH succeeded as ``user``: the commands it may run are served from now on."""

    def watch_mode(self, watching: bool) -> None:
        """The connection watches (or no longer does): on RESP2 only WATCH-flagged
        commands are served meanwhile."""

    def close_after_reply(self) -> None:
        """Close once the current reply is written (QUIT)."""

    def push(self, frame: bytes) -> None:
        """Write an out-of-band frame (a watch event) now, between replies."""

    def abort(self) -> None:
        """Close at once, dropping whatever is unsent."""

    def mark_dirty(self) -> None:
        """A reply is ready: flush this connection at the end of the current batch."""

    def park(self, fut: asyncio.Future[bytes]) -> None:
        """A hot acquire came back waiting: it parks the connection until ``fut``."""

    def flush(self) -> None:
        """Write what a committed batch made ready (the batch's end calls this)."""


#: What a command handler returns: the encoded reply, or an awaitable of it.
Reply = bytes | Awaitable[bytes]
Handler = Callable[[Client, list[bytes]], Reply]


class Command:
    """One entry of the command table: the handler and its :class:`Flag` s.

    ``flags`` is kept as a plain ``int``: the read loop tests it per request, and
    ``IntFlag`` arithmetic is a Python-level call."""

    __slots__ = ("handler", "flags")

    def __init__(self, handler: Handler, flags: Flag = Flag.NONE) -> None:
        self.handler = handler
        self.flags = int(flags)

    def allowed(self, need: int) -> bool:
        """Whether the command has every flag in ``need`` (the connection's gate)."""
        return self.flags & need == need

    @property
    def parks(self) -> bool:
        return bool(self.flags & Flag.PARKS)

    @property
    def reads(self) -> bool:
        return bool(self.flags & Flag.READS)

    def __repr__(self) -> str:
        name = getattr(self.handler, "__name__", type(self.handler).__name__)
        return f"Command({name}, {Flag(self.flags).name or 'NONE'})"


#: Command name (upper case; lower case memoised on first use) -> entry.
CommandTable = dict[bytes, Command]


class ConnectionConfig(Protocol):
    """The settings a connection reads (:class:`~coordcore.server.server.ServerConfig`
    has them all)."""

    @property
    def max_args(self) -> int: ...
    @property
    def max_request_bytes(self) -> int: ...
    @property
    def max_inflight(self) -> int: ...
    @property
    def max_output_bytes(self) -> int: ...
    @property
    def write_high_water(self) -> int: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def requirepass(self) -> str | None: ...
    @property
    def acl_file(self) -> Path | None: ...


class IdSource(Protocol):
    def next_id(self) -> int: ...


class ServerView(Protocol):
    """The server as a connection sees it: nothing more."""

    #: Limits, and whether AUTH is required.
    @property
    def config(self) -> ConnectionConfig: ...
    #: The one command table.
    @property
    def commands(self) -> CommandTable: ...
    #: Bytes buffered across connections, and incomplete requests (idle sweep).
    @property
    def budget(self) -> Budget: ...
    @property
    def log(self) -> StructLog: ...
    #: The lock service's native lane for hot lock commands (None: no lock service).
    @property
    def lane(self) -> Any: ...
    #: The ID generator, for ``ID.NEXT`` answered natively (None: none yet).
    @property
    def ids(self) -> IdSource | None: ...
    #: The spans of traced commands (a ServerTracer; None: the server does not trace).
    @property
    def tracer(self) -> Any: ...
    #: Requests handled, all connections together (INFO).
    commands_total: int

    def admit(self, conn: Any) -> int | None:
        """Register a new connection: its id, or None if it is refused (-MAXCONN)."""

    def forget(self, conn: Any) -> None:
        """The connection has gone."""

    def track(self, fut: asyncio.Future[Any]) -> None:
        """A command in flight, for the shutdown to wait for."""
