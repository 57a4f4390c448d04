"""Two ``coordcore serve`` processes of this checkout under callgrind at once, loaded at once
by the C load generator: the machinery of ``ab_metrics.py --callgrind`` and
``callgrind_audit.py``.

Why a pair at once: a server also spends instructions per wall-clock second (timers,
idle wake-ups), so its count per cycle rises when it gets less CPU; two servers run side
by side share the machine's state, and their ratio is what is compared. A window is
measured by zeroing both counters (``callgrind_control --zero``) after a warm-up load,
loading both for the window, and dumping both (``--dump``); the instructions of the dump
divided by the cycles the generator completed (warm-up and wind-down of the window
included) is the figure. Every thread of the process is counted (the log's writer, the
audit's signing thread).
"""
from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
TREE = HERE.parent
sys.path.insert(0, str(HERE))

import _loadgen  # noqa: E402

VALGRIND = ("valgrind", "--tool=callgrind", "--collect-atstart=yes")


def start_server(data: Path, args: Sequence[str] = (), wrap: Sequence[str] = (),
                 timeout: float = 60) -> tuple[subprocess.Popen[bytes], int]:
    """A server of this checkout (``-m coordcore.server`` with PYTHONPATH and cwd at the
    tree) on a free port, with ``args`` added; ``wrap`` runs it under another program."""
    argv = [*wrap, sys.executable, "-m", "coordcore.server", "--port", "0", "--data-dir", str(data),
            "--worker-id", "1", "--announce-port", "--log-level", "warning", *args]
    env = dict(os.environ, PYTHONPATH=str(TREE))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=TREE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if not line.startswith(b"PORT "):
        proc.kill()
        proc.wait()
        raise SystemExit(f"the server did not start within {timeout:.0f} s: {line!r}")
    return proc, int(line.split()[1])


def start_under_callgrind(tmp: Path, name: str, args: Sequence[str] = ()) -> tuple[subprocess.Popen[bytes], int]:
    """A server under callgrind whose dumps are ``tmp/cg-NAME.PID*``; data in ``tmp/data-NAME``."""
    return start_server(tmp / f"data-{name}", args, [*VALGRIND, f"--callgrind-out-file={tmp}/cg-{name}.%p"],
                        timeout=600)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def zero(pid: int) -> None:
    subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)


def dump(pid: int, label: str) -> None:
    subprocess.run(["callgrind_control", f"--dump={label}", str(pid)], check=True, capture_output=True)


def load_at_once(ports: dict[str, int], *, clients: int, keys: int, seconds: float,
                 drain: float = 120.0) -> dict[str, _loadgen.LoadStats]:
    """One load generator per server, all started together (no warm-up of their own)."""
    got: dict[str, _loadgen.LoadStats] = {}
    threads = [threading.Thread(target=lambda n=n: got.__setitem__(n, _loadgen.run(
        ports[n], "coordcore", clients=clients, keys=keys, seconds=seconds, warmup=0.0, drain=drain)))
        for n in ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(got) != len(ports):
        raise SystemExit("a load generator failed (see above)")
    return got


def callgrind_total(path: Path) -> int:
    m = re.search(rb"^summary: (\d+)", path.read_bytes(), re.M)
    if m is None:
        raise SystemExit(f"no summary line in {path}")
    return int(m.group(1))


def self_cost_by_function(path: Path) -> dict[str, int]:
    """Instructions spent in each function itself (callees excluded), from a callgrind
    dump: cost lines belong to the current ``fn=``; the line after ``calls=`` is the
    callee's inclusive cost and is skipped. A function without a symbol (an address, in
    a stripped library) is named with its object file's name, ``0x... [libcrypto.so.3]``."""
    names: dict[str, str] = {}
    objects: dict[str, str] = {}
    cost: dict[str, int] = defaultdict(int)
    fn = "?"
    ob = cob = ""
    skip_next = False

    def named(name: str, obj: str) -> str:
        return f"{name} [{obj.rsplit('/', 1)[-1]}]" if name.startswith("0x") and obj else name

    for raw in path.read_text(errors="replace").splitlines():
        if not raw:
            continue
        c = raw[0]
        if c.isdigit() or c in "+-*":
            if skip_next:
                skip_next = False
                continue
            parts = raw.split()
            if len(parts) >= 2:
                cost[fn] += int(parts[-1])
        elif raw.startswith(("ob=", "cob=")):
            m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", raw)
            obj = raw.split("=", 1)[1]
            if m:
                if m.group(2) is not None:
                    objects[m.group(1)] = m.group(2)
                obj = objects.get(m.group(1), m.group(1))
            if raw[0] == "o":
                ob = obj
            else:
                cob = obj
        elif raw.startswith("fn="):
            m = re.match(r"fn=\((\d+)\)(?: (.*))?", raw)
            if m:
                if m.group(2) is not None:
                    names[m.group(1)] = named(m.group(2), ob)
                fn = names.get(m.group(1), m.group(1))
            else:
                fn = named(raw[3:], ob)
        elif raw.startswith("cfn="):  # callee names share fn='s compression table
            m = re.match(r"cfn=\((\d+)\) (.*)", raw)
            if m:
                names[m.group(1)] = named(m.group(2), cob or ob)
        elif raw.startswith("calls="):
            skip_next = True
            cob = ""
    return dict(cost)


def wait_dumps(tmp: Path, before: set[Path], n: int) -> list[Path]:
    """The ``n`` callgrind dumps written since ``before`` (a listing of ``tmp``)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        new = [p for p in set(tmp.glob("cg-*")) - before if p.stat().st_size > 0]
        if len(new) >= n:
            time.sleep(1.0)  # let the dumps finish writing
            return new
        time.sleep(0.2)
    raise SystemExit(f"callgrind wrote {n} dump(s) within 120 s: no")


def dump_all(tmp: Path, procs: dict[str, tuple[subprocess.Popen[bytes], int]], label: str) -> dict[str, Path]:
    """Dump every server's counters (``label``): name -> its dump file."""
    before = set(tmp.glob("cg-*"))
    for name, (proc, _) in procs.items():
        dump(proc.pid, f"{label}-{name}")
    dumps = wait_dumps(tmp, before, len(procs))
    return {name: next(p for p in dumps if p.name.startswith(f"cg-{name}.")) for name in procs}


def mean_per_cycle(runs: Iterable[dict[str, object]]) -> dict[str, float]:
    """Each function's self instructions per cycle, the mean over ``runs`` (each with
    ``functions`` and ``cycles``)."""
    rs = list(runs)
    acc: dict[str, float] = defaultdict(float)
    for r in rs:
        for fn, c in r["functions"].items():  # type: ignore[attr-defined]
            acc[fn] += c / r["cycles"] / len(rs)
    return acc


def differences(on: dict[str, float], off: dict[str, float]) -> list[tuple[float, str]]:
    """(on - off, function), the largest difference first."""
    return sorted(((on.get(fn, 0.0) - off.get(fn, 0.0), fn) for fn in set(on) | set(off)), key=lambda t: -abs(t[0]))


def trim_functions(runs: Iterable[dict[str, object]], keys: Sequence[str] = ("functions",), top: int = 200) -> None:
    """Keep only each run's ``top`` functions (for the JSON written out)."""
    for r in runs:
        for k in keys:
            if k in r:
                r[k] = dict(sorted(r[k].items(), key=lambda kv: -kv[1])[:top])  # type: ignore[attr-defined]
