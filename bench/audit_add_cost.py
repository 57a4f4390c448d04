#!/usr/bin/env python
"""What one audited record costs at full speed, in parts: `python bench/audit_add_cost.py [BYTES]`.

bench/callgrind_audit.py counts a server's instructions under valgrind, which hides
SHA-NI from OpenSSL (CPUID leaf 7 EBX bit 29 reads 0 there) and counts no kernel work.
This times, natively and per record of BYTES (default 1,400: a batch of ~35 commands),
``AuditTrail.add`` (CRC, ``writev`` to the journal without fsync, leaf hash, tree
append); ``await store.append(record)`` through an ``AuditedStore`` over a store whose
appends are done at once, less the same without it (an upper bound of the audit's cost
per record on the loop: with a done inner future its callback and the await each take a
loop pass, which a real append, finished from the writer thread, partly pays anyway); an ``os.writev`` of the same bytes alone (and its user vs system CPU), and
SHA-256 of them as OpenSSL picks it and with SHA-NI masked off (``OPENSSL_ia32cap``, in
a child process). Best of 5 repeats, so a loaded machine inflates it least.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

N = 5000


def best(fn: object) -> float:
    return min(timeit.repeat(fn, number=N, repeat=5)) / N  # type: ignore[arg-type]


def sha_only(size: int) -> float:
    rec = os.urandom(size)
    return best(lambda: hashlib.sha256(b"\x00" + rec).digest())


class _DoneStore:
    """A lock log whose appends are done at once (to time what the audit adds around one)."""

    max_record_bytes = 1 << 20
    syncs = False
    max_in_flight = 1

    def __init__(self) -> None:
        self.next_index = 1

    def append(self, record: bytes) -> asyncio.Future[int]:
        f: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        f.set_result(self.next_index)
        self.next_index += 1
        return f


def appends(rec: bytes, d: Path) -> tuple[float, float]:
    """Seconds per ``await store.append(rec)``: the bare store, then an AuditedStore on it."""
    from coordcore.audit.trail import AuditedStore, AuditTrail

    async def run(audited: bool) -> float:
        inner = _DoneStore()
        store: object = inner
        if audited:
            trail = AuditTrail.load(d / "glue", key=None, fsync=False)
            trail.start(1, None)
            store = AuditedStore(inner, trail)  # type: ignore[arg-type]
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(N):
                await store.append(rec)  # type: ignore[attr-defined]
            times.append((time.perf_counter() - t0) / N)
        if audited:
            trail.close()
        return min(times)

    new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop  # the server's loop

        new_loop = uvloop.new_event_loop
    except ImportError:
        pass
    out = []
    for audited in (False, True):
        loop = new_loop()
        try:
            out.append(loop.run_until_complete(run(audited)))
        finally:
            loop.close()
    return out[0], out[1]


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--sha":
        print(sha_only(int(sys.argv[2])))
        return
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 1400
    from coordcore.audit.trail import AuditTrail

    rec = os.urandom(size)
    with tempfile.TemporaryDirectory() as d:
        trail = AuditTrail.load(Path(d), key=None, fsync=False)
        trail.start(1, None)
        i = [0]

        def add() -> None:
            i[0] += 1
            trail.add(i[0], rec, ())

        t_add = best(add)
        fd = os.open(os.path.join(d, "w"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        parts = [b"h" * 16, b"n" * 4, rec]
        t_writev = best(lambda: os.writev(fd, parts))
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(10 * N):
            os.writev(fd, parts)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        os.close(fd)
        trail.close()
        bare, audited = appends(rec, Path(d))
    masked = float(subprocess.run([sys.executable, __file__, "--sha", str(size)], capture_output=True, text=True,
                                  check=True, env=dict(os.environ, OPENSSL_ia32cap=":~0x20000000")).stdout)
    print(f"record of {size:,} bytes, best of 5 x {N:,}:")
    print(f"  AuditTrail.add                      {t_add * 1e6:6.2f} us")
    print(f"  await append(), audited - bare      {(audited - bare) * 1e6:6.2f} us (AuditTrail.add, AuditedStore's "
          f"future and callback, and the loop passes they take: an upper bound)")
    print(f"  os.writev of it alone               {t_writev * 1e6:6.2f} us (user {(r1.ru_utime - r0.ru_utime) / N / 10 * 1e6:.2f}, "
          f"system {(r1.ru_stime - r0.ru_stime) / N / 10 * 1e6:.2f} us CPU)")
    print(f"  SHA-256, OpenSSL's choice           {sha_only(size) * 1e6:6.2f} us")
    print(f"  SHA-256, SHA-NI masked off          {masked * 1e6:6.2f} us")


if __name__ == "__main__":
    main()
