"""The server's commands that need no lock state: connection, introspection and IDs.

Each handler takes the connection and the request (``[name, arg1, ...]`` as bytes)
and returns the encoded reply; a handler that must wait returns an awaitable instead
(see :mod:`coordcore.server.protocol`). Bad arguments raise coordcore errors, which
the read loop turns into ``-CODE message`` replies.
"""
from __future__ import annotations

import hmac
import os
import time
from typing import TYPE_CHECKING

from coordcore.errors import AuthFailed, AuthRequired, BadArgument, UnknownCommand
from coordcore.server import resp

if TYPE_CHECKING:
    from coordcore.server.protocol import Connection, Handler

__all__ = ["auth_required", "core_commands", "id_commands", "noauth_commands", "parse_float", "parse_int",
           "require_args", "unknown_command"]

def require_args(req: list[bytes], low: int, high: int | None = None) -> None:
    """Check the argument count (the command name not included)."""
    n = len(req) - 1
    if n < low or (high is not None and n > high):
        name = req[0].decode("ascii", "replace").lower()
        raise BadArgument(f"wrong number of arguments for '{name}'")


def parse_int(value: bytes, what: str, low: int, high: int) -> int:
    """An integer argument in [low, high], or BadArgument saying which one is wrong."""
    try:
        if len(value) > 20:
            raise ValueError
        number = int(value)
    except ValueError:
        raise BadArgument(f"{what} is not an integer: {value[:24]!r}") from None
    if not low <= number <= high:
        raise BadArgument(f"{what} must be in [{low}, {high}], got {number}")
    return number


def parse_float(value: bytes, what: str, low: float, high: float) -> float:
    try:
        if len(value) > 32:
            raise ValueError
        number = float(value)
    except ValueError:
        raise BadArgument(f"{what} is not a number: {value[:24]!r}") from None
    if not low <= number <= high:  # also rejects nan
        raise BadArgument(f"{what} must be in [{low}, {high}], got {number}")
    return number


# --- connection ----------------------------------------------------------------------


def cmd_ping(conn: Connection, req: list[bytes]) -> bytes:
    require_args(req, 0, 1)
    if len(req) == 2:
        return resp.encode_bulk(req[1])
    return resp.PONG


def cmd_echo(conn: Connection, req: list[bytes]) -> bytes:
    require_args(req, 1, 1)
    return resp.encode_bulk(req[1])


def cmd_quit(conn: Connection, req: list[bytes]) -> bytes:
    conn.close_after_reply()
    return resp.OK


def _check_password(conn: Connection, user: bytes, password: bytes) -> None:
    expected = conn.config.requirepass
    if expected is None:
        raise AuthFailed("AUTH called without any password configured for this server")
    # Constant time, and the user name is checked the same way (only 'default' exists).
    ok_pass = hmac.compare_digest(password, expected.encode())
    ok_user = hmac.compare_digest(user, b"default")
    if not (ok_pass and ok_user):
        conn.server.log.warning("auth failed", conn=conn.id, peer=conn.peer)
        raise AuthFailed("invalid username-password pair or user is disabled")
    conn.authenticated = True
    conn.table = conn.server.commands
    conn.fallback = unknown_command


def cmd_auth(conn: Connection, req: list[bytes]) -> bytes:
    require_args(req, 1, 2)
    if len(req) == 2:
        _check_password(conn, b"default", req[1])
    else:
        _check_password(conn, req[1], req[2])
    return resp.OK


def cmd_hello(conn: Connection, req: list[bytes]) -> bytes:
    args = req[1:]
    proto = 3 if conn.resp3 else 2
    if args:
        proto = parse_int(args[0], "protocol version", 0, 2**31)
        if proto not in (2, 3):
            raise BadArgument(f"unsupported protocol version {proto} (NOPROTO)")
        i = 1
        while i < len(args):
            opt = args[i].upper()
            if opt == b"AUTH":
                if i + 2 >= len(args):
                    raise BadArgument("HELLO AUTH needs a user name and a password")
                _check_password(conn, args[i + 1], args[i + 2])
                i += 3
            elif opt == b"SETNAME" and i + 1 < len(args):
                conn.name = args[i + 1][:128]
                i += 2
            else:
                raise BadArgument(f"syntax error in HELLO option {args[i][:24]!r}")
    if not conn.authenticated:
        raise AuthRequired("authentication required: HELLO 3 AUTH default <password>, or AUTH <password>")
    conn.resp3 = proto == 3
    pairs = [
        (b"server", resp.encode_bulk(b"coordcore")),
        (b"version", resp.encode_bulk(conn.server.version.encode())),
        (b"proto", resp.encode_int(proto)),
        (b"id", resp.encode_int(conn.id)),
        (b"mode", resp.encode_bulk(b"standalone")),
        (b"role", resp.encode_bulk(b"master")),
        (b"modules", resp.encode_array([])),
    ]
    return resp.encode_map(pairs, conn.resp3)


def cmd_client(conn: Connection, req: list[bytes]) -> bytes:
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


