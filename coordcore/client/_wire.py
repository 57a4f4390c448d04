"""What the sync and asyncio clients share: command packing, reply parsing, error mapping.

Replies are parsed by ``hiredis.Reader``; an error reply ``-CODE message`` becomes an
instance of the coordcore exception class registered for ``CODE``
(:func:`coordcore.errors.error_for_code`), so ``except LockTimeout`` works the same
embedded and over the network.

>>> err = error_from_reply("TIMEOUT lock 'a' not granted within 10 ms")
>>> type(err).__name__, str(err)
('LockTimeout', "lock 'a' not granted within 10 ms")
>>> type(error_from_reply("ERR something")).__name__
'CoordcoreError'
>>> pack(["ID.RANGE", 4096])
b'*2\\r\\n$8\\r\\nID.RANGE\\r\\n$4\\r\\n4096\\r\\n'
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import hiredis

from coordcore.errors import CoordcoreError, error_for_code

__all__ = ["Endpoint", "endpoints_from", "error_from_reply", "new_reader", "pack", "parse_endpoint", "to_dict"]

Arg = bytes | str | int | float


def error_from_reply(text: str) -> CoordcoreError:
    """The exception for an error reply's text (``CODE message``)."""
    code, _, message = text.partition(" ")
    cls = error_for_code(code)
    if cls is CoordcoreError:
        message = text  # an unknown code word: keep it in the message
    try:
        return cls(message)
    except Exception:  # pragma: no cover - a class with an unusual constructor
        return CoordcoreError(text)


def new_reader() -> hiredis.Reader:
    return hiredis.Reader(replyError=error_from_reply)


def pack(args: Sequence[Arg]) -> bytes:
    """One request as RESP (an array of bulk strings)."""
    return hiredis.pack_command(tuple(args))  # type: ignore[arg-type,no-any-return]


def to_dict(reply: Any) -> dict[str, Any]:
    """A map reply (RESP3 dict, or RESP2 flat list) as ``{str: value}``."""
    if isinstance(reply, dict):
        items = list(reply.items())
    else:
        items = list(zip(reply[::2], reply[1::2]))
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in items}


@dataclasses.dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_endpoint(text: str | bytes) -> Endpoint:
    """``"host:port"`` to an Endpoint.

    >>> parse_endpoint(b"127.0.0.1:7380")
    Endpoint(host='127.0.0.1', port=7380)
    """
    if isinstance(text, bytes):
        text = text.decode()
    host, _, port = text.rpartition(":")
    return Endpoint(host.strip("[]"), int(port))


def endpoints_from(host: str | Sequence[str], port: int) -> list[Endpoint]:
    """The servers a client is given: one host (with ``port``), or several ``host:port``
    as a list or a comma-separated string (a cluster; an entry without a port takes
    ``port``).

    >>> endpoints_from("127.0.0.1", 7379)
    [Endpoint(host='127.0.0.1', port=7379)]
    >>> [str(e) for e in endpoints_from("127.0.0.1:7001,127.0.0.1:7002", 7379)]
    ['127.0.0.1:7001', '127.0.0.1:7002']
    """
    if isinstance(host, str) and "," not in host:
        return [Endpoint(host, port)]
    parts = host.split(",") if isinstance(host, str) else list(host)
    out = [parse_endpoint(p.strip()) if ":" in p else Endpoint(p.strip(), port) for p in parts if p.strip()]
    if not out:
        raise ValueError(f"no server address in {host!r}")
    return out
