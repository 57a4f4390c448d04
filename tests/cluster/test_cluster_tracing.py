"""Tracing in cluster mode, on in-process servers and a real etcd cluster: a traced
command sent to the leader gives the client's span, the leader's server span (its
child) and the span of the batch that the leader appended to etcd, linked to the server
span. A follower, which serves no lock service, answers a traced lock command with
MOVED inside a server span of its own, and makes no commit span."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import hiredis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from tests.server.ccserver import aio_raw, read_reply
from tests.server.test_tracing import assert_commit_of, by_name, commits_linking, spans_to_memory

from coordcore.client import AsyncClient
from coordcore.cluster.testing import EtcdCluster
from coordcore.server import Server, ServerConfig
from coordcore.server.log import configure
from coordcore.tracing import format_traceparent


@asynccontextmanager
async def cluster_server(data_dir: Path, etcd: EtcdCluster, name: str, provider: Any) -> AsyncIterator[Server]:
    cfg = ServerConfig(port=0, data_dir=data_dir, worker_id=None, fsync=False, etcd=tuple(etcd.endpoints),
                       cluster=name, etcd_ttl=2.0, otel=True)
    server = Server(cfg, log=configure("kv", "warning", name="coordcore.server.test"), tracer_provider=provider)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def test_a_traced_command_to_the_leader_shows_client_server_and_commit_spans(
        healthy: EtcdCluster, tmp_path: Path, run: Callable[..., Any]) -> None:
    provider, exporter = spans_to_memory()
    tracer = provider.get_tracer("the test")
    name = f"t{uuid.uuid4().hex[:10]}"
    got: dict[str, Any] = {}

    async def main() -> None:
        async with cluster_server(tmp_path / "a", healthy, name, provider) as a:
            await until(lambda: a.cluster.role == "leader", "the first server never led")
            async with cluster_server(tmp_path / "b", healthy, name, provider) as b:
                await until(lambda: b.cluster.role == "follower" and b.cluster.replica_lag() == 0,
                            "the second server never followed")
                exporter.clear()  # only what follows: the terms' own records are not traced
                async with AsyncClient(port=a.port, tracing=provider) as client:
                    with tracer.start_as_current_span("job"):
                        grant = await client.acquire("jobs/1", ttl=10)
                    got["token"], got["port"] = grant.token, a.port
                    got["index"] = a.cluster.log_index
                    await client.release(grant)
                # The follower, asked directly (raw: a client would follow the redirect).
                reader, writer = await aio_raw(b.port)
                parser = hiredis.Reader()
                tp = format_traceparent(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, 1)
                args = [b"TRACEPARENT", tp.encode(), b"SESSION.OPEN", b"10"]
                writer.write(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in args))
                got["follower"] = await read_reply(reader, parser)
                writer.close()

    run(main(), timeout=120)
    spans = exporter.get_finished_spans()
    (job,) = [s for s in spans if s.name == "job"]
    (client_span,) = by_name(spans, "LOCK.ACQUIRE", SpanKind.CLIENT)
    (server_span,) = by_name(spans, "LOCK.ACQUIRE", SpanKind.SERVER)
    assert client_span.parent is not None and client_span.parent.span_id == job.context.span_id
    assert server_span.parent is not None and server_span.parent.span_id == client_span.context.span_id
    assert server_span.parent.is_remote and server_span.context.trace_id == job.context.trace_id
    assert dict(client_span.attributes or {})["server.port"] == got["port"]
    assert server_span.status.status_code is StatusCode.UNSET
    # The leader appended the batch that carried the acquire to etcd: its span is linked
    # to the server span, the child of it, in the same trace, within the request's time.
    attrs = assert_commit_of(spans, server_span, client_span)
    assert attrs["coordcore.revision"] >= got["token"]  # the batch that granted the token
    assert "coordcore.fsync.duration" not in attrs  # etcd made it durable, not a local fsync
    (release,) = by_name(spans, "LOCK.RELEASE", SpanKind.SERVER)
    assert release.context.trace_id != job.context.trace_id and len(commits_linking(spans, release)) == 1
    # The follower: MOVED to the leader, an ERROR server span in the caller's trace, no commit.
    assert isinstance(got["follower"], hiredis.ReplyError) and str(got["follower"]).startswith("MOVED")
    moved: list[ReadableSpan] = [s for s in by_name(spans, "SESSION.OPEN", SpanKind.SERVER)
                                 if s.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C]
    assert len(moved) == 1 and moved[0].parent is not None and moved[0].parent.span_id == 0xB7AD6B7169203331
    assert moved[0].status.status_code is StatusCode.ERROR
    assert dict(moved[0].attributes or {})["error.type"] == "MOVED"
    assert commits_linking(spans, moved[0]) == []
