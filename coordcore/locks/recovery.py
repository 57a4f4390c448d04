"""Fencing tokens across damage: the revision high-water mark, lost logs, repair.

Every fencing token is a revision of the lock machine, and the revision lives in the
log. A log that loses records (cut off by :func:`repair`, deleted, or restored from an
older copy) would replay to a lower revision and hand out the same tokens again. So the
log directory also holds ``revision.hwm``, written like the ID generator's state file
(temp file, fsync, rename, fsync the directory), which says:

``reserved``
    no revision above it has been revealed to anyone. The service writes a new mark
    (``revision + RESERVE``) right after applying the batch that passes it and before
    answering that batch's requesters, so one mark write covers a million revisions.
``revision``, ``index``
    the revision and log index when it was written; that batch was on disk, so an intact
    log always replays at least to ``index``. A log that ends before it lost records.
``raise``
    set by :func:`repair` when it dropped records: the next open raises the machine's
    revision to it (:meth:`~coordcore.locks.machine.LockMachine.raise_revision`) and
    writes a snapshot at once, so replay stays deterministic.

At open (:meth:`LockService.open <coordcore.locks.service.LockService.open>`):

* a log with neither segments nor snapshots but with a mark is a **lost log**: refused
  unless ``allow_empty_log=True`` (``coordcore serve --allow-empty-lock-log``), which
  starts empty with the revision raised to the mark's ``reserved``. A server also
  refuses when it finds ID state in its data directory (:func:`lost_log_evidence`);
  a brand new directory starts normally;
* a pending ``raise`` is applied (and snapshotted);
* a log that ends before the mark's ``index`` refuses (:class:`LogBehindMark`) until
  :func:`repair` accepts the loss;
* a log without a mark (written before marks existed) opens, and gets one.
"""
from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from coordcore._native.lockmachine import crc32c
from coordcore.errors import LogCorrupted
from coordcore.locks import log as _log

__all__ = [
    "MARK_NAME",
    "RESERVE",
    "LockLogMissing",
    "LogBehindMark",
    "MarkState",
    "RepairResult",
    "RevisionMark",
    "has_log_files",
    "lost_log_evidence",
    "missing_log_error",
    "repair",
]

logger = logging.getLogger("coordcore.locks.recovery")

MARK_NAME: Final = "revision.hwm"
#: How far ahead a mark reserves revisions: one mark write (an fsync) per this many.
RESERVE: Final = 1 << 20

_MAGIC: Final = "coordcore-revision-mark 1"
_FIELDS: Final = ("reserved", "revision", "index", "raise")
_LINE = re.compile(r"^([a-z]+) (\d{1,20})$")


class LockLogMissing(LogCorrupted):
    """The lock log is gone (no segments, no snapshots) from a directory that shows it
    existed: refused unless an empty start is asked for."""


class LogBehindMark(LogCorrupted):
    """The log ends before a batch that the revision mark says was on disk."""


@dataclass(frozen=True, slots=True)
class MarkState:
    """The contents of ``revision.hwm`` (see the module docs)."""

    reserved: int
    revision: int
    index: int
    raise_to: int = 0


