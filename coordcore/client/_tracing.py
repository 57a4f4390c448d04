"""Client spans, one per command sent: what both transports call when tracing is on.

A span is named after its command (``LOCK.ACQUIRE``), of kind CLIENT, with the
OpenTelemetry semantic conventions' database attributes (``db.system.name``,
``db.operation.name``, ``server.address``, ``server.port``); the key only with
``trace_keys`` (``coordcore.key``; never a session credential or any other argument).
An error reply sets the span's status to ERROR with ``error.type``, the reply's code
word. A sampled span's context goes to the server as the command's ``TRACEPARENT`` prefix
(see :mod:`coordcore.tracing`), so the server's span is its child; its ``tracestate``,
when it has one, goes along (``TRACESTATE``), members beyond the W3C bound of 512 bytes
dropped from the right.

When tracing is off a transport holds None instead of a :class:`CommandTracer` and
tests it once per command: nothing else runs, and OpenTelemetry is never imported.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from coordcore.client._wire import Arg, Endpoint
from coordcore.errors import BadArgument, CoordcoreError
from coordcore.tracing import DB_SYSTEM, format_traceparent, format_tracestate, require_api, tracer_from

__all__ = ["KEYED", "CommandTracer", "tracer_for"]

#: The commands whose first argument is a key (``coordcore.server.cmddocs`` marks them
#: ``keyed``; a test holds the two equal).
KEYED = frozenset({
    "ELECT.CAMPAIGN", "ELECT.LEADER", "ELECT.PROCLAIM", "ELECT.RESIGN", "LOCK.ACQUIRE", "LOCK.CANCEL",
    "LOCK.INFO", "LOCK.RELEASE", "LOCK.TRY", "POOL.ACQUIRE", "POOL.DEFINE", "POOL.INFO", "POOL.RELEASE",
    "POOL.RESIZE", "POOL.TENANT", "POOL.TRY", "SEM.ACQUIRE", "SEM.INFO", "SEM.RELEASE", "SEM.TRY",
})


def _name(arg: Arg) -> str:
    if isinstance(arg, bytes | bytearray | memoryview):
        return bytes(arg)[:64].decode("ascii", "replace").upper()
    return str(arg)[:64].upper()


class CommandTracer:
    """Starts and ends the client span of each command (see the module docstring)."""

    def __init__(self, tracer: Any, trace_keys: bool) -> None:
        trace = require_api()
        self._tracer = tracer
        self._keys = trace_keys
        self._client_kind = trace.SpanKind.CLIENT
        self._error = trace.StatusCode.ERROR

    def begin(self, args: Sequence[Arg], endpoint: Endpoint) -> tuple[Any, Sequence[Arg]]:
        """Start the span of command ``args`` sent to ``endpoint``: the span, and the
        arguments to send (with the ``TRACEPARENT`` prefix when the span is sampled)."""
        name = _name(args[0]) if args else "?"
        attributes: dict[str, Any] = {"db.system.name": DB_SYSTEM, "db.operation.name": name,
                                      "server.address": endpoint.host, "server.port": endpoint.port}
        if self._keys and name in KEYED and len(args) > 1:
            key = args[1]
            attributes["coordcore.key"] = bytes(key).decode("utf-8", "backslashreplace") \
                if isinstance(key, bytes | bytearray | memoryview) else str(key)
        span = self._tracer.start_span(name, kind=self._client_kind, attributes=attributes)
        ctx = span.get_span_context()
        if not ctx.trace_flags.sampled:
            return span, args  # nothing recorded here: nothing for the server to join
        parent = format_traceparent(ctx.trace_id, ctx.span_id, int(ctx.trace_flags))
        state = format_tracestate(ctx.trace_state.items()) if ctx.trace_state else None
        if state is None:
            return span, ["TRACEPARENT", parent, *args]
        return span, ["TRACEPARENT", parent, "TRACESTATE", state, *args]

    def end(self, span: Any, error: BaseException | None = None) -> None:
        """End ``span``; ``error``: what the command raised (an error reply, a lost
        connection...), which sets the span's status to ERROR."""
        if error is not None:
            code = error.code if isinstance(error, CoordcoreError) else type(error).__name__
            span.set_attribute("error.type", code)
            span.set_status(self._error, f"{code}: {error}"[:256])
        span.end()

    def call(self, args: Sequence[Arg], endpoint: Endpoint, send: Callable[[Sequence[Arg]], Any]) -> Any:
        """``send(args)`` (a blocking round trip) inside the command's span."""
        span, wire_args = self.begin(args, endpoint)
        try:
            reply = send(wire_args)
        except BaseException as exc:
            self.end(span, exc)
            raise
        self.end(span)
        return reply

    async def acall(self, args: Sequence[Arg], endpoint: Endpoint,
                    send: Callable[[Sequence[Arg]], Awaitable[Any]]) -> Any:
        """``await send(args)`` inside the command's span."""
        span, wire_args = self.begin(args, endpoint)
        try:
            reply = await send(wire_args)
        except BaseException as exc:
            self.end(span, exc)
            raise
        self.end(span)
        return reply


def tracer_for(tracing: object, trace_keys: bool) -> CommandTracer | None:
    """The client's tracer: None when ``tracing`` is off (False), else spans from the
    global tracer provider (True) or from the provider given."""
    tracer = tracer_from(tracing, "coordcore.client")
    if tracer is None:
        if trace_keys:
            raise BadArgument("trace_keys needs tracing on")
        return None
    return CommandTracer(tracer, trace_keys)
