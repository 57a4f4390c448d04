"""Redis tools against a live `coordcore serve` on loopback: inline commands (telnet,
nc, redis-benchmark's PING_INLINE), redis-cli, redis-benchmark."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest
from tests.server.ccserver import ServerProc

from coordcore.errors import ProtocolError
from coordcore.server.protocol import split_inline


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        why = f"{name} is not installed (Debian: apt-get install redis-tools; ./dev test installs it as root)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    proc = ServerProc(tmp_path_factory.mktemp("tools") / "data", "--unsafe-no-fsync").start()
    yield proc
    proc.kill()
    print(f"--- server log ---\n{proc.log()[-20000:]}")


def nc(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """What ``printf ... | nc`` shows: send, half-close, read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(1 << 16):
            out += chunk
        return out


# --- inline commands ------------------------------------------------------------------


@pytest.mark.parametrize(("line", "args"), [
    (b"PING", [b"PING"]),
    (b"  set  k   v ", [b"set", b"k", b"v"]),
    (b'ECHO "a b" c', [b"ECHO", b"a b", b"c"]),
    (rb'ECHO "\x41\x4a\n\t\"\\" x', [b"ECHO", b'AJ\n\t"\\', b"x"]),
    (rb'ECHO "\xZZ"', [b"ECHO", b"xZZ"]),  # not two hex digits: \x is x, as Redis
    (rb"ECHO 'it\'s' '\n'", [b"ECHO", b"it's", b"\\n"]),  # single quotes: only \' escapes
    (b'a"b c"d', None),  # a closing quote must end its word
    (b'ab"c d" e', [b"abc d", b"e"]),
    (b'key"quoted part"', [b"keyquoted part"]),  # a quote may open inside a word
    (b'"', None),
    (b"'abc", None),
    (b'"abc\\', None),
    (b"", []),
    (b" \t\x0b\x0c", []),
    (b'""', [b""]),
    (b"a\x00b", [b"a", b"b"]),
])
def test_split_inline_follows_redis(line: bytes, args: list[bytes] | None) -> None:
    if args is None:
        with pytest.raises(ProtocolError, match="unbalanced quotes"):
            split_inline(line)
    else:
        assert split_inline(line) == args


def test_inline_commands_as_nc_sends_them(srv: ServerProc) -> None:
    got = nc(srv.port, b'PING\r\nPING hello\nECHO "a b\\x41"\r\n\r\n\nPING "x\r\nECHO after\r\n')
    assert got == b'+PONG\r\n$5\r\nhello\r\n$4\r\na bA\r\n-PROTO unbalanced quotes in inline request\r\n' \
                  b'$5\r\nafter\r\n', got


def test_inline_and_resp_interleave_in_order(srv: ServerProc) -> None:
    got = nc(srv.port, b"*1\r\n$4\r\nPING\r\nECHO one\r\n*2\r\n$4\r\nECHO\r\n$3\r\ntwo\r\nnosuch x\r\n")
    assert got == b"+PONG\r\n$3\r\none\r\n$3\r\ntwo\r\n-UNKNOWN unknown command 'nosuch'\r\n", got


def test_inline_session_and_lock_commands(srv: ServerProc) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        f = sock.makefile("rwb")
        f.write(b"SESSION.OPEN 10\r\n")
        f.flush()
        assert f.readline().startswith(b"$")
        handle = f.readline().strip()
        f.write(b"LOCK.ACQUIRE inline:k " + handle + b"\r\nLOCK.RELEASE inline:k " + handle + b"\r\n")
        f.flush()
        assert f.readline().startswith(b":") and f.readline() == b"+OK\r\n"


def test_an_inline_line_over_64k_is_refused_and_closed(srv: ServerProc) -> None:
    got = nc(srv.port, b"PING " + b"x" * (70 << 10))
    assert got.startswith(b"-TOOBIG") and got.count(b"\r\n") == 1, got[:200]
    # an inline line with more words than max_args: an error, the stream goes on
    got = nc(srv.port, b"ECHO" + b" a" * 2000 + b"\r\nPING\r\n")
    assert got.startswith(b"-PROTO more than") and got.endswith(b"+PONG\r\n"), got[:200]


def test_redis_benchmark_ping_inline_and_mbulk(srv: ServerProc) -> None:
    bench = tool("redis-benchmark")
    out = subprocess.run([bench, "-h", "127.0.0.1", "-p", str(srv.port), "-t", "ping", "-n", "2000", "-c", "4",
                          "-P", "4", "--csv"], capture_output=True, timeout=120, check=True).stdout.decode()
    rows = {line.split(",")[0].strip('"'): float(line.split(",")[1].strip('"'))
            for line in out.splitlines()[1:] if line.strip()}
    assert set(rows) == {"PING_INLINE", "PING_MBULK"}, out
    assert all(rps > 0 for rps in rows.values()), out


@pytest.mark.parametrize("request_bytes", [
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\nPING\r\n",
    b"Host: x\r\nPING\r\n",
])
def test_an_http_request_is_refused_before_its_body_runs(srv: ServerProc, request_bytes: bytes) -> None:
    """A browser can be made to POST to a loopback port: nothing of it may run."""
    got = nc(srv.port, request_bytes)
    assert got.startswith(b"-PROTO") and b"PONG" not in got and got.count(b"\r\n") == 1, got