def has_log_files(directory: Path) -> bool:
    """Whether ``directory`` holds any log segment or snapshot."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return False
    return any(n.startswith(("segment-", "snapshot-")) and n.endswith((".log", ".snap")) for n in names)


def lost_log_evidence(log_dir: Path, data_dir: Path | None = None) -> list[str]:
    """If the lock log in ``log_dir`` has no segments or snapshots: what shows that it
    existed (a revision mark; ID state files with a mark in ``data_dir / "ids"``, which
    a server writes as it issues IDs). Empty when the log is there or nothing shows it."""
    if has_log_files(log_dir):
        return []
    found: list[str] = []
    if (log_dir / MARK_NAME).exists():
        found.append(f"a revision mark ({log_dir / MARK_NAME})")
    if data_dir is not None and (data_dir / "ids").is_dir():
        states = sorted(p for p in (data_dir / "ids").glob("*.state") if p.stat().st_size > 0)
        if states:
            found.append(f"ID state ({', '.join(str(p) for p in states[:3])}"
                         f"{', ...' if len(states) > 3 else ''})")
    return found


def missing_log_error(log_dir: Path, evidence: list[str], flag: str) -> LockLogMissing:
    """The error for a lost log (``flag``: how to start empty anyway)."""
    return LockLogMissing(
        f"lock log {log_dir}: no log segments or snapshots, but found {' and '.join(evidence)}: "
        "this directory has served before, and its lock log was deleted or moved (or this is the "
        "wrong data directory). "
        "Starting empty would forget every session and lock and, without a mark, could issue "
        f"fencing tokens again. To start empty anyway, pass {flag}: the revision then starts "
        "above the revision mark, if there is one, so new tokens stay above every old one")



class RevisionMark:
    """``revision.hwm`` in a log directory: read it, write it atomically."""

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.path = directory / MARK_NAME
        self._fsync = fsync
        self.state = self.read(self.path)

    @staticmethod
    def read(path: Path) -> MarkState | None:
        """The mark in ``path``; None if there is none. Raises LogCorrupted if it is damaged
        (it is written atomically, so damage is never a torn write)."""
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return None
        lines = text.split(b"\n")
        values: dict[str, int] = {}
        problem = None
        try:
            *body, crc_line, end = lines
            crc = re.fullmatch(rb"crc32c ([0-9a-f]{8})", crc_line)
            if end != b"" or crc is None or body[0].decode() != _MAGIC:
                problem = "bad format"
            elif int(crc.group(1), 16) != crc32c(b"\n".join(body) + b"\n"):
                problem = "checksum mismatch"
            else:
                for raw in body[1:]:
                    m = _LINE.match(raw.decode())
                    if m is None or m.group(1) not in _FIELDS or m.group(1) in values:
                        problem = f"bad line {raw!r}"
                        break
                    values[m.group(1)] = int(m.group(2))
                if problem is None and set(values) != set(_FIELDS):
                    problem = "fields missing"
        except (ValueError, IndexError, UnicodeDecodeError):
            problem = "bad format"
        if problem is not None:
            raise LogCorrupted(
                f"revision mark {path} is damaged ({problem}). It keeps fencing tokens from being "
                "issued twice after records are lost. If the lock log is intact, deleting it is "
                "safe (it is written again from the log); otherwise tokens may repeat")
        return MarkState(values["reserved"], values["revision"], values["index"], values["raise"])

    def write(self, state: MarkState) -> None:
        """Replace the mark: temp file, fsync, rename, fsync the directory."""
        body = "\n".join([_MAGIC, f"reserved {state.reserved}", f"revision {state.revision}",
                          f"index {state.index}", f"raise {state.raise_to}"]).encode() + b"\n"
        data = body + b"crc32c %08x\n" % crc32c(body)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if self._fsync:
            _log._fsync_dir(self.path.parent)
        self.state = state

    def reserve(self, revision: int, index: int) -> None:
        """Reserve revisions up to ``revision + RESERVE`` (``revision`` is applied, in the
        log at ``index``); keeps a pending raise."""
        pending = self.state.raise_to if self.state is not None else 0
        self.write(MarkState(revision + RESERVE, revision, index, pending if pending > revision else 0))


@dataclass(slots=True)
class RepairResult:
    """:func:`repair`'s report: the log's (:class:`~coordcore.locks.log.RepairReport`)
    and what happens to the revision."""

    log: _log.RepairReport
    mark: MarkState | None
    #: The revision the next open raises the machine to (0: no raise).
    raise_to: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def needed(self) -> bool:
        """Whether there was anything to repair."""
        return bool(self.log.damage) or self.raise_to > 0

    def lines(self) -> list[str]:
        return self.log.lines() + self.notes


def repair(path: str | os.PathLike[str], *, apply: bool = False,
           durability: _log.Durability = "fsync") -> RepairResult:
    """Repair the lock service's log in ``path`` (a dry run unless ``apply``): cut off the
    damage (:func:`coordcore.locks.log.repair`) and, when records were dropped or are
    missing, make the next open raise the revision above every token issued before (the
    mark's ``reserved``), so no token is issued twice."""
    d = Path(os.fspath(path))
    if not d.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no lock log directory here", str(d))
    mark = RevisionMark.read(d / MARK_NAME)
    # Look first, cut last: the raise must be on disk before any record is dropped, or a
    # crash in between would leave a shorter, clean log and a mark with no raise, and the
    # dropped records' tokens could be issued again.
    report = _log.repair(d, apply=False, durability=durability)
    result = RepairResult(report, mark)
    verb = "" if apply else "would "
    behind = mark is not None and report.last_index < mark.index and not mark.raise_to
    if mark is not None and behind:
        result.notes.append(
            f"{MARK_NAME}: record {mark.index} (revision {mark.revision}) was on disk, the log "
            f"ends at record {report.last_index}: records {report.last_index + 1}..{mark.index} "
            "at least are missing")
    if mark is not None and mark.raise_to:
        result.raise_to = mark.raise_to
        result.notes.append(f"{MARK_NAME}: a raise to revision {mark.raise_to} is already pending "
                            "for the next open")
    elif mark is not None and (report.damage or behind):
        result.raise_to = mark.reserved
        result.notes.append(
            f"{MARK_NAME}: tokens up to revision {mark.reserved} may have been issued; {verb}raise "
            f"the revision to {mark.reserved} at the next open (and snapshot it), so every new "
            "token is above every old one")
        if apply:
            RevisionMark(d, fsync=durability == "fsync").write(replace(mark, raise_to=mark.reserved))
    elif mark is None and report.damage:
        result.notes.append(
            f"no {MARK_NAME} here (a log written before revision marks existed): tokens that the "
            "dropped records issued may be issued again; fence against them by other means")
    if apply:
        result.log = _log.repair(d, apply=True, durability=durability)  # the mark's raise is durable now
    if apply and result.needed:
        for line in result.notes:
            logger.warning("repair: %s", line)
    return result
