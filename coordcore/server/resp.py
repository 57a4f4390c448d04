"""RESP reply encoding (RESP2 and RESP3), the server side of the Redis wire protocol.

Requests are parsed natively (``coordcore._native.lockwire.WireConn``), or by
``hiredis.Reader`` once a stream leaves the request grammar (see
:mod:`coordcore.server.protocol`); replies are built here as ``bytes``. Every encoder takes ``resp3`` where the two
protocol versions differ (null, maps, booleans, doubles, pushes).

>>> encode_int(42)
b':42\\r\\n'
>>> encode_bulk(b"hi")
b'$2\\r\\nhi\\r\\n'
>>> encode_array([encode_int(1), encode_bulk(b"x")])
b'*2\\r\\n:1\\r\\n$1\\r\\nx\\r\\n'
>>> encode_map([(b"a", encode_int(1))], resp3=False)
b'*2\\r\\n$1\\r\\na\\r\\n:1\\r\\n'
>>> encode_map([(b"a", encode_int(1))], resp3=True)
b'%1\\r\\n$1\\r\\na\\r\\n:1\\r\\n'
>>> encode_error("BADARG", "bad\\r\\nthing")
b'-BADARG bad  thing\\r\\n'
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from coordcore.errors import CoordcoreError

__all__ = [
    "OK",
    "PONG",
    "QUEUED_NULL2",
    "encode_array",
    "encode_bool",
    "encode_bulk",
    "encode_double",
    "encode_error",
    "encode_exception",
    "encode_int",
    "encode_map",
    "encode_null",
    "encode_push",
    "encode_simple",
]

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
QUEUED_NULL2 = b"$-1\r\n"
_NULL3 = b"_\r\n"


def encode_simple(text: str) -> bytes:
    """A simple string (``+text``); CR and LF are replaced, they would break the frame."""
    return b"+" + _one_line(text) + b"\r\n"


def encode_error(code: str, message: str) -> bytes:
    """An error reply ``-CODE message``: the code word first, then a one-line message."""
    return b"-" + _one_line(f"{code} {message}") + b"\r\n"


def encode_exception(exc: CoordcoreError) -> bytes:
    """The error reply for a coordcore exception (its class's wire code and message)."""
    return encode_error(exc.code, str(exc) or type(exc).__name__)


def encode_int(value: int) -> bytes:
    return b":%d\r\n" % value


def encode_bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def encode_null(resp3: bool) -> bytes:
    return _NULL3 if resp3 else QUEUED_NULL2


def encode_bool(value: bool, resp3: bool) -> bytes:
    if resp3:
        return b"#t\r\n" if value else b"#f\r\n"
    return b":1\r\n" if value else b":0\r\n"


def encode_double(value: float, resp3: bool) -> bytes:
    text = repr(float(value)).encode()
    return b",%b\r\n" % text if resp3 else encode_bulk(text)


def encode_array(items: Sequence[bytes]) -> bytes:
    """An array of already-encoded items."""
    return b"*%d\r\n%b" % (len(items), b"".join(items))


def encode_push(items: Sequence[bytes], resp3: bool) -> bytes:
    """An out-of-band push (RESP3 ``>``); on RESP2 it is a plain array, like pub/sub."""
    return b"%c%d\r\n%b" % (62 if resp3 else 42, len(items), b"".join(items))


def encode_map(pairs: Iterable[tuple[bytes, bytes]], resp3: bool) -> bytes:
    """A map from bulk-string keys to encoded values: RESP3 ``%``, RESP2 a flat array."""
    parts: list[bytes] = []
    for key, value in pairs:
        parts.append(encode_bulk(key))
        parts.append(value)
    if resp3:
        return b"%%%d\r\n%b" % (len(parts) // 2, b"".join(parts))
    return b"*%d\r\n%b" % (len(parts), b"".join(parts))


def _one_line(text: str) -> bytes:
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")
