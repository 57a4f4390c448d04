"""Redis tools against a live `coordcore serve` on loopback: inline commands (telnet,
nc, redis-benchmark's PING_INLINE), redis-cli, redis-benchmark."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
import redis
from tests.server.ccserver import Raw, ServerProc

from coordcore.errors import NoProtocol, ProtocolError, error_for_code
from coordcore.server.cmddocs import DOCS
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


# --- COMMAND, CONFIG, CLIENT, HELLO, SHUTDOWN ------------------------------------------


def test_command_describes_every_command_of_the_table(srv: ServerProc) -> None:
    r = redis.Redis(port=srv.port)
    names = [n.decode().upper() for n in r.command_list()]
    assert r.command_count() == len(names) == len(set(names))
    assert set(names) == {n.decode() for n in DOCS}  # every command documented, no ghost
    info = r.command()  # redis-py parses COMMAND's reply
    assert set(info) == {n.lower() for n in names}
    assert info["lock.acquire"]["arity"] == -3 and info["lock.acquire"]["first_key_pos"] == 1
    assert "blocking" in info["lock.acquire"]["flags"] and info["session.open"]["first_key_pos"] == 0
    assert info["id.next"]["arity"] == 1 and info["client"]["arity"] == -2
    with Raw(srv.port) as raw:
        one = raw.command("COMMAND", "INFO", "lock.try", "no.such")
    assert one[0][:2] == [b"lock.try", -3] and one[1] is None
    with Raw(srv.port) as raw:
        raw.command("HELLO", "3")
        docs = raw.command("COMMAND", "DOCS", "SEM.ACQUIRE", "NO.SUCH")
        client = raw.command("COMMAND", "DOCS", "CLIENT")[b"client"]
    assert list(docs) == [b"sem.acquire"]
    args = docs[b"sem.acquire"][b"arguments"]
    assert [a[b"name"] for a in args] == [b"key", b"session", b"capacity", b"ms", b"label", b"n"]
    assert args[3][b"token"] == b"TIMEOUT" and args[3][b"flags"] == [b"optional"]
    assert b"client|kill" in client[b"subcommands"]
    with pytest.raises(redis.ResponseError, match="^BADARG"):
        r.execute_command("COMMAND", "GETKEYS", "x")


def test_redis_cli_reads_command_docs(srv: ServerProc) -> None:
    out = subprocess.run([tool("redis-cli"), "-p", str(srv.port), "COMMAND", "DOCS", "LOCK.ACQUIRE"],
                         capture_output=True, timeout=30, check=True).stdout.decode()
    assert "Takes the lock" in out and "TIMEOUT" in out


def test_config_get_answers_real_values_or_an_empty_map(srv: ServerProc) -> None:
    r = redis.Redis(port=srv.port, decode_responses=True)
    assert r.config_get("port") == {"port": str(srv.port)}
    assert r.config_get("nothing-like-this") == {}
    got = r.config_get("max-*")
    assert got["max-args"] == "1024" and all(k.startswith("max-") for k in got)
    assert r.config_get("save")["save"] == "" and r.config_get("appendfsync") == {"appendfsync": "no"}
    assert r.config_get("data-dir")["data-dir"] == str(srv.data_dir)
    assert r.config_get("requirepass") == {"requirepass": ""}  # never the secret itself
    r3 = redis.Redis(port=srv.port, protocol=3, decode_responses=True)
    assert r3.config_get("bind", "maxclients") == {"bind": "127.0.0.1", "maxclients": "10000"}
    with pytest.raises(redis.ResponseError, match="^BADARG CONFIG SET is not supported"):
        r.config_set("port", "1")


def test_hello_4_is_noproto(srv: ServerProc) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"HELLO 4\r\nPING\r\n")
        f = sock.makefile("rb")
        assert f.readline().startswith(b"-NOPROTO ") and f.readline() == b"+PONG\r\n"
    assert error_for_code("NOPROTO") is NoProtocol and issubclass(NoProtocol, ValueError)


def test_client_id_name_info_list_kill(srv: ServerProc) -> None:
    a = redis.Redis(port=srv.port, single_connection_client=True, decode_responses=True)
    b = redis.Redis(port=srv.port, single_connection_client=True, decode_responses=True)
    a.client_setname("alpha")
    assert a.client_getname() == "alpha" and b.client_getname() is None
    with pytest.raises(redis.ResponseError, match="^BADARG"):
        a.client_setname("has space")
    ida, idb = a.client_id(), b.client_id()
    info = a.client_info()  # redis-py parses the line
    assert info["id"] == ida and info["name"] == "alpha" and info["user"] == "default"
    assert info["laddr"] == f"127.0.0.1:{srv.port}" and info["addr"].startswith("127.0.0.1:")
    rows = {int(c["id"]): c for c in a.client_list()}
    assert {ida, idb} <= set(rows) and rows[ida]["name"] == "alpha" and rows[idb]["cmd"] == "client"
    assert [c["id"] for c in a.client_list(client_id=[idb])] == [str(idb)]
    assert a.client_kill_filter(_id=idb) == 1
    assert b.client_id() != idb  # (redis-py reconnects on its own: a new connection)
    assert a.client_kill_filter(_id=10**12) == 0
    c = redis.Redis(port=srv.port, single_connection_client=True, decode_responses=True)
    c.ping()
    assert a.client_kill_filter(addr=c.client_info()["addr"]) == 1
    with pytest.raises(redis.ResponseError, match="^BADARG"):
        a.execute_command("CLIENT", "KILL", "127.0.0.1:1")  # the old form: refused, nothing closed
    a.ping()


def test_client_kill_of_itself_answers_then_closes(srv: ServerProc) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"CLIENT ID\r\n")
        f = sock.makefile("rb")
        ident = int(f.readline()[1:])
        sock.sendall(b"CLIENT KILL ID %d\r\nPING\r\n" % ident)
        assert f.readline() == b":1\r\n" and f.read() == b""  # the PING behind it is not served


def test_redis_cli_subscribe_prints_watch_pushes(srv: ServerProc) -> None:
    cli = tool("redis-cli")
    readers = [subprocess.Popen([cli, *proto, "-p", str(srv.port), "SUBSCRIBE", "sub/"], stdout=subprocess.PIPE)
               for proto in ([], ["-3"])]
    try:
        for reader in readers:
            assert reader.stdout is not None
            assert [reader.stdout.readline() for _ in range(3)] == [b"subscribe\n", b"sub/\n", b"1\n"]
        r = redis.Redis(port=srv.port)
        handle = r.execute_command("SESSION.OPEN", 10)
        token = r.execute_command("LOCK.TRY", "sub/job", handle)
        for reader in readers:
            assert reader.stdout is not None
            lines = [reader.stdout.readline() for _ in range(4)]
            assert lines[0] == b"watch\n" and lines[2:] == [b"grant\n", b"sub/job\n"], lines
        assert r.execute_command("LOCK.TRY", "other/job", handle) > token
    finally:
        for reader in readers:
            reader.kill()
            reader.wait()
            assert reader.stdout is not None
            reader.stdout.close()
    # redis-py's pubsub: subscribe confirms, unsubscribe leaves watch mode
    p = redis.Redis(port=srv.port).pubsub()
    p.subscribe("sub/")
    assert p.get_message(timeout=5)["type"] == "subscribe"
    p.unsubscribe("sub/")
    assert p.get_message(timeout=5)["type"] == "unsubscribe"
    p.close()


def test_config_get_hostile_patterns(srv: ServerProc) -> None:
    r = redis.Redis(port=srv.port, decode_responses=True)
    assert r.config_get("[") == {} and r.config_get("*[a-") == {}  # not a valid class: no match, no crash
    assert r.config_get("PORT") == {"port": str(srv.port)}  # names are matched case-insensitively
    assert r.config_get("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b") == {}
    with pytest.raises(redis.ResponseError, match="^BADARG"):
        r.config_get("x" * 300)


def test_redis_cli_3_session_prints_watch_pushes_at_its_next_read(srv: ServerProc) -> None:
    """`redis-cli -3` (interactive, or --show-pushes yes) prints a WATCH's pushes when it
    next reads from the server: here before the PONG of the command after them."""
    cli = subprocess.Popen([tool("redis-cli"), "-3", "--show-pushes", "yes", "-p", str(srv.port)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert cli.stdin is not None and cli.stdout is not None
    try:
        cli.stdin.write(b"WATCH w3/\n")
        cli.stdin.flush()
        assert cli.stdout.readline() == b"OK\n"
        r = redis.Redis(port=srv.port)
        assert r.execute_command("LOCK.TRY", "w3/job", r.execute_command("SESSION.OPEN", 10)) > 0
        cli.stdin.write(b"PING\n")
        cli.stdin.close()
        out = cli.stdout.read().decode()
        assert out.index("grant") < out.index("w3/job") < out.index("PONG"), out
    finally:
        cli.kill()
        cli.wait()
        cli.stdout.close()


@given(st.lists(st.sampled_from([b"a", b"Z9", b" ", b"\t", b"\x0b", b"\x0c", b"\r", b"\x00", b"-", b"\xff"]),
                max_size=30))
def test_split_inline_fast_path_agrees_with_the_full_splitter(parts: list[bytes]) -> None:
    """Lines without quotes take bytes.split(); the quote-aware loop must agree with it
    (checked by adding a harmless quoted word the loop alone handles)."""
    line = b"".join(parts)
    assert split_inline(line + b' "q"') == split_inline(line) + [b"q"]


def test_inline_lines_split_across_reads_and_bad_client_arguments(srv: ServerProc) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        f = sock.makefile("rb")
        for piece in (b"PI", b"NG", b' "a', b" b", b'"\r', b"\n"):  # one request, six reads
            sock.sendall(piece)
            time.sleep(0.02)
        assert f.readline() == b"$3\r\n" and f.readline() == b"a b\r\n"
        for line in (b"CLIENT KILL ID x", b"CLIENT KILL ID", b"CLIENT KILL NAME x", b"CLIENT LIST ID",
                     b"CLIENT NOSUCH", b"CONFIG GET", b"CONFIG REWRITE", b"COMMAND NOSUCH", b"SHUTDOWN NOW"):
            sock.sendall(line + b"\r\n")
            assert f.readline().startswith(b"-BADARG "), line
        sock.sendall(b"PING\r\n")
        assert f.readline() == b"+PONG\r\n"  # nothing above closed the connection or stopped the server
