"""OpenTelemetry tracing, end to end: the real clients talk to a server in this process
over loopback TCP, and both export to the SDK's in-memory exporter, so one trace can be
read back whole: the client's span, the server's span as its child, and the span of
the group-commit batch that carried the request, linked to the server's span."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import hiredis
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags, TraceState,
                                 set_span_in_context)

from tests.server.ccserver import aio_raw, read_reply

from coordcore.client import AsyncClient, Client
from coordcore.client._tracing import KEYED
from coordcore.errors import CoordcoreError, SessionExpired
from coordcore.server import Server, ServerConfig
from coordcore.server.acl import hash_password
from coordcore.server.cmddocs import DOCS
from coordcore.server.log import configure
from coordcore.tracing import TRACESTATE_MAX_LEN, format_traceparent, format_tracestate, parse_tracestate

ROOT = Path(__file__).resolve().parents[2]


def spans_to_memory() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@asynccontextmanager
async def traced_server(data_dir: Path, provider: Any, *, otel: bool = True, fsync: bool = False,
                        **overrides: Any) -> AsyncIterator[Server]:
    cfg = ServerConfig(port=0, data_dir=data_dir, worker_id=3, fsync=fsync, otel=otel, **overrides)
    server = Server(cfg, log=configure("kv", "warning", name="coordcore.server.test"), tracer_provider=provider)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def by_name(spans: tuple[ReadableSpan, ...], name: str, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name and s.kind == kind]


def commits_linking(spans: tuple[ReadableSpan, ...], server_span: ReadableSpan) -> list[ReadableSpan]:
    ctx = server_span.context
    return [s for s in spans if s.name == "coordcore.commit"
            and any(link.context.span_id == ctx.span_id and link.context.trace_id == ctx.trace_id
                    for link in s.links)]


def assert_commit_of(spans: tuple[ReadableSpan, ...], server_span: ReadableSpan,
                     client_span: ReadableSpan) -> dict[str, Any]:
    """The one commit span linked to ``server_span``: its child, in its trace, within the
    request's time (as the server's span is within the client's); its attributes."""
    (commit,) = commits_linking(spans, server_span)
    assert commit.parent is not None and commit.parent.span_id == server_span.context.span_id
    assert commit.context.trace_id == server_span.context.trace_id
    attrs = dict(commit.attributes or {})
    assert attrs["coordcore.batch.commands"] >= 1 and attrs["coordcore.batch.bytes"] > 0
    assert attrs["coordcore.batch.traced"] >= 1
    assert server_span.start_time <= commit.start_time <= commit.end_time <= server_span.end_time
    assert client_span.start_time <= server_span.start_time <= server_span.end_time <= client_span.end_time
    return attrs


def test_one_trace_shows_the_client_span_the_server_span_and_the_commit(tmp_path: Path, run: Any) -> None:
    provider, exporter = spans_to_memory()
    tracer = provider.get_tracer("the test")

    async def main() -> int:
        async with traced_server(tmp_path, provider, fsync=True) as server:
            async with AsyncClient(port=server.port, tracing=provider) as client:
                with tracer.start_as_current_span("job"):
                    grant = await client.acquire("jobs/1", ttl=10)
                await client.release(grant)
                return server.port

    port = run(main())
    spans = exporter.get_finished_spans()
    (job,) = [s for s in spans if s.name == "job"]
    (client_span,) = by_name(spans, "LOCK.ACQUIRE", SpanKind.CLIENT)
    (server_span,) = by_name(spans, "LOCK.ACQUIRE", SpanKind.SERVER)
    # The client's span is the caller's child; the server's is the client's.
    assert client_span.parent is not None and client_span.parent.span_id == job.context.span_id
    assert server_span.parent is not None and server_span.parent.span_id == client_span.context.span_id
    assert server_span.parent.is_remote
    assert server_span.context.trace_id == client_span.context.trace_id == job.context.trace_id
    assert dict(client_span.attributes or {}) == {
        "db.system.name": "coordcore", "db.operation.name": "LOCK.ACQUIRE",
        "server.address": "127.0.0.1", "server.port": port}
    assert (server_span.attributes or {})["db.operation.name"] == "LOCK.ACQUIRE"
    assert client_span.status.status_code is StatusCode.UNSET
    # The batch that committed the acquire: linked to the server span, its child, inside
    # the request's time.
    attrs = assert_commit_of(spans, server_span, client_span)
    assert attrs["coordcore.fsync.duration"] > 0  # fsync=True: the batch waited for one
    # The release is its own trace, with its own commit.
    (release,) = by_name(spans, "LOCK.RELEASE", SpanKind.SERVER)
    assert release.context.trace_id != job.context.trace_id
    assert len(commits_linking(spans, release)) == 1


