"""128-bit IDs: coordcore's UUIDv7 and ULID generators beside uuid-utils, python-ulid and
CPython's uuid (uuid4, and uuid7 where this Python has it), all in this one process and run.

Single calls and batches, per ID. Peers have no batch call: their batch is a list built
by calling them n times, which is what a user would write. Budget: batches >= 2x the
fastest peer per ID.

Run: ./dev bench uuids   (or bench/run uuids)
"""
from __future__ import annotations

import uuid
from itertools import repeat
from typing import Any, Callable

import numpy as np
import ulid
import uuid_utils
import uuid_utils.compat

from _report import Report, measure
from coordcore.uuids import ID_DTYPE, ULIDGenerator, UUIDv7Generator

CALLS = 20_000
BATCH = 4096 * 16


def per_call(fn: Callable[[], Any]) -> dict[str, float]:
    def batch() -> int:
        for _ in repeat(None, CALLS):
            fn()
        return CALLS
    return measure(batch)


def per_id(fn: Callable[[], Any], n: int) -> dict[str, float]:
    def batch() -> int:
        fn()
        return n
    return measure(batch)


def main() -> None:
    report = Report("uuids", peers={"uuid7": "uuid-utils", "ulid": "python-ulid"})
    v7, ul = UUIDv7Generator(), ULIDGenerator()

    # -- peers, one call at a time (measured once, compared with each of ours) -----------
    peers: dict[str, Callable[[], Any]] = {
        "uuid_utils.uuid7()": uuid_utils.uuid7,
        "str(uuid_utils.uuid7())": lambda: str(uuid_utils.uuid7()),
        "uuid_utils.compat.uuid7()": uuid_utils.compat.uuid7,
        "python-ulid ULID()": ulid.ULID,
        "str(python-ulid ULID())": lambda: str(ulid.ULID()),
        "uuid.uuid4()": uuid.uuid4,
    }
    if hasattr(uuid, "uuid7"):
        peers["uuid.uuid7()"] = uuid.uuid7
    else:
        print("  this Python's uuid has no uuid7 (3.14+): compared with uuid4 only")
    peer_ns = {name: per_call(fn)["cpu_ns_per_op"] for name, fn in peers.items()}
    fastest = min(peer_ns, key=peer_ns.__getitem__)
    for name, ns in peer_ns.items():
        print(f"  {name}: {ns:.1f} ns CPU per call")

    # -- ours, one call at a time ---------------------------------------------------------
    singles = [
        ("UUIDv7 next_uuid() (uuid.UUID)", v7.next_uuid, "uuid_utils.compat.uuid7()"),
        ("UUIDv7 next_bytes()", v7.next_bytes, "uuid_utils.uuid7()"),
        ("UUIDv7 next_str()", v7.next_str, "str(uuid_utils.uuid7())"),
        ("ULID next_str()", ul.next_str, "str(python-ulid ULID())"),
        ("ULID next_bytes()", ul.next_bytes, "python-ulid ULID()"),
    ]
    for label, fn, peer in singles:
        report.row(f"{label}: CPU ns/ID vs {peer}", "ns", per_call(fn)["cpu_ns_per_op"], peer, peer_ns[peer],
                   higher_is_better=False)
    report.row(f"UUIDv7 next_bytes() vs the fastest peer ({fastest})", "ns",
               per_call(v7.next_bytes)["cpu_ns_per_op"], fastest, peer_ns[fastest], higher_is_better=False)

    # -- batches: ours into numpy and into strings, peers as list comprehensions ----------
    out = np.empty(BATCH, dtype=ID_DTYPE)
    peer_batch = {name: per_id(lambda fn=fn: [fn() for _ in repeat(None, BATCH)], BATCH)["cpu_ns_per_op"]
                  for name, fn in (("uuid_utils.uuid7()", uuid_utils.uuid7),
                                   ("str(uuid_utils.uuid7())", lambda: str(uuid_utils.uuid7())),
                                   ("python-ulid ULID()", ulid.ULID))}
    best = min(peer_batch, key=peer_batch.__getitem__)
    for label, fn in (("UUIDv7 next_array(out=) (V16)", lambda: v7.next_array(out=out)),
                      ("ULID next_array(out=) (V16)", lambda: ul.next_array(out=out)),
                      ("UUIDv7 next_array(n) (V16)", lambda: v7.next_array(BATCH))):
        report.row(f"batch {label}: ns/ID vs [{best} for ...] (budget 2x)", "ns",
                   per_id(fn, BATCH)["cpu_ns_per_op"], best, peer_batch[best], higher_is_better=False)
    for label, fn, peer in (("UUIDv7 next_strs(n)", lambda: v7.next_strs(BATCH), "str(uuid_utils.uuid7())"),
                            ("ULID next_strs(n)", lambda: ul.next_strs(BATCH), "python-ulid ULID()")):
        report.row(f"batch {label}: ns/ID vs [{peer} for ...]", "ns", per_id(fn, BATCH)["cpu_ns_per_op"],
                   peer, peer_batch[peer], higher_is_better=False)
    report.finish()


if __name__ == "__main__":
    main()
