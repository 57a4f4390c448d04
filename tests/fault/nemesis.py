"""The nemesis: kills and restarts servers, pauses and resumes client processes.

It works on handles, not on coordcore: a :class:`Restartable` (anything that can be
SIGKILLed and started again on the same address and data: one ``coordcore serve`` today,
the members of a cluster later) and a :class:`Pausable` (any process id). Each fault is
recorded as a :class:`~history.Fault` with monotonic stamps, in memory and as JSON lines.

Two threads, one per fault kind, so a restart that takes a second never delays a
SIGCONT. Everything is bounded: each loop ends at its deadline or at :meth:`stop`, and
:meth:`stop` resumes every paused process and restarts any server left down.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Protocol

from tests.fault.history import Fault

__all__ = ["Nemesis", "NemesisConfig", "Pausable", "Restartable"]


class Restartable(Protocol):
    @property
    def name(self) -> str: ...

    def crash(self) -> None:
        """SIGKILL the process and reap it (returns once it can do nothing more)."""

    def restart(self) -> None:
        """Start it again on the same address and data; return once it serves."""


class Pausable(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def pid(self) -> int: ...


@dataclasses.dataclass
class NemesisConfig:
    #: Seconds between kills (uniform), and how long a killed server stays down.
    kill_gap: tuple[float, float] = (3.0, 7.0)
    down: tuple[float, float] = (0.0, 0.6)
    #: Seconds between pauses, and how long a paused process stays stopped (make the
    #: lower end exceed the clients' session TTL: the point is to outlive the lease).
    pause_gap: tuple[float, float] = (1.5, 4.0)
    pause: tuple[float, float] = (2.0, 3.5)
    max_paused: int = 2


class Nemesis:
    def __init__(self, servers: Sequence[Restartable], clients: Sequence[Pausable], config: NemesisConfig,
                 *, seed: int, log_path: Path | None = None) -> None:
        self.servers = list(servers)
        self.clients = list(clients)
        self.config = config
        self.faults: list[Fault] = []
        self.errors: list[str] = []
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        #: pid -> (handle, SIGSTOP sent at, SIGCONT due at)
        self._paused: dict[int, tuple[Pausable, float, float]] = {}
        self._down: set[int] = set()
        self._log: IO[str] | None = open(log_path, "w", buffering=1, encoding="utf-8") if log_path else None
        self._threads: list[threading.Thread] = []

    def _record(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)
            if self._log is not None:
                self._log.write(json.dumps(dataclasses.asdict(fault), separators=(",", ":")) + "\n")

    def start(self, duration: float) -> Nemesis:
        deadline = time.monotonic() + duration
        seeds = self._rng.randrange(2**32), self._rng.randrange(2**32)
        if self.servers:
            self._threads.append(threading.Thread(target=self._guard, args=(self._killer, deadline, seeds[0]),
                                                  name="nemesis-kill", daemon=True))
        if self.clients:
            self._threads.append(threading.Thread(target=self._guard, args=(self._pauser, deadline, seeds[1]),
                                                  name="nemesis-pause", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))

    def _guard(self, loop: Callable[[float, random.Random], None], deadline: float, seed: int) -> None:
        try:
            loop(deadline, random.Random(seed))
        except Exception as exc:  # reported by stop(); the run must not hang on it
            self.errors.append(f"{threading.current_thread().name}: {exc!r}")

    def _killer(self, deadline: float, rng: random.Random) -> None:
        c = self.config
        while not self._stop.wait(rng.uniform(*c.kill_gap)) and time.monotonic() < deadline:
            i = rng.randrange(len(self.servers))
            server = self.servers[i]
            t0 = time.monotonic()
            self._down.add(i)
            server.crash()
            stopped = time.monotonic()
            self._stop.wait(rng.uniform(*c.down))
            launched = time.monotonic()
            server.restart()
            self._down.discard(i)
            self._record(Fault("kill", server.name, t0, time.monotonic(), stopped=stopped, restart=launched))

    def _pauser(self, deadline: float, rng: random.Random) -> None:
        c = self.config
        next_pause = time.monotonic() + rng.uniform(*c.pause_gap)
        while not self._stop.wait(0.02):
            now = time.monotonic()
            for pid, (_, _, until) in list(self._paused.items()):
                if now >= until:
                    self._resume(pid)
            if now >= deadline:
                if not self._paused:
                    return
                continue
            running = [p for p in self.clients if p.pid not in self._paused]
            if now >= next_pause and running and len(self._paused) < c.max_paused:
                proc = rng.choice(running)
                with self._lock:
                    started = time.monotonic()
                    os.kill(proc.pid, signal.SIGSTOP)
                    self._paused[proc.pid] = (proc, started, started + rng.uniform(*c.pause))
                next_pause = now + rng.uniform(*c.pause_gap)

    def _resume(self, pid: int) -> None:
        with self._lock:
            entry = self._paused.pop(pid, None)
        if entry is None:
            return
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        self._record(Fault("pause", entry[0].name, entry[1], time.monotonic()))

    def stop(self, timeout: float = 30.0) -> None:
        """End both loops, resume every paused process, bring back a server left down."""
        self._stop.set()
        self.join(timeout)
        for pid in list(self._paused):
            self._resume(pid)
        for i in sorted(self._down):
            try:
                self.servers[i].restart()
            except Exception as exc:
                self.errors.append(f"restart after stop: {exc!r}")
            self._down.discard(i)
        if self._log is not None:
            with self._lock:
                self._log.close()
                self._log = None