def cmd_select(conn: Connection, req: list[bytes]) -> bytes:
    require_args(req, 1, 1)
    if req[1] != b"0":
        raise BadArgument("coordcore has only database 0")
    return resp.OK


def cmd_command(conn: Connection, req: list[bytes]) -> bytes:
    """Minimal COMMAND: enough for redis-cli and redis-benchmark, which only probe it."""
    if len(req) >= 2:
        sub = req[1].upper()
        if sub == b"COUNT":
            return resp.encode_int(len(conn.server.command_names))
        if sub == b"DOCS":
            return resp.encode_map([], conn.resp3)
    return resp.encode_array([])


def cmd_config(conn: Connection, req: list[bytes]) -> bytes:
    """``CONFIG GET`` answers an empty map (redis-benchmark asks for 'save'/'appendonly')."""
    require_args(req, 1)
    if req[1].upper() == b"GET":
        return resp.encode_map([(param, resp.encode_bulk(b"")) for param in req[2:3]], conn.resp3)
    raise BadArgument("coordcore is configured by its command line, not CONFIG")


def cmd_info(conn: Connection, req: list[bytes]) -> bytes:
    server = conn.server
    lines = ["# Server", f"coordcore_version:{server.version}", f"process_id:{os.getpid()}",
             f"tcp_port:{server.port}", f"uptime_in_seconds:{int(time.monotonic() - server.started)}",
             f"role:{server.role}", "", "# Clients", f"connected_clients:{len(server.connections)}",
             f"maxclients:{server.config.max_connections}", "", "# Stats",
             f"total_connections_received:{server.connections_total}",
             f"total_commands_processed:{server.commands_total}", ""]
    lines += server.info_sections()
    return resp.encode_bulk("\r\n".join(lines).encode())


def core_commands() -> dict[bytes, Handler]:
    return {
        b"PING": cmd_ping,
        b"ECHO": cmd_echo,
        b"QUIT": cmd_quit,
        b"AUTH": cmd_auth,
        b"HELLO": cmd_hello,
        b"CLIENT": cmd_client,
        b"SELECT": cmd_select,
        b"COMMAND": cmd_command,
        b"CONFIG": cmd_config,
        b"INFO": cmd_info,
    }


# --- IDs -----------------------------------------------------------------------------


def cmd_id_next(conn: Connection, req: list[bytes]) -> bytes:
    if len(req) != 1:
        require_args(req, 0, 0)
    return b":%d\r\n" % conn.server.ids.next_id()


def cmd_id_range(conn: Connection, req: list[bytes]) -> bytes:
    """``ID.RANGE n``: exactly n IDs as runs ``[[start, count], ...]`` of consecutive
    integers; each run comes from one millisecond, so one run holds up to 4096."""
    require_args(req, 1, 1)
    n = parse_int(req[1], "count", 1, conn.config.max_id_range)
    next_run = conn.server.ids.next_run
    runs: list[bytes] = []
    while n > 0:
        first, count = next_run(n)
        runs.append(b"*2\r\n:%d\r\n:%d\r\n" % (first, count))
        n -= count
    return b"*%d\r\n%b" % (len(runs), b"".join(runs))


def cmd_id_decode(conn: Connection, req: list[bytes]) -> bytes:
    require_args(req, 1, 1)
    ident = parse_int(req[1], "id", 0, 2**63 - 1)
    d = conn.server.ids.decode(ident)
    return resp.encode_map([
        (b"id", resp.encode_int(d.id)),
        (b"timestamp_ms", resp.encode_int(d.timestamp_ms)),
        (b"datetime", resp.encode_bulk(d.datetime.isoformat().encode())),
        (b"datacenter", resp.encode_int(d.datacenter)),
        (b"worker", resp.encode_int(d.worker)),
        (b"sequence", resp.encode_int(d.sequence)),
    ], conn.resp3)


def cmd_id_workers(conn: Connection, req: list[bytes]) -> bytes:
    """``ID.WORKERS``: the ``host:port`` of every ID-serving process of this server."""
    require_args(req, 0, 0)
    return resp.encode_array([resp.encode_bulk(a.encode()) for a in conn.server.id_endpoints()])


def id_commands() -> dict[bytes, Handler]:
    return {
        b"ID.NEXT": cmd_id_next,
        b"ID.RANGE": cmd_id_range,
        b"ID.DECODE": cmd_id_decode,
        b"ID.WORKERS": cmd_id_workers,
    }


def unknown_command(conn: Connection, req: list[bytes]) -> bytes:
    name = req[0][:32].decode("ascii", "replace")
    return resp.encode_exception(UnknownCommand(f"unknown command '{name}'"))


def auth_required(conn: Connection, req: list[bytes]) -> bytes:
    return resp.encode_exception(AuthRequired("authentication required"))


def noauth_commands() -> dict[bytes, Handler]:
    """The table a connection uses until it authenticates."""
    return {b"AUTH": cmd_auth, b"HELLO": cmd_hello, b"QUIT": cmd_quit}
