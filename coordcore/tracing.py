"""OpenTelemetry tracing: what the clients, the server and the commit pipeline share.

coordcore depends on the OpenTelemetry *API* only (``pip install 'coordcore[otel]'``),
and imports it lazily: nothing here imports ``opentelemetry`` until tracing is turned
on, so a program that never turns it on never loads it (and works without it).

The trace context travels on the wire as a prefix of the command it belongs to::

    TRACEPARENT 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 LOCK.TRY jobs/1 <session>

Each command carries its own parent, so a pipeline of traced commands (or commands of
several traced tasks sharing one connection) stays correct. The value is a W3C
``traceparent`` of version ``00``; anything else gets ``-BADARG`` and the command does
not run. A W3C ``tracestate`` (vendors' list of ``key=value`` members) may follow as a
second word pair, before the command (no command is named TRACESTATE)::

    TRACEPARENT 00-4bf9...4736-00f0...02b7-01 TRACESTATE congo=t61rcWkgMzE,rojo=00f067aa0ba902b7 LOCK.TRY ...

It is held to the W3C grammar: at most ``TRACESTATE_MAX_LEN`` bytes and
``TRACESTATE_MAX_MEMBERS`` members, each key unique; anything else gets ``-BADARG``.

>>> parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
(100985939111033328018442752961257817910, 67667974448284343, 1)
>>> format_traceparent(100985939111033328018442752961257817910, 67667974448284343, 1)
'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
>>> parse_traceparent(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01")
Traceback (most recent call last):
...
coordcore.errors.BadArgument: bad traceparent: the trace id is all zeros
>>> parse_tracestate(b"congo=t61rcWkgMzE, rojo=00f067aa0ba902b7,,tenant@vendor=x y")
[('congo', 't61rcWkgMzE'), ('rojo', '00f067aa0ba902b7'), ('tenant@vendor', 'x y')]
>>> parse_tracestate(b"Congo=1")
Traceback (most recent call last):
...
coordcore.errors.BadArgument: bad tracestate: member 1 has a bad key (lower-case letters, digits, _-*/ and at most one @)
"""
from __future__ import annotations

import contextvars
import re
from typing import Any

from coordcore.errors import BadArgument, CoordcoreError

__all__ = ["DB_SYSTEM", "LINK", "TRACEPARENT_LEN", "TRACESTATE_MAX_LEN", "TRACESTATE_MAX_MEMBERS", "batch_span",
           "format_traceparent", "format_tracestate", "parse_traceparent", "parse_tracestate", "require_api",
           "tracer_from"]

#: ``db.system.name`` of every span coordcore makes.
DB_SYSTEM = "coordcore"
#: Length of a version-00 ``traceparent``: ``00-<32 hex>-<16 hex>-<2 hex>``.
TRACEPARENT_LEN = 55
_LOWER_HEX = frozenset(b"0123456789abcdef")
#: Bounds of a ``tracestate`` (W3C Trace Context: what a vendor must pass on at least,
#: and the most list members there may be).
TRACESTATE_MAX_LEN = 512
TRACESTATE_MAX_MEMBERS = 32
# The W3C grammar: a simple key, or tenant@system; a value of printable ASCII without
# "," and "=", spaces allowed inside but not at its end.
_TS_KEY = re.compile(rb"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}")
_TS_VALUE = re.compile(rb"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")

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


def parse_tracestate(value: bytes) -> list[tuple[str, str]]:
    """The ``(key, value)`` members of a W3C ``tracestate``, in order; raises
    :class:`~coordcore.errors.BadArgument` for one longer than
    :data:`TRACESTATE_MAX_LEN` bytes, with more than :data:`TRACESTATE_MAX_MEMBERS`
    members, a repeated key, or a member outside the grammar. Empty members (``a=1,,b=2``)
    are skipped, as the W3C allows."""
    if len(value) > TRACESTATE_MAX_LEN:
        raise BadArgument(f"bad tracestate: at most {TRACESTATE_MAX_LEN} bytes, got {len(value)}")
    members: list[tuple[str, str]] = []
    seen: set[bytes] = set()
    for n, part in enumerate(value.split(b","), 1):
        part = part.strip(b" \t")
        if not part:
            continue
        key, eq, val = part.partition(b"=")
        if not eq or _TS_KEY.fullmatch(key) is None:
            raise BadArgument(f"bad tracestate: member {n} has a bad key "
                              "(lower-case letters, digits, _-*/ and at most one @)")
        if _TS_VALUE.fullmatch(val) is None:
            raise BadArgument(f"bad tracestate: member {n} has a bad value "
                              "(1 to 256 printable ASCII characters but , and =, not ending in a space)")
        if key in seen:
            raise BadArgument(f"bad tracestate: member {n} repeats the key {key.decode()!r}")
        seen.add(key)
        members.append((key.decode(), val.decode()))
    if len(members) > TRACESTATE_MAX_MEMBERS:
        raise BadArgument(f"bad tracestate: at most {TRACESTATE_MAX_MEMBERS} members, got {len(members)}")
    return members


def format_tracestate(members: Any) -> str | None:
    """The ``tracestate`` to send for ``members`` (``(key, value)`` pairs, as an
    OpenTelemetry ``TraceState`` iterates its items), or None when there is none: the
    members in order, those at the end dropped until it fits in
    :data:`TRACESTATE_MAX_LEN` bytes (the W3C lets a hop drop members from the right)."""
    parts = [f"{k}={v}" for k, v in members][:TRACESTATE_MAX_MEMBERS]
    while parts and sum(map(len, parts)) + len(parts) - 1 > TRACESTATE_MAX_LEN:
        parts.pop()
    return ",".join(parts) or None


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