@contextmanager
def server_in_thread(data_dir: Path, provider: Any, **overrides: Any) -> Iterator[Server]:
    loop = asyncio.new_event_loop()
    cfg = ServerConfig(port=0, data_dir=data_dir, worker_id=4, fsync=False, otel=True, **overrides)
    server = Server(cfg, log=configure("kv", "warning", name="coordcore.server.test"), tracer_provider=provider)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def test_the_blocking_client_traces_commands_and_each_pipelined_one(tmp_path: Path) -> None:
    provider, exporter = spans_to_memory()
    with server_in_thread(tmp_path, provider) as server, Client(port=server.port, tracing=provider) as client:
        session = client.session(ttl=10)
        with client.lock("jobs/2", session=session):
            pass
        pipe = client.pipeline()
        pipe.command("LOCK.TRY", "jobs/3", session.credential)
        pipe.command("LOCK.INFO", "jobs/3")  # a read behind a write: it waits, traced, at the barrier
        pipe.command("PING")
        token, info, pong = pipe.execute()
        assert int(token) > 0 and pong == b"PONG"
        session.close()
    spans = exporter.get_finished_spans()
    clients = {s.context.span_id: s for s in spans if s.kind == SpanKind.CLIENT}
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    assert {s.name for s in servers} >= {"SESSION.OPEN", "LOCK.ACQUIRE", "LOCK.RELEASE", "LOCK.TRY", "LOCK.INFO",
                                         "PING", "SESSION.CLOSE"}
    for s in servers:
        # Every server span is the child of the client span of that very command,
        # pipelined or not (each command carried its own parent).
        assert s.parent is not None
        parent = clients[s.parent.span_id]
        assert parent.name == s.name and parent.context.trace_id == s.context.trace_id
    (try_span,) = by_name(spans, "LOCK.TRY", SpanKind.SERVER)
    assert len(commits_linking(spans, try_span)) == 1
    (ping,) = by_name(spans, "PING", SpanKind.SERVER)
    assert commits_linking(spans, ping) == []  # nothing to commit, no batch


def test_tracing_off_makes_no_spans_and_loads_nothing(tmp_path: Path, run: Any) -> None:
    provider, exporter = spans_to_memory()

    async def main() -> None:
        async with traced_server(tmp_path, provider) as server:  # the server traces...
            async with AsyncClient(port=server.port) as client:  # ...but the client sends no context
                async with client.lock("jobs/4", ttl=10):
                    pass
                pipe = client.pipeline()
                pipe.command("PING")
                await pipe.execute()

    run(main())
    assert exporter.get_finished_spans() == ()


def test_a_client_that_traces_against_a_server_that_does_not(tmp_path: Path, run: Any) -> None:
    provider, exporter = spans_to_memory()

    async def main() -> None:
        async with traced_server(tmp_path, provider, otel=False) as server:
            async with AsyncClient(port=server.port, tracing=provider) as client:
                async with client.lock("jobs/5", ttl=10) as grant:
                    assert grant.token > 0

    run(main())
    spans = exporter.get_finished_spans()
    assert spans and all(s.kind == SpanKind.CLIENT for s in spans)
    assert {s.name for s in spans} == {"SESSION.OPEN", "LOCK.ACQUIRE", "LOCK.RELEASE", "SESSION.CLOSE"}


def test_an_error_reply_sets_the_status_of_both_spans(tmp_path: Path, run: Any) -> None:
    provider, exporter = spans_to_memory()

    async def main() -> None:
        async with traced_server(tmp_path, provider) as server:
            async with AsyncClient(port=server.port, tracing=provider) as client:
                with pytest.raises(SessionExpired):
                    await client.execute("LOCK.TRY", "jobs/6", b"77.00112233445566778899aabbccddeeff")
                with pytest.raises(CoordcoreError) as caught:
                    await client.execute("NO.SUCH.COMMAND")
                assert caught.value.code == "UNKNOWN"

    run(main())
    spans = exporter.get_finished_spans()
    for kind in (SpanKind.CLIENT, SpanKind.SERVER):
        (span,) = by_name(spans, "LOCK.TRY", kind)
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "NOSESSION"
        assert "no live session" in (span.status.description or "")
    (unknown,) = by_name(spans, "NO.SUCH.COMMAND", SpanKind.CLIENT)
    assert unknown.status.status_code is StatusCode.ERROR and (unknown.attributes or {})["error.type"] == "UNKNOWN"
    assert by_name(spans, "NO.SUCH.COMMAND", SpanKind.SERVER) == []  # nothing ran: no server span


