"""OpenTelemetry tracing: what the clients, the server and the commit pipeline share.

coordcore depends on the OpenTelemetry *API* only (``pip install 'coordcore[otel]'``),
and imports it lazily: nothing here imports ``opentelemetry`` until tracing is turned
on, so a program that never turns it on never loads it (and works without it).

The trace context travels on the wire as a prefix of the command it belongs to::

    TRACEPARENT 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 LOCK.TRY jobs/1 <session>

Each command carries its own parent, so a pipeline of traced commands (or commands of
several traced tasks sharing one connection) stays correct. The value is a W3C
``traceparent`` of version ``00``; anything else gets ``-BADARG`` and the command does
not run.

>>> parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
(100985939111033328018442752961257817910, 67667974448284343, 1)
>>> format_traceparent(100985939111033328018442752961257817910, 67667974448284343, 1)
'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
>>> parse_traceparent(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01")
Traceback (most recent call last):
...
coordcore.errors.BadArgument: bad traceparent: the trace id is all zeros
"""
from __future__ import annotations

import contextvars
from typing import Any

from coordcore.errors import BadArgument, CoordcoreError

__all__ = ["DB_SYSTEM", "LINK", "TRACEPARENT_LEN", "batch_span", "format_traceparent", "parse_traceparent",
           "require_api", "tracer_from"]

#: ``db.system.name`` of every span coordcore makes.
DB_SYSTEM = "coordcore"
#: Length of a version-00 ``traceparent``: ``00-<32 hex>-<16 hex>-<2 hex>``.
TRACEPARENT_LEN = 55
_LOWER_HEX = frozenset(b"0123456789abcdef")

#: The span context of the traced server request now running (None: untraced). The
#: server sets it around a traced command's handler; the commit pipeline reads it
#: when it queues a request, so the batch that carries the request links to its span.
LINK: contextvars.ContextVar[Any] = contextvars.ContextVar("coordcore_trace_link", default=None)


def _hex(part: bytes, what: str) -> int:
    if not _LOWER_HEX.issuperset(part):
        raise BadArgument(f"bad traceparent: the {what} is not lower-case hex")
    return int(part, 16)


def parse_traceparent(value: bytes) -> tuple[int, int, int]:
    """``(trace_id, span_id, flags)`` of a W3C ``traceparent`` of version 00; raises
    :class:`~coordcore.errors.BadArgument` for anything else (other lengths, versions,
    upper-case or non-hex digits, an all-zero trace or span id)."""
    if len(value) != TRACEPARENT_LEN:
        raise BadArgument(f"bad traceparent: {TRACEPARENT_LEN} bytes expected "
                          f"(00-<32 hex>-<16 hex>-<2 hex>), got {len(value)}")
    if value[2:3] != b"-" or value[35:36] != b"-" or value[52:53] != b"-":
        raise BadArgument("bad traceparent: the form is 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>")
    version = value[:2]
    if version != b"00":
        raise BadArgument(f"bad traceparent: version {version.decode('ascii', 'replace')!r} "
                          "(only 00 is supported)")
    trace_id = _hex(value[3:35], "trace id")
    span_id = _hex(value[36:52], "span id")
    flags = _hex(value[53:55], "flags")
    if not trace_id:
        raise BadArgument("bad traceparent: the trace id is all zeros")
    if not span_id:
        raise BadArgument("bad traceparent: the span id is all zeros")
    return trace_id, span_id, flags


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """The W3C ``traceparent`` (version 00) of a span context."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags & 0xFF:02x}"


def require_api() -> Any:
    """``opentelemetry.trace``, or an error that names the extra to install."""
    try:
        from opentelemetry import trace
    except ImportError:
        raise CoordcoreError("tracing needs the OpenTelemetry API: pip install 'coordcore[otel]'") from None
    return trace


def tracer_from(tracing: object, name: str) -> Any:
    """The tracer that ``tracing`` asks for: None when it is False or None (tracing off),
    the global tracer provider's for True, else ``tracing`` is a tracer provider."""
    if tracing is None or tracing is False:
        return None
    trace = require_api()
    from coordcore._version import __version__

    provider = trace.get_tracer_provider() if tracing is True else tracing
    if not hasattr(provider, "get_tracer"):
        raise BadArgument(f"tracing must be a bool or an OpenTelemetry TracerProvider, not {type(tracing).__name__}")
    return provider.get_tracer(name, __version__)


def batch_span(tracer: Any, name: str, links: list[Any], start_ns: int, attributes: dict[str, Any]) -> None:
    """Record the span of a commit that carried the requests whose span contexts are
    ``links``: linked to each, the child of the first (so its trace shows the commit),
    from ``start_ns`` (``time.time_ns()``) to now."""
    trace = require_api()
    parent = trace.set_span_in_context(trace.NonRecordingSpan(links[0])) if links else None
    span = tracer.start_span(name, context=parent, kind=trace.SpanKind.INTERNAL, attributes=attributes,
                             links=[trace.Link(link) for link in links], start_time=start_ns)
    span.end()
