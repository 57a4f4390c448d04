"""Quota pools: do two native builds make the same grant decisions? A long random pool
history (several tenants with mixed weights, minimums, maximums and bands; acquires,
releases, resizes, reconfigurations, session ends, timeouts and give-backs) is recorded
with one build, then replayed through another, which must give the same results, events
and snapshot bytes after every batch. The decisions are part of the log's meaning: a
build that grants another request changes the state hash and breaks old logs.

    # with build A on the path: write the history and A's digests
    PYTHONPATH=. .venv/bin/python bench/pool_replay.py write /tmp/h.bin --seed 1 --batches 3000
    # with build B on the path: replay, compare digest by digest
    PYTHONPATH=. .venv/bin/python bench/pool_replay.py check /tmp/h.bin

tests/locks/test_pool_replay.py replays a small committed history the same way.
"""
from __future__ import annotations

import argparse
import random
import struct
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordcore._native.lockmachine import crc32c  # noqa: E402
from coordcore.locks import BatchBuilder, Command, LockMachine, Op  # noqa: E402
from coordcore.locks.machine import EventKind, Status  # noqa: E402

POOL_CONF = struct.Struct("<II")
TENANT_CONF = struct.Struct("<IIIB3x")
POOLS = [b"gpu", b"lic"]
NAMES = [b"t%d" % i for i in range(8)]
WEIGHTS = [1, 1, 2, 3, 5, 7, 1000, 999_983]


def digest(m: LockMachine, results: bytes, events: bytes) -> int:
    return crc32c(m.snapshot(), crc32c(events, crc32c(results)))


def generate(seed: int, batches: int) -> list[bytes]:
    """Records, built by watching one machine (so releases name real tokens)."""
    rng = random.Random(seed)
    m, b = LockMachine(), BatchBuilder()
    sessions: list[int] = []
    tokens: list[tuple[int, bytes, int]] = []  # (session, pool, token or ticket)
    records, t = [], 1
    for _ in range(batches):
        b.clear()
        cmds: list[Command] = []
        if len(sessions) < 4 or rng.random() < 0.05:
            cmds.append(Command(Op.OPEN, 0, 0, 0, rng.choice([300, 10**7, 10**7]), b"", b""))
        for _ in range(rng.randint(1, 12)):
            pool, r = rng.choice(POOLS), rng.random()
            live = sessions[-12:] or [1]
            if r < 0.04:
                cmds.append(Command(Op.POOL_SET, 0, 0, 0, rng.choice([4, 10, 20, 40]), pool,
                              POOL_CONF.pack(rng.choice([0, 50]), rng.choice([1, 3, 20, 65535]))))
            elif r < 0.10:
                mx = rng.choice([1, 3, 10, 50, 1000, 1_000_000])
                cmds.append(Command(Op.TENANT_SET, 0, 0, 0, 0, pool,
                              TENANT_CONF.pack(rng.choice(WEIGHTS), min(mx, rng.choice([0, 0, 0, 1, 2, 5])), mx,
                                               rng.choice([0, 0, 0, 1, 3])) + rng.choice(NAMES)))
            elif r < 0.60:
                units = rng.choice([1, 1, 1, 1, 2, 3, 7])
                timeout = rng.choice([0, 0, 0, 40, 300])
                cmds.append(Command(Op.CAP_ACQUIRE, 2, rng.choice(live), 0, timeout << 32 | units, pool,
                              rng.choice(NAMES[:6])))
            elif r < 0.93 and tokens:
                s, p, tok = tokens.pop(rng.randrange(len(tokens)) if rng.random() < 0.3 else 0)
                cmds.append(Command(Op.CAP_RELEASE, 0, s, 0, tok, p, b""))
            elif r < 0.96 and tokens:
                s, p, tok = rng.choice(tokens)
                cmds.append(Command(Op.CAP_RESIZE, 0, s, 0, tok, p, struct.pack("<I", rng.choice([1, 2, 4]))))
            elif r < 0.965 and sessions:
                cmds.append(Command(Op.CLOSE, 0, rng.choice(live), 0, 0, b"", b""))
            else:
                cmds.append(Command(Op.KEEPALIVE, 0, rng.choice(live), 0, 0, b"", b""))
        for c in cmds:
            b.add(c)
        t += rng.choice([0, 1, 1, 5, 60])
        record = b.build(t)
        records.append(record)
        applied = m.apply(record)
        for e in applied.events:
            if e.kind == EventKind.OPEN:
                sessions.append(e.session)
            elif e.kind in (EventKind.CLOSE, EventKind.EXPIRE):
                sessions.remove(e.session)
            elif e.kind == EventKind.GRANT:
                tokens.append((e.session, e.key, e.token))
            elif e.kind in (EventKind.RELEASE, EventKind.REVOKE, EventKind.CANCEL):
                tokens = [x for x in tokens if x[2] not in (e.token, e.ticket)]
        for c, res in zip(cmds, applied.results):
            if c.op == Op.CAP_ACQUIRE and res.status == Status.WAITING:  # a release by ticket cancels it
                tokens.append((c.session, c.key, res.aux))
    return records


def replay(records: list[bytes]) -> list[int]:
    m = LockMachine()
    out = []
    for record in records:
        results, events = m.apply_raw(record)
        out.append(digest(m, results, events))
    m.check_invariants()
    return out


def dump(path: Path, records: list[bytes], digests: list[int]) -> None:
    body = b"".join(struct.pack("<I", len(r)) + r for r in records)
    path.write_bytes(struct.pack("<I", len(records)) + struct.pack(f"<{len(digests)}I", *digests)
                     + zlib.compress(body, 9))


def load(path: Path) -> tuple[list[bytes], list[int]]:
    data = path.read_bytes()
    (n,) = struct.unpack_from("<I", data)
    digests = list(struct.unpack_from(f"<{n}I", data, 4))
    body, pos, records = zlib.decompress(data[4 + 4 * n:]), 0, []
    for _ in range(n):
        (size,) = struct.unpack_from("<I", body, pos)
        records.append(body[pos + 4:pos + 4 + size])
        pos += 4 + size
    if pos != len(body):
        raise ValueError(f"{path}: {len(body) - pos} bytes after the last of its {n} records")
    return records, digests


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["write", "check"])
    ap.add_argument("path", type=Path)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batches", type=int, default=3000)
    a = ap.parse_args()
    if a.mode == "write":
        records = generate(a.seed, a.batches)
        digests = replay(records)
        dump(a.path, records, digests)
        print(f"wrote {len(records)} batches, {sum(map(len, records))} bytes of records")
        return
    records, want = load(a.path)
    got = replay(records)
    bad = [i for i, (x, y) in enumerate(zip(got, want)) if x != y]
    print(f"{len(records)} batches: {'identical' if not bad else f'first difference at batch {bad[0]}'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
