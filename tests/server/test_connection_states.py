"""The connection's state machine: each hold is entered and left where the protocol
says, EOF and close take their states, and no transition outside TRANSITIONS is made
(an illegal one raises). In process, over a fake transport."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hiredis
import pytest

from coordcore.ids import Snowflake
from coordcore.server import Server, ServerConfig
from coordcore.server.core import Command, Flag
from coordcore.server.log import configure
from coordcore.server.protocol import TRANSITIONS, Connection, State
from tests.server.test_server_fuzz import FakeTransport


class Transport(FakeTransport):
    """The fuzz tests' fake transport, reading back what was written."""

    def replies(self) -> list[Any]:
        reader = hiredis.Reader()
        reader.feed(bytes(self.out))
        got = []
        while (r := reader.gets()) is not False:
            got.append(r)
        return got


def pack(*args: str | bytes) -> bytes:
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts)


def make(tmp_path: Path, **config: Any) -> tuple[Server, dict[bytes, asyncio.Future[bytes]]]:
    """A server (not listening) with test commands: T.WAIT name (waits for the future
    of that name), T.PARK name (the same, flagged PARKS), T.READ (flagged READS)."""
    server = Server(ServerConfig(port=0, data_dir=tmp_path, **config),
                    log=configure("kv", "critical", name="coordcore.server.states"))
    server.ids = Snowflake(1, clock="logical")
    server.worker_id, server.datacenter_id = 1, 0
    server.commands = server.base_commands()
    gates: dict[bytes, asyncio.Future[bytes]] = {}

    def wait(conn: Any, req: list[bytes]) -> Any:
        gate = gates.setdefault(req[1], asyncio.get_running_loop().create_future())

        async def later() -> bytes:
            return await gate
        return later()

    server.commands[b"T.WAIT"] = Command(wait)
    server.commands[b"T.PARK"] = Command(wait, Flag.PARKS)
    server.commands[b"T.READ"] = Command(lambda conn, req: b"+read\r\n", Flag.READS)
    return server, gates


def connect(server: Server) -> tuple[Connection, Transport]:
    conn = Connection(server)
    assert conn.state is State.NEW
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    assert conn.state is State.READY
    return conn, transport


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_every_state_can_close_and_closed_is_final() -> None:
    assert set(TRANSITIONS) == set(State)
    assert TRANSITIONS[State.CLOSED] == frozenset()
    for state in State:
        if state is not State.CLOSED:
            assert State.CLOSED in TRANSITIONS[state], state
    # A hold is left only for READY.
    for hold in (State.PARKED, State.BARRIER, State.FULL):
        assert TRANSITIONS[hold] - {State.CLOSING, State.CLOSED} <= {State.READY, State.ENDED}


def test_parked_holds_what_follows_until_answered(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        server, gates = make(tmp_path)
        conn, transport = connect(server)
        conn.data_received(pack("T.PARK", "a") + pack("PING"))
        assert conn.state is State.PARKED and conn.wire.buffered > 0  # PING unparsed
        gates[b"a"].set_result(b"+a\r\n")
        await turns()
        assert conn.state is State.READY and transport.replies() == [b"a", b"PONG"]
        conn.connection_lost(None)
        assert conn.state is State.CLOSED

    run(main())


def test_a_read_behind_writes_in_flight_waits_at_the_barrier(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        server, gates = make(tmp_path)
        conn, transport = connect(server)
        conn.data_received(pack("T.WAIT", "w") + pack("PING") + pack("T.READ") + pack("PING"))
        # PING behind a slot in flight is parsed (pipelining); the read is not.
        assert conn.state is State.BARRIER and transport.replies() == []
        gates[b"w"].set_result(b"+w\r\n")
        await turns()
        assert conn.state is State.READY
        assert transport.replies() == [b"w", b"PONG", b"read", b"PONG"]

    run(main())


def test_full_at_max_inflight_and_ready_again_at_half(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        server, gates = make(tmp_path, max_inflight=4)
        conn, transport = connect(server)
        conn.data_received(b"".join(pack("T.WAIT", str(i)) for i in range(6)))
        assert conn.state is State.FULL and len(gates) == 4
        gates[b"0"].set_result(b"+0\r\n")
        await turns()
        assert conn.state is State.FULL  # 3 in flight: over half
        gates[b"1"].set_result(b"+1\r\n")
        await turns()
        # 2 in flight (half): parsing resumed, the last two started, and 4 are in flight again.
        assert len(gates) == 6 and conn.state is State.FULL
        for i in range(2, 6):
            gates[b"%d" % i].set_result(b"+%d\r\n" % i)
        await turns()
        assert transport.replies() == [str(i).encode() for i in range(6)] and conn.state is State.READY

    run(main())


def test_eof_with_work_in_flight_ends_then_closes(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        server, gates = make(tmp_path)
        conn, transport = connect(server)
        conn.data_received(pack("T.WAIT", "x") + pack("ECHO", "y"))
        assert conn.eof_received() is True and conn.state is State.ENDED
        assert not transport.closed
        gates[b"x"].set_result(b"+x\r\n")
        await turns()
        assert transport.replies() == [b"x", b"y"] and transport.closed and conn.state is State.CLOSING
        # With nothing in flight, or parked, EOF closes at once.
        conn2, _ = connect(server)
        assert conn2.eof_received() is None
        conn3, _ = connect(server)
        conn3.data_received(pack("T.PARK", "p"))
        assert conn3.state is State.PARKED and conn3.eof_received() is None

    run(main())


def test_quit_closes_and_an_illegal_transition_raises(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        server, _ = make(tmp_path)
        conn, transport = connect(server)
        conn.data_received(pack("QUIT") + pack("PING"))
        assert conn.state is State.CLOSING and transport.replies() == [b"OK"]
        await turns()
        assert transport.closed
        conn.connection_lost(None)
        with pytest.raises(RuntimeError, match="no transition from CLOSED to READY"):
            conn._set_state(State.READY)

    run(main())


def test_before_auth_only_noauth_commands_are_served(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        server, _ = make(tmp_path, requirepass="pw")
        conn, transport = connect(server)
        assert not conn.authenticated
        conn.data_received(pack("PING") + pack("NOPE") + pack("AUTH", "pw") + pack("PING") + pack("NOPE"))
        got = transport.replies()
        assert [str(r).split()[0] if isinstance(r, hiredis.ReplyError) else r for r in got] == \
            ["NOAUTH", "NOAUTH", b"OK", b"PONG", "UNKNOWN"]
        assert conn.authenticated and conn.state is State.READY

    run(main())
