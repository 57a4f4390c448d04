#!/usr/bin/env python
"""Mutation testing of the native cores: does the test suite notice when they break?

Each mutant below is one small, realistic bug (an off-by-one, a flipped comparison, a
forgotten case) in the ID generator, the ring, the lock machine or the wire lane. For
each, this script writes the mutant into a copy of the tree (build/mutate/), rebuilds
the one extension it touches, and runs the tests that should catch it: a mutant is
*killed* when they fail, and *survives* when they pass (a hole in the tests, unless the
mutant happens to be equivalent to the original). It prints a table and exits non-zero
if any mutant survived.

    ./dev mutate                 every mutant
    ./dev mutate NAME ...        some (python bench/mutate.py --list names them)
    ./dev mutate -k NAME         keep going on the same copy (no fresh copy of the tree)

It takes a few minutes per mutant on two cores (a rebuild plus the targeted tests), so it
does not run in CI. A mutant whose text no longer occurs in its file is an error: edit the
list when the code moves.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "mutate"
NATIVE = "coordcore/_native/"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest arguments: the tests that should kill it
    why: str


MACHINE_TESTS = ("tests/locks/test_machine.py", "tests/locks/test_machine_state.py",
                 "tests/locks/test_machine_hardening.py", "tests/locks/test_machine_badinput.py")
RING_TESTS = ("tests/test_ring.py", "tests/test_ring_hash.py", "tests/test_ring_jump.py",
              "tests/test_ring_bounded.py", "tests/test_ring_hardening.py", "tests/test_ring_rendezvous.py")
WIRE_TESTS = ("tests/server/test_lockwire.py", "tests/server/test_hostile_frames.py")
ID_TESTS = ("tests/test_ids.py", "tests/test_ids_hardening.py")

MUTANTS = [
    Mutant("ids-backwards-one-tick", NATIVE + "snowflake.pyx",
           "if now < last_tick and self._policy != POLICY_LOGICAL:",
           "if now < last_tick - 1 and self._policy != POLICY_LOGICAL:", ID_TESTS,
           "the backwards check ignores a clock step back of exactly one tick (raise/wait)"),
    Mutant("ids-sequence-wraps", NATIVE + "snowflake.pyx",
           "if (start & self._seq_mask) == 0 and self._policy != POLICY_LOGICAL:",
           "if False and (start & self._seq_mask) == 0 and self._policy != POLICY_LOGICAL:", ID_TESTS,
           "sequence exhaustion runs into the next tick's IDs instead of waiting for it"),
    Mutant("wire-frame-complete-off-by-one", NATIVE + "lockwire.pyx",
           "            if avail - pos < n + 2:\n                return self._short(SCAN_INCOMPLETE, avail)",
           "            if avail - pos < n + 1:\n                return self._short(SCAN_INCOMPLETE, avail)",
           WIRE_TESTS,
           "the lane's frame-complete check reads one byte past the buffered data"),
    Mutant("wire-decimal-20-digits", NATIVE + "lockwire.pyx",
           "    if n < 1 or n > 19:\n        return False",
           "    if n < 1 or n > 20:\n        return False", WIRE_TESTS,
           "a 20-digit number overflows uint64 in the hot path's decimal parser"),
    Mutant("wire-release-reply-any-status", NATIVE + "lockwire.pyx",
           "            if p[1] == 0 and not owner.closed:  # OK",
           "            if p[1] <= 1 and not owner.closed:  # OK", WIRE_TESTS,
           "a WAITING (status 1) result is answered as a plain success"),
    Mutant("machine-grant-past-waiters", NATIVE + "lm_apply.pxi",
           "grant = ks.w_count == 0 and _can_hold(self, ks, mode)",
           "grant = _can_hold(self, ks, mode)", MACHINE_TESTS,
           "an acquire is granted at once although others wait (FIFO fairness broken)"),
    Mutant("machine-shared-joins-exclusive", NATIVE + "lm_rules.pxi",
           "return mode == M_SHARED and self.st.con[ks.h_head].mode == M_SHARED",
           "return mode == M_SHARED", MACHINE_TESTS,
           "a shared acquire is granted beside an exclusive holder"),
    Mutant("machine-semaphore-one-extra", NATIVE + "lm_rules.pxi",
           "return ks.h_count < ks.permits",
           "return ks.h_count <= ks.permits", MACHINE_TESTS,
           "a semaphore hands out one permit more than it has"),
    Mutant("machine-expiry-late", NATIVE + "lm_rules.pxi",
           "while self.st.heap_len and self.st.heap[0].deadline <= now:",
           "while self.st.heap_len and self.st.heap[0].deadline < now:", MACHINE_TESTS,
           "a session survives the batch at exactly its deadline"),
    Mutant("machine-retry-not-remembered", NATIVE + "lm_rules.pxi",
           "    if req > s.req_max or s.req_len == 0:\n        return NULL",
           "    if req >= s.req_max or s.req_len == 0:\n        return NULL", MACHINE_TESTS,
           "a retry of the newest request id is applied again instead of answered from the table"),
    Mutant("machine-heap-order", NATIVE + "lm_tables.pxi",
           "return a.deadline < b.deadline or (a.deadline == b.deadline and a.id < b.id)",
           "return a.deadline < b.deadline or (a.deadline == b.deadline and a.id > b.id)", MACHINE_TESTS,
           "sessions with one deadline expire in reverse id order (replays diverge from the contract)"),
    Mutant("machine-snapshot-crc-unchecked", NATIVE + "lm_snapshot.pxi",
           "if cc_ld32(p + n - 4) != cc_crc32c(0, p, n - 4):",
           "if False and cc_ld32(p + n - 4) != cc_crc32c(0, p, n - 4):", MACHINE_TESTS,
           "a damaged snapshot is restored"),
    Mutant("ring-wrap-past-last-point", NATIVE + "cc_ring.h",
           "return i == r->npoints ? 0 : i;",
           "return i >= r->npoints - 1 ? 0 : i;", RING_TESTS,
           "keys between the last two points go to point 0"),
    Mutant("ring-point-equal-goes-next", NATIVE + "cc_ring.h",
           "i += (Py_ssize_t)(p[0] < h) + (Py_ssize_t)(p[1] < h)",
           "i += (Py_ssize_t)(p[0] <= h) + (Py_ssize_t)(p[1] < h)", RING_TESTS,
           "a key hashing exactly onto a point is placed on the next one"),
    Mutant("hash-xxh64-tail", NATIVE + "cc_hash.h",
           "while (p + 8 <= end) {",
           "while (p + 8 < end) {", RING_TESTS,
           "xxHash64 takes a last whole 8-byte word by the 4-byte and 1-byte tails"),
    Mutant("jump-hash-scale", NATIVE + "cc_jump.h",
           "                int64_t nj = (int64_t)((double)(nb + 1) * ((double)(1LL << 31)",
           "                int64_t nj = (int64_t)((double)(nb + 2) * ((double)(1LL << 31)", RING_TESTS,
           "the vectorised jump hash steps from the wrong bucket"),
    Mutant("crc32c-hw-tail", NATIVE + "cc_crc32c.h",
           "for (; n; p++, n--) c32 = _mm_crc32_u8(c32, *p);",
           "for (; n > 1; p++, n--) c32 = _mm_crc32_u8(c32, *p);",
           ("tests/locks/test_machine.py", "tests/locks/test_log.py", "tests/test_native_memory.py"),
           "the hardware CRC-32C skips the last byte of a length not a multiple of 8"),
]


def _copy_tree() -> None:
    """A copy of the source tree, with the in-place build's generated C and modules so
    that only what a mutant touches is rebuilt."""
    if WORK.exists():
        shutil.rmtree(WORK)
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout.split(b"\0")
    built = [p.relative_to(ROOT) for pat in ("*.c", "*.so") for p in (ROOT / NATIVE).glob(pat)]
    for rel in [Path(os.fsdecode(x)) for x in listed if x] + built:
        if not (ROOT / rel).is_file():
            continue
        (WORK / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, WORK / rel)


def _build(log: Path) -> bool:
    with log.open("w") as out:
        rc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-j", "2"], cwd=WORK,
                            stdout=out, stderr=subprocess.STDOUT).returncode
    return rc == 0


def _run_tests(tests: tuple[str, ...], log: Path) -> bool:
    env = dict(os.environ, PYTHONPATH=str(WORK))
    with log.open("w") as out:
        rc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", *tests],
                            cwd=WORK, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    return rc == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("-k", "--keep", action="store_true", help="reuse build/mutate as it is")
    args = parser.parse_args()
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:34} {m.path:32} {m.why}")
        return 0
    by_name = {m.name: m for m in MUTANTS}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown mutant(s) {unknown}; --list names them")
    chosen = [by_name[n] for n in args.names] or MUTANTS
    for m in chosen:  # every mutant must apply before any time is spent
        count = (ROOT / m.path).read_text().count(m.old)
        if count != 1:
            parser.error(f"mutant {m.name}: its text occurs {count} times in {m.path} (edit the list)")
    if not (args.keep and WORK.exists()):
        _copy_tree()
    logs = WORK / "logs"
    logs.mkdir(exist_ok=True)
    if not _build(logs / "base-build.log") or not _run_tests(tuple(sorted({t for m in chosen for t in m.tests})),
                                                            logs / "base-tests.log"):
        print(f"the unmutated copy does not build or pass its tests: see {logs}", file=sys.stderr)
        return 2
    rows = []
    for m in chosen:
        target = WORK / m.path
        original = target.read_text()
        started = time.monotonic()
        try:
            target.write_text(original.replace(m.old, m.new))
            if not _build(logs / f"{m.name}-build.log"):
                verdict = "build failed"
            elif _run_tests(m.tests, logs / f"{m.name}-tests.log"):
                verdict = "SURVIVED"
            else:
                verdict = "killed"
        finally:
            target.write_text(original)  # a newer mtime: the next build puts the original back
        rows.append((m, verdict, time.monotonic() - started))
        print(f"{verdict:12} {m.name:34} {rows[-1][2]:6.0f} s  {m.why}", flush=True)
    _build(logs / "restore-build.log")
    killed = sum(v == "killed" for _, v, _ in rows)
    survived = [m.name for m, v, _ in rows if v == "SURVIVED"]
    print(f"\n{killed} of {len(rows)} mutants killed; survived: {', '.join(survived) or 'none'} (logs in {logs})")
    return 1 if survived or killed + len(survived) < len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
