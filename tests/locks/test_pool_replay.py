"""Old pool logs replay to the same state. data/pool_history.bin is a random pool history
of 600 batches (bench/pool_replay.py, seed 7: eight tenants with weights from 1 to
999,983, minimums, maximums, bands, reconfigurations, timeouts and give-backs) with the
digest of each batch's results, events and snapshot, written by the build before the
water-filling moved to C integers. The grant decisions are part of the log's meaning,
so this build must reproduce every digest."""
from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

from coordcore._native.lockmachine import crc32c
from coordcore.locks import LockMachine
from coordcore.locks.machine import EventKind, decode_events

ROOT = Path(__file__).resolve().parents[2]
HISTORY = Path(__file__).parent / "data" / "pool_history.bin"


def load() -> tuple[list[bytes], list[int]]:
    """The fixture, read by the script that wrote it (bench/pool_replay.py)."""
    spec = importlib.util.spec_from_file_location("pool_replay", ROOT / "bench" / "pool_replay.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    records, digests = script.load(HISTORY)
    return records, digests


def test_the_recorded_pool_history_replays_batch_for_batch() -> None:
    records, want = load()
    m = LockMachine()
    kinds: Counter[int] = Counter()
    for i, record in enumerate(records):
        results, events = m.apply_raw(record)
        assert crc32c(m.snapshot(), crc32c(events, crc32c(results))) == want[i], f"batch {i} differs"
        kinds.update(e.kind for e in decode_events(events))
    m.check_invariants()
    # Not a quiet history: contention, fair-share grants, preemption and timeouts all happen.
    assert kinds[EventKind.WAIT] > 1000 and kinds[EventKind.GRANT] > 500, kinds
    assert kinds[EventKind.GIVEBACK] > 50 and kinds[EventKind.REVOKE] > 50 and kinds[EventKind.CANCEL] > 100, kinds

