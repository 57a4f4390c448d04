"""Native lock state machine apply rate, in process, beside the pure-Python reference
model (tests/models/lock_model.py) measured in the same run.

Every case applies pre-built batch records (what the durable log replays), so the
figures are the machine's own cost: parsing the record, the state change, the packed
results and events. "decoded" rows add turning those into Result/Event tuples, which
is what LockService pays per batch.

    ./dev bench lockmachine
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from _report import Report, measure

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordcore.locks import BatchBuilder, LockMachine, tick  # noqa: E402
from tests.models.lock_model import LockModel  # noqa: E402

MODEL = "reference model (pure Python)"
N = 1000  # sessions / keys per batch
CMD_BYTES = 32 + 8  # command header + an 8-byte key ("key/0000")


class Target:
    """One machine (native or model) with a uniform apply."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.m: LockMachine | LockModel = LockMachine() if kind != "model" else LockModel()

    def apply(self, record: bytes | bytearray) -> object:
        if self.kind == "raw":
            assert isinstance(self.m, LockMachine)
            return self.m.apply_raw(record)
        return self.m.apply(record)


def sessions(t: Target, n: int, ttl: int = 3_600_000) -> None:
    b = BatchBuilder()
    for _ in range(n):
        b.open_session(ttl)
    t.apply(b.build(1))


def acquire_release(keys: int, with_request_ids: bool) -> tuple[bytearray, bytearray, Callable[[], None]]:
    """One batch of N acquires (session i on key i % keys) and one of N releases.

    With request ids, the ids are bumped in place before each round (a strided numpy view
    over the records), so every command is new and goes through the retry table."""
    acq, rel = BatchBuilder(), BatchBuilder()
    for i in range(N):
        key = b"key/%04d" % (i % keys)
        acq.acquire(i + 1, key, request_id=2 * i + 1 if with_request_ids else 0)
        rel.release(i + 1, key, request_id=2 * i + 2 if with_request_ids else 0)
    a, r = bytearray(acq.build(2)), bytearray(rel.build(2))

    def bump() -> None:
        for rec in (a, r):
            ids = np.ndarray((N,), dtype="<u8", buffer=rec, offset=20 + 16, strides=(CMD_BYTES,))
            ids += 2 * N

    return a, r, bump


def case_uncontended(kind: str, with_request_ids: bool) -> dict[str, float]:
    t = Target(kind)
    sessions(t, N)
    a, r, bump = acquire_release(N, with_request_ids)

    def run() -> int:
        if with_request_ids:
            bump()
        t.apply(a)
        t.apply(r)
        return 2 * N

    return measure(run, min_seconds=0.5 if kind != "model" else 1.0, repeat=5 if kind != "model" else 3)


def case_contended(kind: str) -> dict[str, float]:
    """32 sessions queue on one key; each release hands the lock to the next (FIFO)."""
    t = Target(kind)
    sessions(t, 32)
    b = BatchBuilder()
    for i in range(32):
        b.acquire(i + 1, "hot")
    for i in range(32):
        b.release(i + 1, "hot")
    record = b.build(2)

    def run() -> int:
        t.apply(record)
        return 64

    return measure(run, min_seconds=0.5 if kind != "model" else 1.0, repeat=5 if kind != "model" else 3)


def case_shared(kind: str) -> dict[str, float]:
    """Readers and writers interleaved on 10 keys (grants to reader groups)."""
    t = Target(kind)
    sessions(t, N)
    acq, rel = BatchBuilder(), BatchBuilder()
    for i in range(N):
        acq.acquire(i + 1, b"rw/%d" % (i % 10), shared=i % 8 != 0)
    for i in range(N):
        rel.release(i + 1, b"rw/%d" % (i % 10))
    a, r = acq.build(2), rel.build(2)

    def run() -> int:
        t.apply(a)
        t.apply(r)
        return 2 * N

    return measure(run, min_seconds=0.5 if kind != "model" else 1.0, repeat=5 if kind != "model" else 3)


def case_expiry(kind: str) -> dict[str, float]:
    """Open N sessions (TTL 1 ms) that each take a lock; the next tick expires them all
    (each expiry: EXPIRE event, RELEASE, and the key dropped)."""
    t = Target(kind)
    clock = [10]
    b = BatchBuilder()
    for _ in range(N):
        b.open_session(1)
    opened = bytearray(b.build(0))
    b.clear()
    for i in range(N):
        b.acquire(i + 1, b"exp/%04d" % i)
    acq = bytearray(b.build(0))
    sids = np.ndarray((N,), dtype="<u8", buffer=acq, offset=20 + 8, strides=(CMD_BYTES,))
    sids -= N

    def run() -> int:
        clock[0] += 10
        opened[8:16] = acq[8:16] = clock[0].to_bytes(8, "little")
        sids[:] += N
        t.apply(opened)
        t.apply(acq)
        t.apply(tick(clock[0] + 5))
        return N

    return measure(run, min_seconds=0.5 if kind != "model" else 1.0, repeat=3)


def case_snapshot(kind: str) -> dict[str, float]:
    t = Target(kind)
    sessions(t, N)
    b = BatchBuilder()
    for i in range(100 * N):
        b.acquire(i % N + 1, b"snap/%06d" % i, wait=False)
    t.apply(b.build(2))

    def run() -> int:
        t.m.snapshot()
        return 100 * N

    return measure(run, min_seconds=0.5, repeat=3)


def case_builder() -> dict[str, float]:
    b = BatchBuilder()
    keys = [b"key/%04d" % i for i in range(N)]

    def run() -> int:
        b.clear()
        for i, key in enumerate(keys):
            b.acquire(i + 1, key, request_id=i + 1)
        b.build(5)
        return N

    return measure(run, min_seconds=0.5, repeat=3)


def main() -> None:
    report = Report("lockmachine", peers={})
    print(f"  commands per second applied in-process; peer: {MODEL}, same run")
    rows: list[tuple[str, Callable[[str], dict[str, float]]]] = [
        ("acquire+release, 1000 keys, no request ids", lambda k: case_uncontended(k, False)),
        ("acquire+release, 1000 keys, request ids", lambda k: case_uncontended(k, True)),
        ("32 waiters on 1 key, FIFO handoff", case_contended),
        ("shared/exclusive mix on 10 keys", case_shared),
    ]
    for name, fn in rows:
        model = fn("model")["ops_per_s"]
        for kind in ("raw", "decoded"):
            ours = fn(kind)
            report.row(f"{name} ({kind})", "cmds/s", ours["ops_per_s"], MODEL, model,
                       cpu_ns_per_op=ours["cpu_ns_per_op"])
    model = case_expiry("model")["ops_per_s"]
    ours = case_expiry("raw")
    report.row("open+acquire+expire, per session (raw)", "sessions/s", ours["ops_per_s"], MODEL, model)
    model = case_snapshot("model")["ops_per_s"]
    ours = case_snapshot("raw")
    report.row("snapshot() of 100k held keys", "keys/s", ours["ops_per_s"], MODEL, model)
    ours = case_builder()
    report.row("BatchBuilder.acquire (Python encoding)", "cmds/s", ours["ops_per_s"], None, None)
    report.finish()


if __name__ == "__main__":
    main()
