"""Fenced locks and leases: the deterministic lock state machine, its durable log, the
embedded asyncio lock service and the fencing helper."""
from coordcore.locks.log import BatchLog

__all__ = [
    "BatchLog",
]
