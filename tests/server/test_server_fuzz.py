"""Protocol fuzzing: random and mutated RESP into the connection's read loop (no
network, a fake transport) and into a live `coordcore serve`; never a crash, every
byte written back is well-formed RESP, valid requests get the right replies, and the
server keeps answering others."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hiredis
from tests.server.ccserver import Raw, ServerProc, serve  # noqa: F401 (serve is a fixture)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordcore.ids import Snowflake
from coordcore.server import Server, ServerConfig
from coordcore.server.log import configure
from coordcore.server.protocol import Connection


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def make_server(tmp: Path) -> Server:
    server = Server(ServerConfig(port=0, data_dir=tmp, max_request_bytes=2048, max_args=16),
                    log=configure("kv", "critical", name="coordcore.server.fuzz"))
    server.ids = Snowflake(5, clock="logical")
    server.worker_id, server.datacenter_id = 5, 0
    server.commands = server.base_commands()
    return server


def parse_all(data: bytes) -> list[Any]:
    reader = hiredis.Reader()
    reader.feed(data)
    frames = []
    while (frame := reader.gets()) is not False:
        frames.append(frame)
    assert reader.gets() is False
    return frames


def encode_request(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


token = st.sampled_from([b"PING", b"ECHO", b"ID.NEXT", b"ID.RANGE", b"ID.DECODE", b"HELLO", b"INFO",
                         b"COMMAND", b"CLIENT", b"AUTH", b"NOPE", b"id.next", b"3", b"-1", b"2", b"x",
                         # Lock commands: with no session open they must all fail (NOSESSION,
                         # BADARG...) and change nothing; SESSION.OPEN is left out on purpose.
                         b"LOCK.ACQUIRE", b"LOCK.TRY", b"LOCK.RELEASE", b"LOCK.INFO", b"SEM.ACQUIRE",
                         b"ELECT.CAMPAIGN", b"ELECT.PROCLAIM", b"SESSION.CLOSE", b"SESSION.KEEPALIVE",
                         b"WATCH", b"UNWATCH", b"SHARED", b"TIMEOUT", b"TOKEN", b"1", b"0"])
arg = st.one_of(token, st.binary(max_size=40))
request = st.lists(arg, min_size=1, max_size=6).map(lambda args: ("req", args))
junk = st.one_of(
    st.binary(max_size=64).map(lambda b: ("junk", b)),
    st.sampled_from([b"*-1\r\n", b"*0\r\n", b":1\r\n", b"$-1\r\n", b"*2\r\n:1\r\n:2\r\n", b"+OK\r\n",
                     b"*1\r\n*1\r\n$1\r\nx\r\n", b"$5\r\nab\r\n", b"*x\r\n", b"\r\n", b"*99999999999\r\n",
                     b"$3000\r\n", b"%1\r\n+a\r\n+b\r\n", b">1\r\n+a\r\n", b"*20\r\n"]).map(
        lambda b: ("junk", b)),
)


def to_bytes(part: tuple[str, Any]) -> bytes:
    kind, value = part
    return encode_request(value) if kind == "req" else bytes(value)
stream = st.lists(st.one_of(request, request, junk), max_size=12)


def split_points(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for p in [*points, len(data)]:
        chunks.append(data[last:p])
        last = p
    return [c for c in chunks if c]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=stream, cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_read_loop_never_crashes_and_writes_valid_resp(tmp_path: Path, parts: list[tuple[str, Any]],
                                                       cuts: list[int]) -> None:
    loop = asyncio.new_event_loop()
    try:
        server = make_server(tmp_path)

        async def main() -> None:
            transport = FakeTransport()
            conn = Connection(server)
            conn.connection_made(transport)  # type: ignore[arg-type]
            data = b"".join(map(to_bytes, parts))
            for chunk in split_points(data, cuts):
                if transport.closed:
                    break
                conn.data_received(chunk)
            await asyncio.sleep(0)  # QUIT closes on the next loop turn
            frames = parse_all(bytes(transport.out))
            # Replies to the leading run of well-formed requests are exactly right.
            for (kind, args), frame in zip(parts, frames):
                if kind != "req":
                    break
                name = args[0].upper()
                if name == b"ECHO" and len(args) == 2:
                    assert frame == args[1]
                elif name == b"PING" and len(args) == 1:
                    assert frame == b"PONG"
                elif name == b"NOPE":
                    assert str(frame).startswith("UNKNOWN")
                elif name == b"ID.NEXT" and len(args) == 1:
                    assert isinstance(frame, int) and frame > 0
                elif name == b"QUIT":
                    break
            conn.connection_lost(None)
            assert conn not in server.connections

        loop.run_until_complete(main())
    finally:
        loop.close()


def test_live_server_fuzz(serve: Callable[..., ServerProc]) -> None:
    srv = serve("--max-request-bytes", "4096", "--max-args", "32")
    with Raw(srv.port) as probe:
        before = probe.command("INFO")
        revision = probe.command("LOCKS.REVISION")

        @settings(max_examples=80, deadline=None)
        @given(parts=stream, cuts=st.lists(st.integers(0, 10_000), max_size=4))
        def fuzz(parts: list[tuple[str, Any]], cuts: list[int]) -> None:
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            try:
                data = b"".join(map(to_bytes, parts))
                for chunk in split_points(data, cuts):
                    try:
                        sock.sendall(chunk)
                    except OSError:  # the server closed on a bad frame
                        break
                try:
                    sock.shutdown(socket.SHUT_WR)  # EOF: the server finishes and closes
                    received = bytearray()
                    while chunk_in := sock.recv(1 << 16):
                        received += chunk_in
                except OSError:  # reset or already closed by the server
                    return
                parse_all(bytes(received))
            finally:
                sock.close()
            assert probe.command("PING") == b"PONG"

        fuzz()
        after = probe.command("INFO")
        assert probe.command("LOCKS.REVISION") == revision  # bad input changed no lock state
        assert probe.command("LOCKS.KEYS") == []
    assert b"role:main" in before and b"role:main" in after
    assert srv.proc is not None and srv.proc.poll() is None
    assert "Traceback" not in srv.log()


# --- the native lane under pipelines: every request answered, in order ----------------------

LANE_KEYS = [b"k1", b"k2"]
#: Stands for the credential of the session the test opens (random, known only then).
SESSION = b"<session 1>"


def lane_request(draw: Any) -> tuple[str, list[bytes]]:
    """A request on session 1 (opened by the test), or a frame that is not a request."""
    key = draw(st.sampled_from(LANE_KEYS))
    kind = draw(st.sampled_from(["acquire", "release", "try", "info", "ping", "echo", "id", "frame"]))
    if kind == "acquire":
        extra = draw(st.sampled_from([[], [b"REQID", b"%d" % draw(st.integers(1, 5))], [b"SHARED"]]))
        return kind, [b"LOCK.ACQUIRE", key, SESSION, b"TIMEOUT", b"20", *extra]  # one session: often HELD
    if kind == "release":
        extra = draw(st.sampled_from([[], [b"TOKEN", b"0"], [b"REQID", b"%d" % draw(st.integers(6, 9))]]))
        return kind, [b"LOCK.RELEASE", key, SESSION, *extra]
    if kind == "try":
        return kind, [b"LOCK.TRY", key, SESSION]
    if kind == "info":
        return kind, [b"LOCK.INFO", key]
    if kind == "ping":
        return kind, [b"PING"]
    if kind == "echo":
        return kind, [b"ECHO", draw(st.binary(min_size=1, max_size=8))]
    if kind == "id":
        return kind, [b"ID.NEXT"]
    return kind, [draw(st.sampled_from([b":5\r\n", b"*0\r\n", b"*1\r\n:1\r\n"]))]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_lane_and_table_answer_every_request_in_order(tmp_path: Path, data: st.DataObject, cuts: list[int]) -> None:
    from coordcore.locks.service import LockService

    requests = [data.draw(st.composite(lambda draw: lane_request(draw))()) for _ in
                range(data.draw(st.integers(1, 16)))]
    loop = asyncio.new_event_loop()
    try:
        async def main() -> None:
            server = make_server(tmp_path)
            svc = await LockService.in_memory()
            server.serve_locks(svc)
            try:
                session = await svc.open_session(60, keepalive=False)
                assert session.id == 1
                transport = FakeTransport()
                conn = Connection(server)
                conn.connection_made(transport)  # type: ignore[arg-type]
                stream = b"".join(encode_request([session.credential if a == SESSION else a for a in args])
                                  if kind != "frame" else args[0] for kind, args in requests)
                for chunk in split_points(stream, cuts):
                    conn.data_received(chunk)
                frames: list[Any] = []
                for _ in range(400):  # replies come as batches commit (acquires may wait 20 ms)
                    frames = parse_all(bytes(transport.out))
                    if len(frames) >= len(requests):
                        break
                    await asyncio.sleep(0.005)
                assert len(frames) == len(requests), (len(frames), requests)
                for (kind, args), frame in zip(requests, frames):
                    if kind == "acquire":
                        # A REQID used again after that wait ended: NOTFOUND (WAIT_ENDED), not a new wait.
                        assert isinstance(frame, int) or str(frame).startswith(("TIMEOUT", "HELD")) \
                            or (b"REQID" in args and str(frame).startswith("NOTFOUND")), (args, frame)
                    elif kind == "release":
                        assert frame == b"OK" or str(frame).startswith("NOTHOLDER"), (args, frame)
                    elif kind == "try":
                        assert frame is None or isinstance(frame, int) or str(frame).startswith("HELD"), \
                            (args, frame)
                    elif kind == "info":
                        assert isinstance(frame, list) and frame[1] == args[1], (args, frame)
                    elif kind == "ping":
                        assert frame == b"PONG"
                    elif kind == "echo":
                        assert frame == args[1]
                    elif kind == "id":
                        assert isinstance(frame, int) and frame > 0
                    else:
                        assert str(frame).startswith("PROTO"), frame
                assert not transport.closed
                conn.connection_lost(None)
            finally:
                await svc.close()

        loop.run_until_complete(main())
    finally:
        loop.close()
