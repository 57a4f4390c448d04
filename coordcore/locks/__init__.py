"""Fenced locks: the deterministic lock state machine (and, later, its log and service)."""
from coordcore.locks.machine import (
    Applied,
    BatchBuilder,
    Command,
    Contender,
    Event,
    EventKind,
    KeyInfo,
    Kind,
    LockMachine,
    Mode,
    Op,
    Result,
    SessionInfo,
    Status,
    decode_batch,
    tick,
)

__all__ = [
    # machine
    "Applied",
    "BatchBuilder",
    "Command",
    "Contender",
    "Event",
    "EventKind",
    "KeyInfo",
    "Kind",
    "LockMachine",
    "Mode",
    "Op",
    "Result",
    "SessionInfo",
    "Status",
    "decode_batch",
    "tick",
]

# --- the durable log, the embedded service and the fencing helper (branch locksvc) ---
from coordcore.locks.fencing import FencedResource  # noqa: E402
from coordcore.locks.log import BatchLog  # noqa: E402
from coordcore.locks.service import (  # noqa: E402
    BatchStats,
    Grant,
    Leader,
    LockService,
    ManualClock,
    Session,
    Watch,
)

__all__ += [
    "BatchLog",
    "BatchStats",
    "FencedResource",
    "Grant",
    "Leader",
    "LockService",
    "ManualClock",
    "Session",
    "Watch",
]
