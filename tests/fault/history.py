"""Histories of a fault run: what each client process did, as JSON lines.

Each process appends to its own file (no cross-process locking, no interleaving), one
JSON object per line, flushed at once so a SIGKILLed process loses at most the line it
was writing. Stamps are ``time.monotonic()`` (CLOCK_MONOTONIC), which every process on
one machine shares, so stamps from different files compare.

A line is one of:

* ``{"type": "invoke", "op": n, "f": F, "t": T, ...}``: operation ``n`` of this process
  was about to be sent (stamped *before* sending);
* ``{"type": "ok"|"fail"|"info", "op": n, "t": T, ...}``: its outcome, stamped *after*
  the reply was read; ``fail`` is a definite "did not happen" (an error reply),
  ``info`` means unknown (the connection broke: it may or may not have happened);
* ``{"type": "event", "f": F, "t": T, ...}``: something the process noticed (``idle``).

``F`` is one of ``open`` (a session; its ``ok`` names ``session`` and ``ttl``),
``keepalive``, ``close``, ``acquire`` (``key``, ``session``; its ``ok`` has ``token``),
``release`` (``key``, ``session``, ``token``), ``write`` (``key``, ``token``: a write to
the shared fenced resource; ``ok`` accepted, ``fail`` refused).

:func:`load_ops` pairs invocations with outcomes into :class:`Op` records, the form the
checker reads (an invocation without an outcome becomes ``info`` with ``end=None``).
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Literal

__all__ = ["FenceAttempt", "Fault", "Op", "Outcome", "Recorder", "load_fence_log", "load_faults", "load_ops",
           "write_jsonl"]

Outcome = Literal["ok", "fail", "info"]


@dataclasses.dataclass(frozen=True)
class Op:
    """One operation of one process: invoked at ``start``, outcome known at ``end``."""

    process: str
    op: int
    f: str
    start: float
    end: float | None
    outcome: Outcome
    key: str | None = None
    session: int | None = None
    token: int | None = None
    ttl: float | None = None
    #: The error code word for fail/info (``NOSESSION``, ``TIMEOUT``, ``CONNLOST``...).
    error: str | None = None

    def brief(self) -> dict[str, Any]:
        """The op as a small dict, for violation reports."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class FenceAttempt:
    """One write attempt as the fenced resource applied it (in apply order)."""

    seq: int
    t: float
    key: str
    token: int
    accepted: bool
    process: str
    #: The newest token the resource had seen for the key before this attempt.
    newest_before: int | None = None


@dataclasses.dataclass(frozen=True)
class Fault:
    """A fault the nemesis injected. ``kill``: ``start`` = SIGKILL sent, ``stopped`` = the
    process was reaped (it can do nothing after this), ``restart`` = its successor was
    launched, ``ready`` = it listens again (``end``). ``pause``: ``start`` = SIGSTOP sent,
    ``end`` = SIGCONT sent."""

    kind: str
    target: str
    start: float
    end: float
    stopped: float | None = None
    restart: float | None = None


class Recorder:
    """Appends one process's history; thread safe (the keep-alive thread records too)."""

    def __init__(self, path: Path, process: str) -> None:
        self.process = process
        self._file: IO[str] = open(path, "a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()
        self._next = 0

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def invoke(self, f: str, **fields: Any) -> int:
        with self._lock:
            self._next += 1
            op = self._next
        self._write({"type": "invoke", "op": op, "f": f, "t": time.monotonic(), **fields})
        return op

    def complete(self, op: int, outcome: Outcome, **fields: Any) -> None:
        self._write({"type": outcome, "op": op, "t": time.monotonic(), **fields})

    def event(self, f: str, **fields: Any) -> None:
        self._write({"type": "event", "f": f, "t": time.monotonic(), **fields})

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _lines(path: Path) -> Iterable[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by SIGKILL: only ever the last one


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")


def ops_from_records(process: str, records: Iterable[dict[str, Any]]) -> list[Op]:
    """Pair one process's invoke lines with their outcome lines."""
    invokes: dict[int, dict[str, Any]] = {}
    done: dict[int, dict[str, Any]] = {}
    for r in records:
        if r.get("type") == "invoke":
            invokes[int(r["op"])] = r
        elif r.get("type") in ("ok", "fail", "info"):
            done[int(r["op"])] = r
    ops = []
    for n, inv in sorted(invokes.items()):
        out = done.get(n, {})
        merged = {**inv, **{k: v for k, v in out.items() if k not in ("type", "t", "op")}}
        ops.append(Op(process=process, op=n, f=str(inv["f"]), start=float(inv["t"]),
                      end=float(out["t"]) if out else None, outcome=out.get("type", "info"),
                      key=merged.get("key"), session=_int(merged.get("session")), token=_int(merged.get("token")),
                      ttl=_float(merged.get("ttl")), error=merged.get("error")))
    return ops


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def load_ops(paths: Iterable[Path]) -> tuple[list[Op], list[dict[str, Any]]]:
    """Every op of every history file (``<process>.jsonl``), and their events."""
    ops: list[Op] = []
    events: list[dict[str, Any]] = []
    for path in sorted(paths):
        records = list(_lines(path))
        process = path.stem
        ops += ops_from_records(process, records)
        events += [{**r, "process": process} for r in records if r.get("type") == "event"]
    return ops, events


def load_fence_log(path: Path) -> list[FenceAttempt]:
    return [FenceAttempt(seq=int(r["seq"]), t=float(r["t"]), key=str(r["key"]), token=int(r["token"]),
                         accepted=bool(r["accepted"]), process=str(r["process"]),
                         newest_before=_int(r.get("newest_before")))
            for r in _lines(path)]


def load_faults(path: Path) -> list[Fault]:
    return [Fault(kind=str(r["kind"]), target=str(r["target"]), start=float(r["start"]), end=float(r["end"]),
                  stopped=_float(r.get("stopped")), restart=_float(r.get("restart")))
            for r in _lines(path)]
