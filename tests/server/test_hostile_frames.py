"""Frames outside the request grammar, as a hostile client sends them (issue 9, items 3
and 7). Before: after ``+x\\r\\n`` the stream went whole to hiredis, and a header such as
``*2147483647`` made it reserve 2**31 slots (every client stalled ~5 s); a RESP3 map
keyed by an array raised TypeError inside the server and dropped the connection with a
traceback. Now every header is bounded natively before hiredis sees one whole frame."""
from __future__ import annotations

import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.server.ccserver import Raw, ServerProc, serve  # noqa: F401 (serve is a fixture)
from tests.server.test_server_fuzz import FakeTransport, make_server
from coordcore._native import lockwire as lw
from coordcore.errors import ProtocolError, RequestTooLarge
from coordcore.server.protocol import Connection

Serve = Callable[..., ServerProc]

HUGE_HEADERS = [b"*2147483647\r\n", b"~2147483647\r\n", b"%2147483647\r\n", b">2147483647\r\n",
                b"|2147483647\r\n", b"$2147483647\r\n", b"=2147483647\r\n", b"!2147483647\r\n",
                b"*999999999999999999\r\n"]


def _wire(max_args: int = 16, max_request: int = 4096) -> lw.WireConn:
    return lw.WireConn(object(), max_args, max_request)


# --- the native frame scanner --------------------------------------------------------------

def test_take_frame_takes_one_whole_frame_of_every_resp_type() -> None:
    frames = [b"+OK\r\n", b"-ERR x\r\n", b":-5\r\n", b"_\r\n", b",1.5\r\n", b"#t\r\n", b"(12345678901234567890\r\n",
              b"$3\r\nabc\r\n", b"$-1\r\n", b"*-1\r\n", b"=8\r\ntxt:abcd\r\n", b"!3\r\nerr\r\n", b"*0\r\n",
              b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n", b"%1\r\n+k\r\n:1\r\n", b"~2\r\n:1\r\n:2\r\n", b">1\r\n+p\r\n",
              b"|1\r\n+key\r\n+val\r\n:42\r\n"]
    w = _wire()
    w.feed(b"".join(frames))
    assert [w.take_frame() for _ in frames] == frames
    assert w.take_frame() is False


@given(st.lists(st.integers(0, 400), max_size=6))
def test_take_frame_waits_for_the_whole_frame_however_it_is_split(cuts: list[int]) -> None:
    stream = b"*3\r\n%1\r\n$1\r\na\r\n*1\r\n:1\r\n$5\r\nhello\r\n|1\r\n+a\r\n+b\r\n:7\r\n" + b"+done\r\n"
    w = _wire()
    got: list[bytes] = []
    last = 0
    for cut in sorted({min(c, len(stream)) for c in cuts} | {len(stream)}):
        w.feed(stream[last:cut])
        last = cut
        while (f := w.take_frame()) is not False:
            got.append(f)  # type: ignore[arg-type]
    assert b"".join(got) == stream and got[-1] == b"+done\r\n" and len(got) == 2


@pytest.mark.parametrize("header", HUGE_HEADERS)
def test_a_huge_header_is_refused_before_any_parser_sees_it(header: bytes) -> None:
    w = _wire()
    w.feed(header)
    with pytest.raises(RequestTooLarge):
        w.take_frame()


def test_deep_nesting_long_lines_and_non_resp_bytes_are_refused() -> None:
    w = _wire(max_request=1 << 20)
    w.feed(b"*1\r\n" * 40 + b":1\r\n")
    with pytest.raises(RequestTooLarge, match="deeper"):
        w.take_frame()
    w = _wire(max_request=64)
    w.feed(b"+" + b"x" * 100)  # a line with no end, past the bound
    with pytest.raises(RequestTooLarge):
        w.take_frame()
    for bad in (b"?what\r\n", b"$3\r\nabcd\r\n", b"*-2\r\n", b"%-1\r\n", b"+x\n", b"$x\r\n"):
        w = _wire()
        w.feed(bad)
        with pytest.raises(ProtocolError):
            w.take_frame()


# --- against a live server -----------------------------------------------------------------