def _all_values(spans: tuple[ReadableSpan, ...]) -> str:
    return " ".join(f"{s.name} {dict(s.attributes or {})} {s.status.description}" for s in spans)


@pytest.mark.parametrize("trace_keys", [False, True])
def test_keys_are_in_spans_only_when_asked_and_credentials_never(tmp_path: Path, run: Any,
                                                                  trace_keys: bool) -> None:
    provider, exporter = spans_to_memory()
    secrets: list[bytes] = []

    async def main() -> None:
        async with traced_server(tmp_path, provider) as server:
            async with AsyncClient(port=server.port, tracing=provider, trace_keys=trace_keys) as client:
                session = await client.session(ttl=10)
                secrets.append(session.credential)
                async with client.lock("orders/secret-key", session=session):
                    pass
                await client.execute("LOCK.INFO", "orders/secret-key")
                await session.close()

    run(main())
    spans = exporter.get_finished_spans()
    text = _all_values(spans)
    secret = secrets[0].split(b".", 1)[1].decode()
    assert secret not in text  # a session credential is never recorded
    if not trace_keys:
        assert "secret-key" not in text
        return
    keyed = [s for s in spans if s.kind == SpanKind.CLIENT and s.name in ("LOCK.ACQUIRE", "LOCK.RELEASE", "LOCK.INFO")]
    assert len(keyed) == 3
    assert all((s.attributes or {})["coordcore.key"] == "orders/secret-key" for s in keyed)
    opened = by_name(spans, "SESSION.OPEN", SpanKind.CLIENT)[0]
    assert "coordcore.key" not in (opened.attributes or {})  # no key in it: its argument is a TTL
    assert all("coordcore.key" not in (s.attributes or {}) for s in spans if s.kind == SpanKind.SERVER)


def test_the_client_knows_which_commands_are_keyed() -> None:
    assert KEYED == {n.decode() for n, doc in DOCS.items() if doc.keyed}


def test_trace_keys_without_tracing_and_a_bad_tracing_value_are_refused() -> None:
    with pytest.raises(CoordcoreError, match="trace_keys needs tracing"):
        Client(trace_keys=True)
    with pytest.raises(CoordcoreError, match="TracerProvider"):
        Client(tracing="yes")


TP = format_traceparent(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1)
HOSTILE = {
    "too long": TP + "-00",
    "far too long": "0" * 70_000,
    "too short": TP[:-1],
    "empty": "",
    "bad hex": TP.replace("4bf9", "4bg9"),
    "upper-case hex": TP.upper(),
    "wrong version": "ff" + TP[2:],
    "a later version": "01" + TP[2:],
    "all-zero trace id": "00-" + "0" * 32 + TP[35:],
    "all-zero span id": TP[:36] + "0" * 16 + TP[52:],
    "no dashes": TP.replace("-", "_"),
    "bad flags": TP[:-2] + "zz",
    "non-ascii": TP[:-2] + "\u00e9",
}


