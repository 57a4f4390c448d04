"""Child process of the crash test (tests/locks/test_crash.py); not a test module.

    python tests/locks/crash_child.py LOG_DIR SEED TASKS

Opens a durable LockService on LOG_DIR, snapshots once (so the log then holds only this
run's batches), prints ``{"ev": "ready", ...}`` and serves a random workload from TASKS
concurrent tasks until it is killed. Every operation is printed as one JSON line, flushed,
*after* the service acknowledged it: the parent treats each line as a promise that must
survive the SIGKILL that will come at a random moment.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from typing import Any


def emit(**fields: Any) -> None:
    # One write of one short line: atomic on a pipe (< PIPE_BUF), so a kill never
    # leaves half a promise.
    os.write(1, (json.dumps(fields, separators=(",", ":")) + "\n").encode())


async def serve(path: str, seed: int, tasks: int) -> None:
    from coordcore.errors import (
        BadArgument,
        Cancelled,
        LockTimeout,
        NotLeader,
        NotLockHolder,
        SessionExpired,
    )
    from coordcore.locks.service import LockService, Session

    svc = await LockService.open(path, tick_interval=0.05)
    await svc.snapshot()
    emit(ev="ready", rev=svc.revision, pid=os.getpid(), torn=svc.torn_tail is not None)

    async def worker(i: int) -> None:
        rng = random.Random(seed * 1009 + i)
        session: Session | None = None
        while True:
            if session is None or not session.alive:
                session = await svc.open_session(ttl=1.5)
                emit(ev="open", sid=session.id, rev=svc.revision)
            sid = session.id
            r = rng.random()
            try:
                if r < 0.55:
                    shared = rng.random() < 0.25
                    key = f"lock/{rng.randrange(6)}"
                    g = await svc.acquire(key, session, shared=shared, timeout=0.3)
                    emit(ev="grant", kind=g.kind, key=key, sid=sid, token=g.token, rev=svc.revision)
                    await asyncio.sleep(rng.random() * 0.003)
                    await svc.release(g)
                    emit(ev="release", kind=g.kind, key=key, sid=sid, token=g.token, rev=svc.revision)
                elif r < 0.65:
                    key = f"lock/{rng.randrange(6)}"
                    g2 = await svc.try_acquire(key, session)
                    if g2 is not None:
                        emit(ev="grant", kind=g2.kind, key=key, sid=sid, token=g2.token, rev=svc.revision)
                        await svc.release(g2)
                        emit(ev="release", kind=g2.kind, key=key, sid=sid, token=g2.token, rev=svc.revision)
                elif r < 0.8:
                    key = f"sem/{rng.randrange(2)}"
                    g = await svc.acquire_semaphore(key, session, 3, timeout=0.3)
                    emit(ev="grant", kind=g.kind, key=key, sid=sid, token=g.token, rev=svc.revision)
                    await asyncio.sleep(rng.random() * 0.003)
                    await svc.release(g)
                    emit(ev="release", kind=g.kind, key=key, sid=sid, token=g.token, rev=svc.revision)
                elif r < 0.95:
                    key = f"election/{rng.randrange(2)}"
                    g = await svc.campaign(key, session, f"w{i}", timeout=0.3)
                    emit(ev="grant", kind=g.kind, key=key, sid=sid, token=g.token, rev=svc.revision)
                    rev = await svc.proclaim(g, f"w{i}-again")
                    emit(ev="proclaim", key=key, sid=sid, token=g.token, at=rev, rev=svc.revision)
                    await svc.resign(g)
                    emit(ev="release", kind=g.kind, key=key, sid=sid, token=g.token, rev=svc.revision)
                else:
                    await session.close()
                    emit(ev="close", sid=sid, rev=svc.revision)
                    session = None
            except (LockTimeout, SessionExpired, NotLockHolder, NotLeader, Cancelled):
                pass
            except BadArgument as exc:  # two tasks of one session in one election: fine
                if "already" not in str(exc):
                    raise

    await asyncio.gather(*(worker(i) for i in range(tasks)))


def main() -> None:
    path, seed, tasks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import uvloop

    uvloop.run(serve(path, seed, tasks))


if __name__ == "__main__":
    main()
