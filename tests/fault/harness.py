"""One fault run, end to end: server, fence, clients, nemesis, prober, snapshots, checker.

Used by tests/fault/test_faults.py (a short run in the suite) and bench/soak_locks.py
(minutes). Everything is bounded: each wait has a deadline, and every child process is
killed in ``finally`` (SIGCONT first, so a paused one can die).

Phases: start -> contend under the nemesis (``duration``) -> nemesis stopped (everyone
resumed, the server up) -> quiesce (clients release and go idle with sessions open; after
a settling grace the lock state is snapshotted: anything held or waited for is an
orphan) -> clients close their sessions and exit -> the server is SIGKILLed and restarted
one last time, and after a grace the state is snapshotted again (it must be empty) ->
the checker reads the histories.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
from tests.server.ccserver import ServerProc
from tests.fault.checker import Report, Snapshot, check
from tests.fault.fence import FenceServer
from tests.fault.history import load_faults, load_fence_log, load_ops
from tests.fault.nemesis import Nemesis, NemesisConfig

import hiredis

from coordcore import Client
from coordcore.server import ServerConfig

__all__ = ["RunConfig", "RunResult", "lock_snapshot", "run", "wait_files"]


@dataclasses.dataclass
class RunConfig:
    duration: float = 40.0
    clients: int = 5
    keys: int = 3
    ttl: float = 1.5
    acquire_timeout: float = 3.0
    hold: tuple[float, float] = (0.03, 0.2)
    waiter_grace: float = 1.0
    seed: int = 0
    nemesis: NemesisConfig = dataclasses.field(default_factory=NemesisConfig)
    fence_broken: bool = False
    #: Print progress lines (the soak wants them; the suite prints the report only).
    verbose: bool = False


@dataclasses.dataclass
class RunResult:
    report: Report
    ping_p50: float | None
    ping_p99: float | None
    ping_max: float | None
    pings: int
    ping_failures: int
    wall: float
    workdir: Path
    harness_errors: list[str]

    def text(self) -> str:
        def ms(x: float | None) -> str:
            return "n/a" if x is None else f"{x * 1000:.1f} ms"
        lines = [f"fault run in {self.workdir} ({self.wall:.1f} s wall)", self.report.text(),
                 f"prober: {self.pings} PINGs answered, {self.ping_failures} failed (server down); "
                 f"p50 {ms(self.ping_p50)}, p99 {ms(self.ping_p99)}, max {ms(self.ping_max)}"]
        if self.harness_errors:
            lines.append("harness errors: " + "; ".join(self.harness_errors))
        return "\n".join(lines)


class _Server:
    """A :class:`ServerProc` as the nemesis sees it (same port and data dir on restart)."""

    def __init__(self, proc: ServerProc, name: str = "server") -> None:
        self.proc = proc
        self.name = name

    def crash(self) -> None:
        self.proc.stop(signal.SIGKILL)

    def restart(self) -> None:
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self.proc.start()
                return
            except RuntimeError:
                # The port can linger a moment after SIGKILL; retry, bounded.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@dataclasses.dataclass
class _Child:
    name: str
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid


class _Prober(threading.Thread):
    """PINGs every ~20 ms on its own connection; latencies of answered PINGs."""

    def __init__(self, port: int) -> None:
        super().__init__(name="prober", daemon=True)
        self.port = port
        self.latencies: list[float] = []
        self.failures = 0
        self._halt = threading.Event()

    def run(self) -> None:
        import socket
        sock: socket.socket | None = None
        reader = hiredis.Reader()
        while not self._halt.wait(0.02):
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=10.0)
                    reader = hiredis.Reader()
                t0 = time.monotonic()
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                while (reply := reader.gets()) is False:
                    data = sock.recv(4096)
                    if not data:
                        raise ConnectionError("closed")
                    reader.feed(data)
                self.latencies.append(time.monotonic() - t0)
            except OSError:
                self.failures += 1
                if sock is not None:
                    sock.close()
                    sock = None
        if sock is not None:
            sock.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(15)


def lock_snapshot(client: Client, keys: list[str]) -> Snapshot:
    """The holders and waiters of ``keys`` (those with any), as the checker reads them."""
    snap: dict[str, dict[str, list[list[int]]]] = {}
    for key in keys:
        info = client.lock_info(key)
        snap[key] = {"holders": [[h.session, h.token] for h in info.holders],
                     "waiters": [[w.session, w.ticket] for w in info.waiters]}
    return {k: v for k, v in snap.items() if v["holders"] or v["waiters"]}


def _snapshot(port: int, keys: list[str]) -> Snapshot:
    with Client(port=port, connect_timeout=5.0, retries=10, retry_delay=0.1) as c:
        return lock_snapshot(c, keys)


def wait_files(paths: list[Path], timeout: float) -> list[Path]:
    """Wait until every path exists; the ones still missing at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        missing = [p for p in paths if not p.exists()]
        if not missing:
            return []
        time.sleep(0.05)
    return [p for p in paths if not p.exists()]


