"""The RESP connection, in-process (asyncio and uvloop): pipelining, errors, bounds,
auth, back-pressure, connection limit, misbehaving clients."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hiredis
from tests.server.ccserver import aio_raw, inprocess_server, read_reply

from coordcore.errors import ProtocolError
from coordcore.server.core import Command, Flag


def pack(*args: Any) -> bytes:
    return hiredis.pack_command(args)  # type: ignore[no-any-return]


async def roundtrip(port: int, data: bytes, n: int) -> list[Any]:
    reader, writer = await aio_raw(port)
    parser = hiredis.Reader()
    writer.write(data)
    replies = [await read_reply(reader, parser) for _ in range(n)]
    writer.close()
    return replies


async def is_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    try:
        while await asyncio.wait_for(reader.read(1 << 16), timeout):
            pass
        return True
    except ConnectionResetError:
        return True
    except asyncio.TimeoutError:
        return False


def test_basic_commands_and_errors(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path) as server:
            replies = await roundtrip(server.port, b"".join([
                pack("PING"), pack("ping", "hello"), pack("ECHO", "x"), pack("NOSUCH", "a"),
                pack("ID.RANGE"), pack("ID.RANGE", "abc"), pack("ID.RANGE", 0), pack("pInG"),
                pack("CLIENT", "SETINFO", "LIB-NAME", "x"), pack("COMMAND", "DOCS"),
            ]), 10)
            assert replies[:3] == [b"PONG", b"hello", b"x"]
            assert isinstance(replies[3], hiredis.ReplyError) and str(replies[3]).startswith("UNKNOWN ")
            for r in replies[4:7]:
                assert isinstance(r, hiredis.ReplyError) and str(r).startswith("BADARG "), r
            assert replies[7:9] == [b"PONG", b"OK"]
            # COMMAND DOCS: every command of this (ID-only) server's table, described, and
            # TRACEPARENT (a prefix the read loop resolves, outside the table)
            assert set(replies[9][::2]) == {n.lower() for n in server.commands} | {b"traceparent"}

    run(main(), timeout=30)


def test_pipelined_replies_in_order(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path) as server:
            n = 5000
            data = b"".join(pack("ECHO", str(i)) if i % 3 else pack("ID.NEXT") for i in range(n))
            replies = await roundtrip(server.port, data, n)
            ids = []
            for i, r in enumerate(replies):
                if i % 3:
                    assert r == str(i).encode()
                else:
                    ids.append(r)
            assert ids == sorted(ids) and len(set(ids)) == len(ids)

    run(main(), timeout=30)


def test_hello3_and_resp3_replies(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path) as server:
            hello, decoded, hello2, decoded2 = await roundtrip(server.port, b"".join([
                pack("HELLO", 3), pack("ID.DECODE", 2**40), pack("HELLO", 2), pack("ID.DECODE", 2**40)]), 4)
            assert isinstance(hello, dict) and hello[b"proto"] == 3 and hello[b"server"] == b"coordcore"
            assert isinstance(decoded, dict) and decoded[b"id"] == 2**40
            assert hello2[hello2.index(b"proto") + 1] == 2
            assert isinstance(decoded2, list) and decoded2[:2] == [b"id", 2**40]
            (bad,) = await roundtrip(server.port, pack("HELLO", 4), 1)
            assert str(bad).startswith("NOPROTO ")  # the code word clients look for

    run(main(), timeout=30)


def test_auth(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path, requirepass="s3cret") as server:
            r = await roundtrip(server.port, b"".join([
                pack("PING"), pack("ID.NEXT"), pack("AUTH", "wrong"), pack("PING"),
                pack("AUTH", "s3cret"), pack("PING"), pack("ID.NEXT")]), 7)
            assert str(r[0]).startswith("NOAUTH") and str(r[1]).startswith("NOAUTH")
            assert str(r[2]).startswith("WRONGPASS") and str(r[3]).startswith("NOAUTH")
            assert r[4:6] == [b"OK", b"PONG"] and isinstance(r[6], int)
            r = await roundtrip(server.port, b"".join([
                pack("HELLO", 3, "AUTH", "default", "nope"), pack("HELLO", 3, "AUTH", "default", "s3cret"),
                pack("PING")]), 3)
            assert str(r[0]).startswith("WRONGPASS") and r[1][b"proto"] == 3 and r[2] == b"PONG"

    run(main(), timeout=30)


def test_non_request_frames_get_proto_error_and_stream_goes_on(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path) as server:
            r = await roundtrip(server.port, b":5\r\n*2\r\n$4\r\nPING\r\n*1\r\n:1\r\n*0\r\n" + pack("PING"), 4)
            assert all(str(x).startswith(ProtocolError.code) for x in r[:3]), r
            assert r[3] == b"PONG"

    run(main(), timeout=30)


def test_garbage_gets_error_then_close(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path) as server:
            reader, writer = await aio_raw(server.port)
            parser = hiredis.Reader()
            writer.write(pack("PING") + b"GET / HTTP/1.1\r\n\r\n")
            assert await read_reply(reader, parser) == b"PONG"
            err = await read_reply(reader, parser)
            assert str(err).startswith("PROTO"), err
            assert await is_closed(reader)
            writer.close()
            # The server still serves others.
            assert await roundtrip(server.port, pack("PING"), 1) == [b"PONG"]

    run(main(), timeout=30)


def test_oversized_requests_are_refused_and_closed(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path, max_request_bytes=4096, max_args=8) as server:
            cases = [
                b"$100000\r\n" + b"x" * 9000,                     # a bulk over the bound, half sent
                b"*1\r\n$100000\r\n" + b"x" * 9000,               # same inside a request
                pack(*(["ECHO"] * 9)),                            # too many arguments
                b"*100000000\r\n" + b"$1\r\nx\r\n" * 2000,       # a huge array header
                b"*4000000000\r\n",                               # one hiredis cannot allocate
            ]
            for data in cases:
                reader, writer = await aio_raw(server.port)
                writer.write(data)
                parser = hiredis.Reader()
                err = await read_reply(reader, parser)
                assert str(err).startswith("TOOBIG"), (data[:20], err)
                assert await is_closed(reader)
                writer.close()
            assert await roundtrip(server.port, pack("PING"), 1) == [b"PONG"]

    run(main(), timeout=30)


def test_half_sent_frames_and_vanishing_clients(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path) as server:
            # A frame sent a byte at a time is assembled.
            reader, writer = await aio_raw(server.port)
            parser = hiredis.Reader()
            for b in pack("ECHO", "slow"):
                writer.write(bytes([b]))
                await writer.drain()
            assert await read_reply(reader, parser) == b"slow"
            # Clients that vanish mid-request (close and reset) do not disturb others.
            for abort in (False, True):
                r2, w2 = await aio_raw(server.port)
                w2.write(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$100\r\nabc")
                await w2.drain()
                if abort:
                    w2.transport.abort()
                else:
                    w2.close()
            writer.write(pack("PING"))
            assert await read_reply(reader, parser) == b"PONG"
            writer.close()
            await asyncio.sleep(0.05)
            assert len(server.connections) == 0

    run(main(), timeout=30)


def test_connection_limit(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path, max_connections=3) as server:
            conns = [await aio_raw(server.port) for _ in range(3)]
            for r, w in conns:
                w.write(pack("PING"))
                assert await read_reply(r, hiredis.Reader()) == b"PONG"
            reader, writer = await aio_raw(server.port)
            err = await read_reply(reader, hiredis.Reader())
            assert str(err).startswith("MAXCONN")
            assert await is_closed(reader)
            writer.close()
            conns[0][1].close()
            await asyncio.sleep(0.05)
            assert await roundtrip(server.port, pack("PING"), 1) == [b"PONG"]
            for _, w in conns[1:]:
                w.close()

    run(main(), timeout=30)


def test_backpressure_pauses_reading(run: Callable[..., Any], tmp_path: Path) -> None:
    """A client that writes requests but never reads replies stops being read: the
    server's output backlog stays near its high-water mark instead of growing."""

    async def main() -> None:
        async with inprocess_server(tmp_path, write_high_water=64 << 10) as server:
            reader, writer = await aio_raw(server.port)
            writer.transport.set_write_buffer_limits(high=1 << 30)
            payload = b"x" * 4000
            request = pack("ECHO", payload)
            for _ in range(20):
                writer.write(request * 250)  # ~1 MB of requests each round, ~20 MB total
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            (conn,) = server.connections
            assert conn.transport is not None
            backlog = conn.transport.get_write_buffer_size()
            # Bounded by high water + one drained read's replies (< 1 read of requests).
            assert backlog < 2 << 20, backlog
            assert conn._pause & 1  # reading is paused for back-pressure
            # Others are served meanwhile.
            assert await roundtrip(server.port, pack("PING"), 1) == [b"PONG"]
            # Draining our replies resumes it: every request gets its reply.
            parser = hiredis.Reader()
            for _ in range(20 * 250):
                assert await read_reply(reader, parser) == payload
            writer.close()

    run(main(), timeout=60)


