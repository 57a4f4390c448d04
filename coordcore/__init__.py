"""coordcore: unique time-ordered IDs, consistent hashing and fenced locks, at hot-path speed.

The facade only re-exports; see the submodules for the details.
"""
from coordcore.client import AsyncClient, Client
from coordcore.errors import CoordcoreError
from coordcore.ids import Layout, Snowflake, WorkerIdSource, decode
from coordcore.locks import FencedResource, Grant, LockService, Session
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

__version__ = "0.1.0"

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
    "Grant",
    "LockService",
    "Session",
    "__version__",
]