def _percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def run(cfg: RunConfig, workdir: Path) -> RunResult:
    t_begin = time.monotonic()
    rng = random.Random(cfg.seed)
    workdir.mkdir(parents=True, exist_ok=True)
    hist_dir, control = workdir / "history", workdir / "control"
    hist_dir.mkdir(exist_ok=True)
    control.mkdir(exist_ok=True)
    keys = [f"fault/{i}" for i in range(cfg.keys)]
    errors: list[str] = []

    def say(msg: str) -> None:
        if cfg.verbose:
            print(f"[{time.monotonic() - t_begin:6.1f}s] {msg}", flush=True)

    extra = ["--log-level", "warning"]
    if "waiter_grace" in {f.name for f in dataclasses.fields(ServerConfig)}:
        extra += ["--waiter-grace", str(cfg.waiter_grace)]  # absent before issue 9, item 2
    server = _Server(ServerProc(workdir / "data", *extra))
    fence = FenceServer(workdir / "fence.jsonl", broken=cfg.fence_broken)
    children: list[_Child] = []
    nemesis: Nemesis | None = None
    prober: _Prober | None = None
    quiesced: Snapshot | None = None
    final: Snapshot | None = None
    try:
        fence.start()
        server.proc.start()
        port = server.proc.port
        say(f"server on 127.0.0.1:{port}, fence on 127.0.0.1:{fence.port}")
        prober = _Prober(port)
        prober.start()
        # The worker imports its siblings as tests.fault.*: this checkout goes after
        # whatever PYTHONPATH names, so the coordcore under test still comes first.
        paths = [p for p in (os.environ.get("PYTHONPATH"), str(HERE.parent.parent)) if p]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
        for i in range(cfg.clients):
            name = f"c{i}"
            wcfg: dict[str, Any] = {"process": name, "port": port, "fence_port": fence.port, "keys": keys,
                                    "ttl": cfg.ttl, "acquire_timeout": cfg.acquire_timeout, "hold": list(cfg.hold),
                                    "seed": rng.randrange(2**32), "history": str(hist_dir / f"{name}.jsonl"),
                                    "control": str(control)}
            out = open(workdir / f"{name}.log", "wb")
            popen = subprocess.Popen([sys.executable, str(HERE / "client_worker.py"), json.dumps(wcfg)],
                                     stdout=out, stderr=subprocess.STDOUT, env=env)
            out.close()
            children.append(_Child(name, popen))
        nemesis = Nemesis([server], children, cfg.nemesis, seed=rng.randrange(2**32),
                          log_path=workdir / "faults.jsonl")
        say(f"{cfg.clients} clients on {cfg.keys} keys, nemesis for {cfg.duration:.0f} s")
        nemesis.start(cfg.duration)
        nemesis.join(cfg.duration + 30.0)
        nemesis.stop()
        errors += nemesis.errors
        say(f"nemesis done: {len(nemesis.faults)} faults; quiescing")
        for c in children:
            if c.popen.poll() is not None:
                errors.append(f"client {c.name} exited early with {c.popen.returncode}")
        (control / "quiesce").touch()
        missing = wait_files([control / f"idle-{c.name}" for c in children if c.popen.poll() is None],
                              cfg.acquire_timeout + 3 * max(cfg.hold) + 20.0)
        if missing:
            errors.append(f"clients never went idle: {[p.name for p in missing]}")
        # Settle: detached waiters are withdrawn after the grace, stray grants are released
        # by their clients after a keep-alive round.
        time.sleep(cfg.waiter_grace + cfg.ttl + 0.5)
        quiesced = _snapshot(port, keys)
        say(f"quiesced snapshot: {quiesced or 'empty'}; closing clients")
        (control / "close").touch()
        for c in children:
            try:
                rc = c.popen.wait(20.0)
                if rc != 0:
                    errors.append(f"client {c.name} exited with {rc}")
            except subprocess.TimeoutExpired:
                errors.append(f"client {c.name} did not exit")
        server.crash()
        server.restart()
        time.sleep(cfg.waiter_grace + cfg.ttl + 1.0)
        final = _snapshot(port, keys)
        say(f"final snapshot after restart: {final or 'empty'}")
    finally:
        if nemesis is not None:
            nemesis.stop()
        for c in children:
            if c.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c.pid, signal.SIGCONT)
                    c.popen.kill()
                c.popen.wait(10)
        if prober is not None:
            prober.stop()
        server.proc.kill()
        fence.close()
    ops, _ = load_ops(hist_dir.glob("*.jsonl"))
    report = check(ops, load_fence_log(workdir / "fence.jsonl"), load_faults(workdir / "faults.jsonl"),
                   quiesced=quiesced, final=final)
    lat = prober.latencies if prober is not None else []
    return RunResult(report, _percentile(lat, 0.5), _percentile(lat, 0.99), max(lat) if lat else None, len(lat),
                     prober.failures if prober is not None else 0, time.monotonic() - t_begin, workdir, errors)
