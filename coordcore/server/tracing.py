"""Server spans: one per traced command, and what ``coordcore serve --otel`` sets up.

A command that arrives as ``TRACEPARENT <traceparent> [TRACESTATE <tracestate>]
<command> [arg ...]`` (see :mod:`coordcore.tracing`) is served by the command table,
never by the native lane, and, while the server traces, inside a span of kind SERVER
that is the child of the client's span (its ``tracestate`` restored with it, so the
server's span carries it on), named after the command, with ``db.system.name``,
``db.operation.name`` and ``client.address`` (never a key or any other argument). An
error reply sets its status to ERROR. The commit pipeline links the batch that
carries the command to this span (:data:`coordcore.tracing.LINK`).

Requests without the prefix never reach this module: the read loop looks for it only
when a request's name is not in the command table.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from coordcore.errors import CoordcoreError
from coordcore.server.core import Client, Handler, Reply
from coordcore.tracing import DB_SYSTEM, LINK, require_api, tracer_from

__all__ = ["ServerTracer", "sdk_provider"]


class ServerTracer:
    """Makes the span of each traced command (see the module docstring)."""

    def __init__(self, tracer: Any) -> None:
        trace = self._trace = require_api()
        #: What the commit pipeline makes its batch spans with.
        self.tracer = tracer
        self._server_kind = trace.SpanKind.SERVER
        self._error = trace.StatusCode.ERROR
        self._flags = trace.TraceFlags
        self._span_context = trace.SpanContext
        self._non_recording = trace.NonRecordingSpan
        self._trace_state = trace.TraceState

    @classmethod
    def from_option(cls, tracing: object) -> ServerTracer | None:
        """None for False/None; the global tracer provider's for True; else the provider's."""
        tracer = tracer_from(tracing, "coordcore.server")
        return None if tracer is None else cls(tracer)

    def wrap(self, handler: Handler, name: bytes, parent: tuple[int, int, int], peer: str,
             state: Sequence[tuple[str, str]] = ()) -> Handler:
        """``handler``, run inside a span whose parent is the client's ``parent``
        (``(trace_id, span_id, flags)`` from its traceparent, with the ``(key, value)``
        members of its tracestate)."""
        trace = self._trace
        trace_id, span_id, flags = parent
        remote = self._span_context(trace_id, span_id, is_remote=True, trace_flags=self._flags(flags),
                                    trace_state=self._trace_state(state) if state else None)
        context = trace.set_span_in_context(self._non_recording(remote))
        op = name.decode("ascii", "replace").upper()
        attributes = {"db.system.name": DB_SYSTEM, "db.operation.name": op, "client.address": peer}

        def traced(conn: Client, req: list[bytes]) -> Reply:
            span = self.tracer.start_span(op, context=context, kind=self._server_kind, attributes=attributes)
            link = span.get_span_context()
            token = LINK.set(link)
            try:
                reply = handler(conn, req)
            except BaseException as exc:
                self._end(span, exc)
                raise
            finally:
                LINK.reset(token)
            if type(reply) is bytes:
                self._end_reply(span, reply)
                return reply
            return self._finish(span, link, reply)

        return traced

    async def _finish(self, span: Any, link: Any, reply: Any) -> bytes:
        # Runs as the command's task, in a copy of the context: a coroutine handler
        # submits its commands from here, so they carry the link too.
        LINK.set(link)
        try:
            out: bytes = await reply
        except BaseException as exc:
            self._end(span, exc)
            raise
        self._end_reply(span, out)
        return out

    def _end_reply(self, span: Any, reply: bytes) -> None:
        if reply[:1] == b"-":  # an error reply: its code word is the first word
            code = reply[1:].split(b" ", 1)[0].split(b"\r", 1)[0][:32].decode("ascii", "replace")
            span.set_attribute("error.type", code)
            span.set_status(self._error, reply[1:257].split(b"\r", 1)[0].decode("utf-8", "replace"))
        span.end()

    def _end(self, span: Any, exc: BaseException) -> None:
        code = exc.code if isinstance(exc, CoordcoreError) else type(exc).__name__
        span.set_attribute("error.type", code)
        span.set_status(self._error, f"{code}: {exc}"[:256])
        span.end()


def sdk_provider() -> Any:
    """A tracer provider of the OpenTelemetry SDK for ``coordcore serve --otel``, set up
    by the standard environment variables: the SDK's own (``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``) and
    ``OTEL_TRACES_EXPORTER``: ``otlp`` (the default; the exporter package reads
    ``OTEL_EXPORTER_OTLP_*``), ``console`` or ``none``. Raises CoordcoreError naming
    what to install when the SDK or the exporter is missing."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise CoordcoreError("--otel needs the OpenTelemetry SDK: pip install 'coordcore[otel]' "
                             "opentelemetry-sdk (and an exporter, e.g. opentelemetry-exporter-otlp)") from None
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    exporters: list[Any] = []
    for name in names:
        if name == "none":
            continue
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            exporters.append(_otlp_exporter())
        else:
            raise CoordcoreError(f"OTEL_TRACES_EXPORTER={name!r}: coordcore knows otlp, console and none")
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "coordcore")})
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _otlp_exporter() -> Any:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL",
                                                                                   "http/protobuf"))
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise CoordcoreError(f"OTEL_TRACES_EXPORTER=otlp ({protocol}) needs an OTLP exporter: pip install "
                             "opentelemetry-exporter-otlp (or set OTEL_TRACES_EXPORTER=console or none)") from None
    return OTLPSpanExporter()
