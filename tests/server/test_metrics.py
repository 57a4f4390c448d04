"""The metrics port of a real `coordcore serve`: /metrics parses with prometheus_client's
parser and its figures move as commands run; the HTTP endpoint refuses what it must."""
from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from tests.server.ccserver import ServerProc, inprocess_server, serve  # noqa: F401 (serve is a fixture)

from coordcore.server.http import HttpServer

Serve = Callable[..., ServerProc]


def metrics_port(r: redis.Redis) -> int:
    return int(r.info("server")["metrics_port"])


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(port, "/metrics", headers)
    assert status == 200, body
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def raw_http(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_metrics_move_as_locks_are_taken_and_sessions_expire(serve: Serve) -> None:
    srv = serve("--metrics-port", "0")
    r = redis.Redis(port=srv.port)
    port = metrics_port(r)
    before = scrape(port)
    assert before[("coordcore_keys_held", ())] == 0
    assert before[("coordcore_server_info", (("role", "main"), ("version", r.info()["coordcore_version"])))] == 1

    handle = r.execute_command("SESSION.OPEN", 10)
    token = r.execute_command("LOCK.ACQUIRE", "metrics/a", handle)  # the native lane
    r.execute_command("LOCK.INFO", "metrics/a")  # the command table
    with pytest.raises(redis.ResponseError):
        r.execute_command("LOCK.INFO")  # an error, counted as one
    ids = [r.execute_command("ID.NEXT") for _ in range(3)]
    held = scrape(port)
    assert held[("coordcore_keys_held", ())] == 1
    assert held[("coordcore_sessions", ())] == 1
    assert held[("coordcore_revision", ())] >= token
    assert held[("coordcore_commands_total", (("command", "LOCK.ACQUIRE"), ("outcome", "ok")))] == 1
    assert held[("coordcore_commands_total", (("command", "LOCK.INFO"), ("outcome", "ok")))] == 1
    assert held[("coordcore_commands_total", (("command", "LOCK.INFO"), ("outcome", "error")))] == 1
    assert held[("coordcore_commands_total", (("command", "ID.NEXT"), ("outcome", "ok")))] == 3
    assert held[("coordcore_ids_issued_total", ())] >= len(ids)
    assert held[("coordcore_fsync_duration_seconds_count", ())] >= 1
    assert held[("coordcore_fsync_duration_seconds_count", ())] == \
        held[("coordcore_fsync_duration_seconds_bucket", (("le", "+Inf"),))]
    assert held[("coordcore_batches_total", ())] > before[("coordcore_batches_total", ())]
    assert held[("coordcore_log_size_bytes", ())] > 0

    r.execute_command("LOCK.RELEASE", "metrics/a", handle)
    short = r.execute_command("SESSION.OPEN", "0.2")
    r.execute_command("LOCK.ACQUIRE", "metrics/b", short)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = scrape(port)
        if now.get(("coordcore_sessions_ended_total", (("reason", "expired"),)), 0) >= 1:
            break
        time.sleep(0.1)
    assert now[("coordcore_sessions_ended_total", (("reason", "expired"),))] == 1
    assert now[("coordcore_keys_held", ())] == 0
    assert now[("coordcore_commands_total", (("command", "LOCK.RELEASE"), ("outcome", "ok")))] == 1
    assert "session" not in str(now.keys()).replace("coordcore_sessions", "")  # no per-session labels


def test_http_refuses_other_methods_paths_and_oversized_heads(serve: Serve) -> None:
    srv = serve("--metrics-port", "0")
    port = metrics_port(redis.Redis(port=srv.port))
    assert raw_http(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab").startswith(
        b"HTTP/1.1 405 ")
    assert raw_http(port, b"DELETE / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert raw_http(port, b"GET /etc/passwd HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    assert raw_http(port, b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").startswith(b"HTTP/1.1 400 ")
    assert raw_http(port, b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").startswith(
        b"HTTP/1.1 400 ")
    assert raw_http(port, b"\x16\x03\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw_http(port, b"GET /status.json?count=999999 HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    # A huge head is cut at the bound: answered 431 and closed, not buffered.
    huge = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    try:
        reply = raw_http(port, huge)
    except (ConnectionResetError, BrokenPipeError):
        reply = b"HTTP/1.1 431 (reset while sending)"
    assert reply.startswith(b"HTTP/1.1 431 ")
    many = b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n"
    assert raw_http(port, many).startswith(b"HTTP/1.1 431 ")
    # The RESP port still serves.
    assert redis.Redis(port=srv.port).ping()


def test_http_bounds_connections(serve: Serve) -> None:
    srv = serve("--metrics-port", "0")
    port = metrics_port(redis.Redis(port=srv.port))
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
    try:
        time.sleep(0.2)
        assert raw_http(port, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 503 ")
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if raw_http(port, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 "):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the metrics port did not serve again once the idle connections closed")


def test_http_auth_follows_the_server(serve: Serve) -> None:
    srv = serve("--metrics-port", "0", "--requirepass", "s3cret")
    r = redis.Redis(port=srv.port, password="s3cret")
    port = metrics_port(r)
    assert get(port, "/metrics")[0] == 401
    assert get(port, "/status.json")[0] == 401
    assert get(port, "/")[0] == 401
    assert get(port, "/metrics", {"Authorization": "Bearer wrong"})[0] == 401
    basic = base64.b64encode(b"default:s3cret").decode()
    assert get(port, "/metrics", {"Authorization": f"Basic {basic}"})[0] == 200
    assert get(port, "/status.json", {"Authorization": "Bearer s3cret"})[0] == 200
    assert get(port, "/metrics", {"Authorization": "Basic !!notbase64"})[0] == 401


def test_metrics_port_binds_where_resp_binds(serve: Serve) -> None:
    srv = serve("--host", "127.0.0.2", "--metrics-port", "0")
    port = int(redis.Redis(host="127.0.0.2", port=srv.port).info("server")["metrics_port"])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert raw_http_host("127.0.0.2", port).startswith(b"HTTP/1.1 200 ")


def raw_http_host(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        return sock.recv(100)


def test_slowloris_head_is_cut_off(run: Callable[..., object], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A head sent a byte at a time is answered 408 and closed after HEAD_TIMEOUT."""
    monkeypatch.setattr(HttpServer, "HEAD_TIMEOUT", 0.3)

    async def main() -> None:
        async with inprocess_server(tmp_path, locks=True, metrics_port=0) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.http.port)
            started = time.monotonic()
            for byte in b"GET /metr":
                writer.write(bytes([byte]))
                await asyncio.sleep(0.02)
            reply = await asyncio.wait_for(reader.read(), 5)
            assert reply.startswith(b"HTTP/1.1 408 ")
            assert time.monotonic() - started < 3
            writer.close()
            for _ in range(100):
                if not server.http.conns:
                    break
                await asyncio.sleep(0.02)
            assert not server.http.conns

    run(main())


def histogram(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
              kind: str) -> tuple[list[tuple[float, float]], float, float]:
    """One kind's (le, cumulative count) buckets, count and sum, checked for shape."""
    buckets = sorted((float(dict(labels)["le"]), v) for (n, labels), v in metrics.items()
                     if n == f"{name}_bucket" and dict(labels)["kind"] == kind)
    count = metrics[(f"{name}_count", (("kind", kind),))]
    total = metrics[(f"{name}_sum", (("kind", kind),))]
    assert len(buckets) == 25 and buckets[-1] == (float("inf"), count)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), "buckets not cumulative"
    return buckets, count, total


def test_lock_wait_and_hold_histograms_count_a_contended_lock_and_an_expiry(serve: Serve) -> None:
    srv = serve("--metrics-port", "0")
    r = redis.Redis(port=srv.port)
    port = metrics_port(r)
    families = {f.name: f.type for f in text_string_to_metric_families(get(port, "/metrics")[1].decode())}
    assert families["coordcore_lock_wait_seconds"] == families["coordcore_lock_hold_seconds"] == "histogram"
    first = r.execute_command("SESSION.OPEN", 10)
    token = r.execute_command("LOCK.ACQUIRE", "hist/a", first)
    before = scrape(port)
    waiter: dict[str, object] = {}

    def wait_for_it() -> None:
        other = redis.Redis(port=srv.port)
        handle = other.execute_command("SESSION.OPEN", 10)
        waiter["token"] = other.execute_command("LOCK.ACQUIRE", "hist/a", handle, "TIMEOUT", 10_000)

    thread = threading.Thread(target=wait_for_it)
    thread.start()
    deadline = time.monotonic() + 10
    while scrape(port)[("coordcore_waiters", ())] < 1:
        assert time.monotonic() < deadline, "the second client never queued"
        time.sleep(0.02)
    time.sleep(0.3)
    r.execute_command("LOCK.RELEASE", "hist/a", first, "TOKEN", token)
    thread.join(10)
    assert int(waiter["token"]) > token  # type: ignore[call-overload]
    after = scrape(port)
    _, wait_before, wait_sum_before = histogram(before, "coordcore_lock_wait_seconds", "exclusive")
    buckets, wait_count, wait_sum = histogram(after, "coordcore_lock_wait_seconds", "exclusive")
    assert wait_count == wait_before + 1 and wait_sum - wait_sum_before >= 0.25
    assert dict(buckets)[0.128] == wait_before  # the new one waited more than 128 ms
    _, hold_before, _ = histogram(before, "coordcore_lock_hold_seconds", "exclusive")
    _, hold_count, hold_sum = histogram(after, "coordcore_lock_hold_seconds", "exclusive")
    assert hold_count == hold_before + 1 and hold_sum >= 0.25
    for kind in ("shared", "semaphore", "election", "pool"):
        assert histogram(after, "coordcore_lock_wait_seconds", kind)[1] == 0

    # An expired session's hold counts too (ended by the expiry, not a release).
    short = r.execute_command("SESSION.OPEN", "0.2")
    r.execute_command("LOCK.ACQUIRE", "hist/b", short)
    deadline = time.monotonic() + 10
    while scrape(port).get(("coordcore_sessions_ended_total", (("reason", "expired"),)), 0) < 1:
        assert time.monotonic() < deadline, "the short session never expired"
        time.sleep(0.05)
    expired = scrape(port)
    _, count, total = histogram(expired, "coordcore_lock_hold_seconds", "exclusive")
    assert count == hold_count + 1 and total - hold_sum >= 0.15
    # Counts never go down between scrapes.
    for name, labels in after:
        if name.startswith("coordcore_lock_") and (name, labels) in expired:
            assert expired[(name, labels)] >= after[(name, labels)], name
