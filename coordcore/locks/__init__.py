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
from coordcore.locks.log import BatchLog  # noqa: E402

__all__ += [
    "BatchLog",
]