def test_hostile_traceparents_get_a_clear_error_and_the_connection_goes_on(tmp_path: Path, run: Any) -> None:
    provider, exporter = spans_to_memory()

    async def main() -> None:
        async with traced_server(tmp_path, provider) as server:
            reader, writer = await aio_raw(server.port)
            parser = hiredis.Reader()

            async def call(*args: str) -> Any:
                writer.write(b"".join([f"*{len(args)}\r\n".encode()]
                                      + [b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args]))
                return await read_reply(reader, parser)

            for why, value in HOSTILE.items():
                reply = await call("TRACEPARENT", value, "SESSION.OPEN", "10000")
                assert isinstance(reply, hiredis.ReplyError), why
                assert str(reply).startswith("BADARG bad traceparent"), (why, str(reply))
                assert len(str(reply)) < 200, why  # a 70 kB value is not echoed back
            for args, expect in ((("TRACEPARENT",), "BADARG TRACEPARENT takes"), (("TRACEPARENT", TP), "BADARG TRACEPARENT takes"),
                                 (("TRACEPARENT", TP, "TRACEPARENT", TP, "PING"), "BADARG TRACEPARENT cannot carry"),
                                 (("TRACEPARENT", TP, "NO.SUCH"), "UNKNOWN"),
                                 (("traceparent", TP, "ping", "a", "b", "c"), "BADARG")):  # the arity of the inner one
                reply = await call(*args)
                assert isinstance(reply, hiredis.ReplyError) and str(reply).startswith(expect), (args, reply)
            assert await call("TRACEPARENT", TP, "ECHO", "still here") == b"still here"
            assert await call("traceparent", TP, "ping") == b"PONG"  # any case, as every command name
            # Inline (telnet) form too.
            writer.write(f"TRACEPARENT {TP} PING\r\nTRACEPARENT x PING\r\n".encode())
            assert await read_reply(reader, parser) == b"PONG"
            assert str(await read_reply(reader, parser)).startswith("BADARG bad traceparent")
            # (HTTP's TRACE method stays what it was: refused, and the connection closed.)
            writer.write(b"TRACE / HTTP/1.1\r\n")
            assert str(await read_reply(reader, parser)).startswith("PROTO this is a RESP port")
            assert await reader.read() == b""
            writer.close()

    run(main())
    spans = exporter.get_finished_spans()
    # Only the commands that ran made spans (no session was opened by a hostile prefix);
    # the PING with too many arguments ran, and failed.
    assert sorted(s.name for s in spans) == ["ECHO", "PING", "PING", "PING"]
    assert [s.status.status_code for s in spans if s.name == "PING"].count(StatusCode.ERROR) == 1
    assert all(s.context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736 for s in spans)


def test_the_tracestate_travels_from_the_client_span_to_the_server_span(tmp_path: Path, run: Any) -> None:
    provider, exporter = spans_to_memory()
    tracer = provider.get_tracer("the test")
    # An upstream service's context with vendors' state, as a propagator would extract it.
    state = TraceState([("congo", "t61rcWkgMzE"), ("rojo", "00f067aa0ba902b7")])
    upstream = NonRecordingSpan(SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True,
                                            trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=state))

    async def main() -> None:
        async with traced_server(tmp_path, provider) as server:
            async with AsyncClient(port=server.port, tracing=provider) as client:
                with tracer.start_as_current_span("job", context=set_span_in_context(upstream)):
                    await client.execute("PING")
                await client.execute("ECHO", "no state")  # a root span: no tracestate, none sent

    run(main())
    spans = exporter.get_finished_spans()
    (client_span,) = by_name(spans, "PING", SpanKind.CLIENT)
    (server_span,) = by_name(spans, "PING", SpanKind.SERVER)
    assert client_span.context.trace_state == state  # inherited from the upstream context
    assert server_span.parent is not None and server_span.parent.span_id == client_span.context.span_id
    assert server_span.parent.trace_state == state and server_span.context.trace_state == state
    (echo,) = by_name(spans, "ECHO", SpanKind.SERVER)
    assert echo.parent is not None and len(echo.parent.trace_state) == 0


def test_a_tracestate_longer_than_the_w3c_bound_is_cut_from_the_right_by_the_client() -> None:
    members = [(f"v{i:02d}", "x" * 40) for i in range(20)]  # 20 members of 44 bytes: 899 with commas
    sent = format_tracestate(members)
    assert sent is not None and len(sent) <= TRACESTATE_MAX_LEN
    assert parse_tracestate(sent.encode()) == members[:11]  # 11 * 44 + 10 = 494; 12 would be 539
    assert format_tracestate([]) is None and format_tracestate([("a", "x" * 600)]) is None
    assert format_tracestate([(f"k{i}", "1") for i in range(40)]) == ",".join(f"k{i}=1" for i in range(32))