def test_quit_closes_after_reply(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path) as server:
            reader, writer = await aio_raw(server.port)
            writer.write(pack("QUIT") + pack("PING"))
            assert await read_reply(reader, hiredis.Reader()) == b"OK"
            assert await is_closed(reader)
            writer.close()

    run(main(), timeout=30)


def test_id_range_runs(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path, max_id_range=20000) as server:
            replies = await roundtrip(server.port, pack("ID.RANGE", 10000) + pack("ID.RANGE", 20001) +
                                      pack("ID.RANGE", 1), 3)
            runs = replies[0]
            assert sum(c for _, c in runs) == 10000
            ids = [i for first, count in runs for i in range(first, first + count)]
            assert ids == sorted(ids) and len(set(ids)) == 10000
            assert all(1 <= c <= 4096 for _, c in runs)
            assert str(replies[1]).startswith("BADARG")
            assert replies[2][0][0] > ids[-1] and replies[2][0][1] == 1
            decoded = server.ids.decode(ids[0])
            assert decoded.worker == 2

    run(main(), timeout=30)


def test_many_idle_connections_while_others_are_served(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path) as server:
            idle = [await aio_raw(server.port) for _ in range(1000)]
            await asyncio.sleep(0.1)
            assert len(server.connections) == 1000
            replies = await roundtrip(server.port, b"".join(pack("ID.NEXT") for _ in range(100)), 100)
            assert len(set(replies)) == 100
            # Idle ones still work too.
            r, w = idle[500]
            w.write(pack("PING"))
            assert await read_reply(r, hiredis.Reader()) == b"PONG"
            for _, w in idle:
                w.close()

    run(main(), timeout=60)


