"""A lock service on an audited file log, for the audit tests."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordcore.audit.trail import AuditedStore, attach
from coordcore.locks.service import LockService
from coordcore.locks.store import FileStore


async def open_audited(d: Path, key: Ed25519PrivateKey | None, every: int = 10_000,
                       segment_bytes: int = 0, archive: Callable[[Path], None] | None = None,
                       **kw: object) -> tuple[LockService, AuditedStore]:
    inner = await FileStore.open(d / "locks", durability="unsafe-no-fsync")
    store = await AuditedStore.open(inner, d / "audit", key=key, every=every, segment_bytes=segment_bytes,
                                    archive=archive)
    svc = await LockService.open_store(store, **kw)  # type: ignore[arg-type]  # (kw: clock)
    attach(svc, store)
    return svc, store


async def some_history(svc: LockService) -> None:
    """Two users contend for billing/42, one for jobs/1; a release hands over."""
    a = await svc.open_session(ttl=30, owner=b"alice", keepalive=False)
    b = await svc.open_session(ttl=30, owner=b"bob", keepalive=False)
    g = await svc.acquire("billing/42", a)
    import asyncio
    waiter = asyncio.ensure_future(svc.acquire("billing/42", b))
    await asyncio.sleep(0.01)
    j = await svc.acquire("jobs/1", a)
    await svc.release(g)
    await svc.release(await waiter)
    await svc.release(j)
    await svc.close_session(b)