def _prober(port: int, stop: threading.Event, latencies: list[float]) -> None:
    with Raw(port) as raw:
        while not stop.is_set():
            t = time.monotonic()
            assert raw.command("PING") == b"PONG"
            latencies.append(time.monotonic() - t)
            time.sleep(0.005)


def _send_and_read(port: int, data: bytes) -> tuple[bytes, bool]:
    """What the server answers to ``data`` and whether it then closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        got = b""
        closed = False
        s.settimeout(1.0)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                got += chunk
        except TimeoutError:
            pass
        return got, closed


def test_huge_headers_after_foreign_bytes_never_stall_other_clients(serve: Serve) -> None:
    srv = serve()
    stop = threading.Event()
    latencies: list[float] = []
    prober = threading.Thread(target=_prober, args=(srv.port, stop, latencies))
    prober.start()
    def attack() -> None:
        for _ in range(20):
            for header in HUGE_HEADERS:
                got, closed = _send_and_read(srv.port, b"+x\r\n" + header)
                assert got.startswith(b"-PROTO") and b"-TOOBIG" in got and closed, (header, got)

    attackers = [threading.Thread(target=attack) for _ in range(4)]
    try:
        for a in attackers:
            a.start()
        for a in attackers:
            a.join(120)
    finally:
        stop.set()
        prober.join(30)
    assert latencies, "the prober got no answer at all"
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 100 else max(latencies)
    print(f"\nprober PING during 720 attacks: {len(latencies)} pings, p99 {p99 * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms")
    assert max(latencies) < 2.0  # a hang guard only: before the fix each header cost ~5 s


def test_a_map_keyed_by_an_array_gets_proto_not_a_traceback(serve: Serve) -> None:
    srv = serve()
    got, closed = _send_and_read(srv.port, b"+x\r\n%1\r\n*1\r\n$1\r\na\r\n$1\r\nb\r\n")
    assert got.startswith(b"-PROTO") and got.count(b"-PROTO") == 2 and closed, got
    with Raw(srv.port) as raw:
        assert raw.command("PING") == b"PONG"
    log = srv.log()
    assert "Traceback" not in log and "Fatal error" not in log, log


@given(st.lists(st.sampled_from([b"+x\r\n", b"*1\r\n", b"$1\r\na\r\n", b"%1\r\n", b"~1\r\n", b"|1\r\n", b":1\r\n",
                                 b"*2147483647\r\n", b"$-1\r\n", b"_\r\n", b"\r\n", b"?", b"*1\r\n$4\r\nPING\r\n",
                                 b">1\r\n", b"#t\r\n", b"=3\r\nabc\r\n"]), min_size=1, max_size=12))
def test_random_resp_ish_streams_get_replies_or_a_clean_close(chunks: list[bytes]) -> None:
    """In process (FakeTransport): every stream ends with replies and, if it broke the
    grammar beyond repair, one -PROTO/-TOOBIG and a close; nothing raises."""
    server = make_server(Path(tempfile.mkdtemp()))
    conn = Connection(server)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(b"".join(chunks))
    reader = hiredis.Reader()
    reader.feed(bytes(transport.out))
    replies = []
    while (r := reader.gets()) is not False:
        replies.append(r)
    for r in replies:  # a PING's answer, or an error with a code word (a "+x" in an array is a command x)
        assert r == b"PONG" or isinstance(r, hiredis.ReplyError) and str(r).split()[0] in ("PROTO", "TOOBIG",
                                                                                            "UNKNOWN"), r
    if transport.closed:
        assert replies and str(replies[-1]).split()[0] in ("PROTO", "TOOBIG")
    conn.connection_lost(None)


def test_a_bulk_string_longer_than_its_header_runs_nothing(serve: Serve) -> None:
    """``*1 $4 PINGXX``: hiredis read the 4 bytes, skipped two without looking, and ran
    PING before answering -PROTO for the rest; the frame is refused whole now."""
    srv = serve()
    got, closed = _send_and_read(srv.port, b"*1\r\n$4\r\nPINGXX\r\n")
    assert got.startswith(b"-PROTO") and b"PONG" not in got and closed, got