def test_commands_in_flight_and_blocking_commands_keep_reply_order(run: Callable[..., Any], tmp_path: Path) -> None:
    """Commit-style commands run concurrently with replies in order; a blocking one parks
    its connection (later requests wait unparsed) without stalling other connections."""

    async def main() -> None:
        async with inprocess_server(tmp_path, max_inflight=8) as server:
            gate = asyncio.Event()
            started: list[bytes] = []

            def slow(conn: Any, req: list[bytes]) -> Any:
                started.append(req[1])

                async def later() -> bytes:
                    await asyncio.sleep(float(req[2]))
                    return b"+" + req[1] + b"\r\n"
                return later()

            def block(conn: Any, req: list[bytes]) -> Any:
                started.append(req[1])

                async def wait() -> bytes:
                    await gate.wait()
                    return b"+" + req[1] + b"\r\n"
                return wait()

            server.commands[b"T.SLOW"] = Command(slow)
            server.commands[b"T.BLOCK"] = Command(block, Flag.PARKS)
            # In-flight commands finish out of order; replies come back in order, and
            # quick replies queue behind them.
            replies = await roundtrip(server.port, pack("T.SLOW", "a", 0.05) + pack("T.SLOW", "b", 0.0) +
                                      pack("PING") + pack("T.SLOW", "c", 0.01), 4)
            assert replies == [b"a", b"b", b"PONG", b"c"]
            # More than max_inflight pipelined: all answered, in order.
            n = 50
            replies = await roundtrip(server.port, b"".join(pack("T.SLOW", str(i), 0.001 * (i % 3))
                                                            for i in range(n)), n)
            assert replies == [str(i).encode() for i in range(n)]
            # A blocking command parks its connection: what follows is not even started.
            started.clear()
            reader, writer = await aio_raw(server.port)
            parser = hiredis.Reader()
            writer.write(pack("T.BLOCK", "x") + pack("T.SLOW", "y", 0) + pack("ECHO", "z"))
            await asyncio.sleep(0.05)
            assert started == [b"x"]
            # ... while other connections are served.
            assert await roundtrip(server.port, pack("PING"), 1) == [b"PONG"]
            gate.set()
            assert [await read_reply(reader, parser) for _ in range(3)] == [b"x", b"y", b"z"]
            assert started == [b"x", b"y"]
            # A client that goes away while parked: the wait is cancelled.
            gate.clear()
            writer.write(pack("T.BLOCK", "gone"))
            await asyncio.sleep(0.05)
            (conn,) = [c for c in server.connections if c._parked is not None]
            parked = conn._parked
            writer.transport.abort()
            await asyncio.sleep(0.05)
            assert parked is not None and parked.cancelled(), (conn._pause, conn._closing, conn in server.connections)

    run(main(), timeout=30)
