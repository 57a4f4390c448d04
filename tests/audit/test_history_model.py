"""A history query returns exactly the events the reference model gives for the same
commands, with the user the test itself opened each session as."""
from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any, Callable

import pytest

from coordcore.audit.history import HistoryIndex, query
from coordcore.audit.journal import JOURNAL, JournalReader
from coordcore.errors import CoordcoreError
from coordcore.locks.service import ManualClock
from coordcore.types import Grant
from tests.audit.helpers import open_audited
from tests.models.lock_model import LockModel

KINDS = {1: "opened", 2: "closed", 3: "expired", 4: "waited", 5: "granted", 6: "released",
         7: "cancelled", 8: "proclaimed"}
KEYS = ["billing/1", "billing/2", "jobs/1"]


async def drive(d: Path, rng: random.Random, clock: ManualClock) -> dict[int, str]:
    svc, _ = await open_audited(d, None, clock=clock, tick_interval=0)
    owner_of: dict[int, str] = {}
    live: list[Any] = []
    grants: list[Grant] = []
    waits: list[asyncio.Future[Grant]] = []
    for _ in range(80):
        roll = rng.random()
        if roll < 0.15 or not live:
            user = rng.choice(["alice", "bob", "carol"])
            s = await svc.open_session(ttl=rng.choice([2, 30]), owner=user.encode(), keepalive=False)
            owner_of[s.id] = user
            live.append(s)
        elif roll < 0.45:
            try:
                g = await svc.try_acquire(rng.choice(KEYS), rng.choice(live))
            except CoordcoreError:
                continue  # HELD, or the session expired: refused, and so in no history
            if g is not None:
                grants.append(g)
        elif roll < 0.6:
            waits.append(asyncio.ensure_future(svc.acquire(rng.choice(KEYS), rng.choice(live))))
            await asyncio.sleep(0)
        elif roll < 0.8 and grants:
            try:
                await svc.release(grants.pop(rng.randrange(len(grants))))
            except CoordcoreError:
                pass  # its session expired or closed meanwhile
        elif roll < 0.9:
            s = live.pop(rng.randrange(len(live)))
            try:
                await svc.close_session(s)
            except CoordcoreError:
                pass
        else:
            clock.advance(rng.choice([0.5, 1.5, 3]))
            await svc.tick()
        for w in [w for w in waits if w.done()]:
            waits.remove(w)
            if not w.exception():
                grants.append(w.result())
    for w in waits:
        w.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
    await svc.close()
    return owner_of


@pytest.mark.parametrize("every", [0, 1, 5, 16])
def test_history_matches_the_reference_model(tmp_path: Path, run: Callable[..., Any], rng: random.Random,
                                             every: int) -> None:
    """Also through a history index kept across the queries (as the server keeps one),
    with a stop every ``every`` records (0: none, every query replays from the start)."""
    index = HistoryIndex(every) if every else None
    clock = ManualClock()
    owner_of = run(drive(tmp_path, rng, clock))
    model = LockModel()
    expected: list[tuple[Any, ...]] = []
    records = 0
    for entry in JournalReader(tmp_path / "audit" / JOURNAL).entries():
        records += 1
        _, events = model.apply(entry.record)
        for rev, kind, mode, sid, ticket, token, key, _v in events:
            expected.append((entry.index, model.time, rev, KINDS[kind], sid, owner_of.get(sid, ""), key, token))
    times = sorted({e[1] for e in expected})
    lo, hi = times[len(times) // 4], times[3 * len(times) // 4]
    for prefix, start, end in [(b"", 0, 2**62), (b"billing/", 0, 2**62), (b"jobs/", lo, hi), (b"billing/1", lo, 2**62)]:
        got: list[tuple[Any, ...]] = []
        after = 0
        while True:  # small pages: the cursor must neither skip nor repeat
            page, after = query(tmp_path / "audit", prefix, start, end, after=after, limit=7, index=index)
            got += [(e.index, e.time_ms, e.revision, e.event, e.session, e.user, e.key, e.token) for e in page]
            if not after:
                break
        want = [e for e in expected if start <= e[1] <= end and (not prefix or (e[6] and e[6].startswith(prefix)))]
        assert got == want
        assert want or prefix, "the whole history is empty: the test drove nothing"  # a window may be
    assert {e[5] for e in expected if e[3] == "opened"} <= {"alice", "bob", "carol"}
    if index is not None:
        assert len(index) >= min(256, (records - 1) // every), "the queries kept fewer stops than the records passed"
