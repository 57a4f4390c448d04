"""coordcore: unique time-ordered IDs, consistent hashing and fenced locks, at hot-path speed.

The facade only re-exports; see the submodules for the details.
"""
import importlib as _importlib
import typing as _typing

from coordcore._version import __version__

if _typing.TYPE_CHECKING:  # the names, for type checkers; at run time they load on first use
    from coordcore.client import AsyncClient, Client
    from coordcore.errors import CoordcoreError
    from coordcore.ids import Layout, Snowflake, WorkerIdSource, decode
    from coordcore.locks import FencedResource, LockService, Session
    from coordcore.ring import (
        BoundedLoadRing,
        HashRing,
        Rendezvous,
        RingSnapshot,
        hash64,
        hash64_many,
        jump_hash,
        jump_hash_many,
        moved_fraction,
    )
    from coordcore.types import Grant, Key, Leader, SessionLike

# Where each public name lives. Importing coordcore (or coordcore.errors, coordcore.ids)
# loads only what is used: a process that makes IDs never imports the client or the
# lock service.
_HOME = {
    "AsyncClient": "coordcore.client", "Client": "coordcore.client",
    "CoordcoreError": "coordcore.errors",
    "Layout": "coordcore.ids", "Snowflake": "coordcore.ids", "WorkerIdSource": "coordcore.ids",
    "decode": "coordcore.ids",
    "FencedResource": "coordcore.locks", "LockService": "coordcore.locks", "Session": "coordcore.locks",
    **{name: "coordcore.types" for name in ("Grant", "Key", "Leader", "SessionLike")},
    **{name: "coordcore.ring" for name in ("BoundedLoadRing", "HashRing", "Rendezvous", "RingSnapshot", "hash64",
                                            "hash64_many", "jump_hash", "jump_hash_many", "moved_fraction")},
}


def __getattr__(name: str) -> _typing.Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'coordcore' has no attribute {name!r}")
    value = getattr(_importlib.import_module(home), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "CoordcoreError",
    # ids
    "Layout",
    "Snowflake",
    "WorkerIdSource",
    "decode",
    # ring
    "BoundedLoadRing",
    "HashRing",
    "Rendezvous",
    "RingSnapshot",
    "hash64",
    "hash64_many",
    "jump_hash",
    "jump_hash_many",
    "moved_fraction",
    # server and clients
    "AsyncClient",
    "Client",
    # locks
    "FencedResource",
    "LockService",
    "Session",
    # the value types (coordcore.types), shared by the embedded service and the clients
    "Grant",
    "Key",
    "Leader",
    "SessionLike",
    "__version__",
]