TS_HOSTILE: dict[str, bytes] = {
    "longer than 512 bytes": b"a=" + b"x" * 200 + b",b=" + b"x" * 200 + b",c=" + b"x" * 110,
    "far too long": b"a=" + b"x" * 70_000,
    "33 members": b",".join(b"k%d=1" for i in range(33)),
    "upper-case key": b"Congo=1",
    "key starts with a digit": b"1abc=1",
    "key of 257 characters": b"k" * 257 + b"=1",
    "two @ in a key": b"a@b@c=1",
    "a system id of 15": b"t@" + b"s" * 15 + b"=1",
    "no =": b"congo",
    "empty value": b"congo=",
    "= in the value": b"congo=a=b",
    "value of 257 characters": b"a=" + b"x" * 257,
    "a control character": b"congo=a\x01b",
    "a tab in the value": b"congo=a\tb",
    "a NUL": b"congo=\x00",
    "non-ascii": "congo=\u00e9".encode(),
    "invalid utf-8": b"congo=\xff\xfe",
    "a repeated key": b"congo=1,rojo=2,congo=3",
    "a CRLF": b"congo=1\r\nPING",
}


def test_hostile_tracestates_get_a_clear_error_and_run_nothing(tmp_path: Path, run: Any) -> None:
    provider, exporter = spans_to_memory()

    async def main() -> None:
        async with traced_server(tmp_path, provider) as server:
            reader, writer = await aio_raw(server.port)
            parser = hiredis.Reader()

            async def call(*args: str | bytes) -> Any:
                parts = [a if isinstance(a, bytes) else a.encode() for a in args]
                writer.write(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
                return await read_reply(reader, parser)

            for why, value in TS_HOSTILE.items():
                reply = await call("TRACEPARENT", TP, "TRACESTATE", value, "SESSION.OPEN", "10000")
                assert isinstance(reply, hiredis.ReplyError), why
                assert str(reply).startswith("BADARG bad tracestate"), (why, str(reply))
                assert len(str(reply)) < 200, why  # nothing long is echoed back
            for args, expect in ((("TRACEPARENT", TP, "TRACESTATE"), "BADARG TRACEPARENT takes"),
                                 (("TRACEPARENT", TP, "TRACESTATE", "a=1"), "BADARG TRACEPARENT takes"),
                                 (("TRACEPARENT", TP, "tracestate", "a=1", "TRACESTATE", "b=2", "PING"),
                                  "BADARG TRACEPARENT cannot carry another TRACESTATE"),
                                 (("TRACEPARENT", "x", "TRACESTATE", "a=1", "PING"), "BADARG bad traceparent")):
                reply = await call(*args)
                assert isinstance(reply, hiredis.ReplyError) and str(reply).startswith(expect), (args, reply)
            # What the W3C allows: the bounds exactly, empty members, spaces around members,
            # multi-tenant keys, spaces inside a value, any case of the word.
            widest = b",".join(b"k%02d=%s" % (i, b"x" * 11) for i in range(32))  # 32 * 15 + 31 = 511
            widest += b"y"
            assert len(widest) == TRACESTATE_MAX_LEN
            assert await call("TRACEPARENT", TP, "TRACESTATE", widest, "ECHO", "widest") == b"widest"
            assert await call("TRACEPARENT", TP, "tracestate", b" a=1 , ,tenant@sys=x y,\t", "ECHO", "lax") == b"lax"
            assert await call("TRACEPARENT", TP, "TRACESTATE", b"", "ECHO", "empty") == b"empty"
            writer.write(f"TRACEPARENT {TP} TRACESTATE congo=1 PING\r\n".encode())  # inline form too
            assert await read_reply(reader, parser) == b"PONG"
            writer.close()

    run(main())
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["ECHO", "ECHO", "ECHO", "PING"]  # nothing hostile ran
    (ping,) = [s for s in spans if s.name == "PING"]
    lax = [s for s in spans if s.name == "ECHO" and s.parent is not None and "tenant@sys" in s.parent.trace_state]
    assert len(lax) == 1 and list(lax[0].parent.trace_state.items()) == [("a", "1"), ("tenant@sys", "x y")]
    assert ping.parent is not None and dict(ping.parent.trace_state) == {"congo": "1"}
    assert sum(len(s.parent.trace_state) == 32 for s in spans if s.parent is not None) == 1


def test_a_traced_command_is_checked_against_the_acl_as_itself(tmp_path: Path, run: Any) -> None:
    provider, exporter = spans_to_memory()
    acl = tmp_path / "users.toml"
    acl.write_text(f'[users.alice]\npassword = "{hash_password("alice-password-1234", n=16)}"\n'
                   'commands = ["locks"]\nlock = ["jobs/*"]\n')

    async def main() -> None:
        async with traced_server(tmp_path / "data", provider, acl_file=acl) as server:
            reader, writer = await aio_raw(server.port)
            parser = hiredis.Reader()

            async def call(*args: str) -> Any:
                writer.write(b"".join([f"*{len(args)}\r\n".encode()]
                                      + [b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args]))
                return await read_reply(reader, parser)

            # Before AUTH: the prefix opens no door.
            assert str(await call("TRACEPARENT", TP, "SESSION.OPEN", "10000")).startswith("NOAUTH")
            assert await call("AUTH", "alice", "alice-password-1234") == b"OK"
            cred = (await call("TRACEPARENT", TP, "SESSION.OPEN", "10000")).decode()
            assert str(await call("TRACEPARENT", TP, "LOCK.TRY", "other/1", cred)).startswith("NOPERM")
            assert int(await call("TRACEPARENT", TP, "LOCK.TRY", "jobs/1", cred)) > 0
            writer.close()

    run(main())
    names = [s.name for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert sorted(names) == ["LOCK.TRY", "SESSION.OPEN"]  # the refused ones ran nothing


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, cwd=tempfile.gettempdir())


# Makes `import opentelemetry...` fail as if it were not installed.
_BLOCK = ("import sys\n"
          "class Block:\n"
          "    def find_spec(self, name, path=None, target=None):\n"
          "        if name == {0!r} or name.startswith({0!r} + '.'):\n"
          "            raise ImportError(name)\n"
          "sys.meta_path.insert(0, Block())\n")


def test_without_opentelemetry_the_library_works_and_tracing_says_what_to_install(tmp_path: Path) -> None:
    code = _BLOCK.format("opentelemetry") + f"""
import asyncio, sys
from pathlib import Path
from coordcore.client import AsyncClient, Client
from coordcore.server import Server, ServerConfig
from coordcore.server.acl import hash_password
async def main():
    server = Server(ServerConfig(port=0, data_dir=Path({str(tmp_path)!r}), worker_id=1, fsync=False,
                                 log_level="warning"))
    await server.start()
    async with AsyncClient(port=server.port) as client:
        async with client.lock("jobs/1", ttl=10) as grant:
            print("token", grant.token)
    await server.close()
asyncio.run(main())
assert not any(m.startswith("opentelemetry") for m in sys.modules), "imported eagerly"
try:
    Client(tracing=True)
except Exception as exc:
    print(type(exc).__name__, exc)
"""
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert "token " in done.stdout
    assert "CoordcoreError tracing needs the OpenTelemetry API: pip install 'coordcore[otel]'" in done.stdout


def test_serve_otel_without_the_sdk_is_a_clear_error(tmp_path: Path) -> None:
    code = _BLOCK.format("opentelemetry.sdk") + f"""
from coordcore.server.cli import main
raise SystemExit(main(["--port", "0", "--data-dir", {str(tmp_path)!r}, "--worker-id", "1", "--otel"]))
"""
    done = _python(code)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "--otel needs the OpenTelemetry SDK" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())  # it stopped before making anything


def test_serve_otel_exports_spans_as_the_environment_says(tmp_path: Path) -> None:
    """A real `coordcore serve --otel` process with OTEL_TRACES_EXPORTER=console: the
    spans of a traced client's commands are written when it stops."""
    from tests.server.ccserver import ServerProc

    server = ServerProc(tmp_path / "data", "--otel", env={"OTEL_TRACES_EXPORTER": "console",
                                                          "OTEL_SERVICE_NAME": "coordcore-test"})
    server.start()
    provider, exporter = spans_to_memory()
    try:
        with Client(port=server.port, tracing=provider) as client:
            with client.lock("jobs/9", ttl=10):
                pass
    finally:
        assert server.proc is not None
        server.proc.terminate()
        out, _ = server.proc.communicate(timeout=30)
    text = out.decode()
    (acquire,) = by_name(exporter.get_finished_spans(), "LOCK.ACQUIRE", SpanKind.CLIENT)
    assert f"{acquire.context.trace_id:032x}" in text  # the server's spans joined the client's trace
    assert '"name": "LOCK.ACQUIRE"' in text and '"name": "coordcore.commit"' in text
    assert '"service.name": "coordcore-test"' in text
