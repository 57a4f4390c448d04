"""The audit history: each record's events, who caused them, queries and exports.

Events are not stored: the journal holds the records, and the deterministic machine
turns them into the same events every time (:func:`replay`). An export replays the
journal from its start (or its base state); a query (``AUDIT.HISTORY``, ``coordcore
audit history``) starts from the last *stop* of a :class:`HistoryIndex` before its range:
the machine's state, its revision and time before every :data:`STOP_EVERY`-th record,
noted by the queries that replayed past it (the first query pays one whole replay). A
page then costs a replay of at most one stop interval plus what it reads, not of the
whole journal, and the server's commit path keeps no index. Revisions and the machine's
time never go back, so nothing before such a stop can be in the range; a query also
stops at the first record past ``to_ms``. Stops name a record by its journal file's first
record and byte offset, which sealing (a rename) and archiving (a move) keep.

An export is JSON lines, Debezium-style change events with their proofs::

    {"type": "export", "version": 1, "first_index": F, "since": S, "base": <b64 or null>}
    {"type": "checkpoint", ...signed fields..., "consistency": [hex, ...]}   (each, oldest first)
    {"type": "record", "index": i, "leaf": <b64>, "time_ms": t, "events": [...],
     "tree_size": N, "proof": [hex, ...]}                                       (since S, in order)

Every record's proof is its RFC 6962 inclusion proof in the tree of the last
checkpoint (``tree_size``); each checkpoint's ``consistency`` proves it extends the one
before it. Only records the last checkpoint covers are exported: an export proves all
it holds. A journal sealed into segments and archived is read back from the archive
directories given (``archives``); a missing segment is an error naming its records.

The machine has no "preempted" event (no lock is taken from a live holder): a holder
loses a lock by release, cancel, close or expiry, each its own event.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from coordcore.audit import checkpoint as cpmod
from coordcore.audit.journal import BASE, JOURNAL, TREE, Entry, JournalReader, chain_entries, segments
from coordcore.audit.merkle import MerkleTree, leaf_hash
from coordcore.errors import BadArgument, LogCorrupted, NotFound
from coordcore.locks.machine import EventKind, LockMachine, Mode

__all__ = ["AuditEvent", "HistoryIndex", "Replayer", "export", "query", "replay", "DEFAULT_LIMIT",
           "STOP_EVERY"]

DEFAULT_LIMIT: Final = 1000
#: Records between two stops of a history index.
STOP_EVERY: Final = 4096
#: Stops an index keeps (past this, every other one goes and the interval doubles).
MAX_STOPS: Final = 512

_KIND: dict[int, str] = {EventKind.OPEN: "opened", EventKind.CLOSE: "closed", EventKind.EXPIRE: "expired",
         EventKind.WAIT: "waited", EventKind.GRANT: "granted", EventKind.RELEASE: "released",
         EventKind.CANCEL: "cancelled", EventKind.PROCLAIM: "proclaimed"}
_MODE: dict[int, str] = {Mode.NONE: "", Mode.EXCLUSIVE: "exclusive", Mode.SHARED: "shared",
                         Mode.SEMAPHORE: "semaphore",
         Mode.ELECTION: "election"}


@dataclass(frozen=True)
class AuditEvent:
    """One state change: which record made it, when, to what, for whom."""

    index: int
    time_ms: int
    revision: int
    event: str
    session: int
    user: str
    key: bytes
    mode: str
    ticket: int
    token: int

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "time_ms": self.time_ms, "revision": self.revision,
                "event": self.event, "session": self.session, "user": self.user,
                "key": self.key.decode(errors="backslashreplace"), "mode": self.mode,
                "ticket": self.ticket, "token": self.token}


class Replayer:
    """The deterministic machine fed one journal entry at a time, naming each session's
    user from the OPEN that made it."""

    def __init__(self, base: bytes | None = None) -> None:
        self.machine = LockMachine.from_snapshot(base) if base else LockMachine()
        self._users: dict[int, str] = {}

    def step(self, entry: Entry) -> list[AuditEvent]:
        """The events of ``entry`` (:class:`~coordcore.errors.BadArgument` if the machine
        refuses it, or it names a user for a command it does not have)."""
        applied = self.machine.apply(entry.record)
        users = self._users
        for pos, name in entry.users:
            if not 0 <= pos < len(applied.results):
                raise BadArgument(f"record {entry.index}: a user for command {pos}, which it does not have")
            sid = applied.results[pos].session_id
            if sid:
                users[sid] = name
        t = self.machine.time_ms
        out = [AuditEvent(entry.index, t, ev.revision, _KIND.get(ev.kind, str(ev.kind)), ev.session,
                          users.get(ev.session, ""), ev.key, _MODE.get(ev.mode, str(ev.mode)),
                          ev.ticket, ev.token)
               for ev in applied.events]
        for ev in out:
            if ev.event in ("closed", "expired"):
                users.pop(ev.session, None)
        return out


def replay(entries: Iterable[Entry], base: bytes | None = None) -> Iterator[tuple[Entry, list[AuditEvent]]]:
    """Each entry with the events applying it makes."""
    r = Replayer(base)
    for entry in entries:
        yield entry, r.step(entry)


class _Journal:
    """The whole journal of an audit directory: its sealed segments (there, or in
    ``archives``) and its live file, read as one."""

    def __init__(self, directory: Path, archives: Sequence[Path]) -> None:
        live = directory / JOURNAL
        if not live.exists():
            raise NotFound(f"no audit journal in {directory} (was the server started with --audit-key?)")
        self.paths = segments([directory, *archives], live)
        self.first_index = JournalReader(self.paths[0]).first_index
        try:
            origin = json.loads((directory / TREE).read_bytes())["origin"]
        except FileNotFoundError:
            origin = self.first_index
        except (ValueError, KeyError, TypeError):
            raise LogCorrupted(f"audit {directory}: {TREE} is damaged") from None
        if self.first_index != origin:
            raise NotFound(f"the audit history starts at record {origin}, the oldest journal segment "
                           f"found at {self.first_index}: give the archive directory (--archive)")
        base_path = directory / BASE
        self.base = base_path.read_bytes() if base_path.exists() else None

    def entries(self) -> Iterator[Entry]:
        return chain_entries(self.paths, self.first_index)

    def positioned(self, stop: _Stop | None) -> Iterator[tuple[int, int, Entry]]:
        """``(file's first record, byte offset, entry)`` of each entry from ``stop`` (None:
        the first), across the files; a gap raises as :func:`chain_entries` does."""
        expected = stop.index if stop is not None else self.first_index
        for path in self.paths:
            reader = JournalReader(path)
            if stop is not None and reader.first_index < stop.segment:
                continue
            start = (stop.offset, stop.index) if stop is not None and reader.first_index == stop.segment else None
            if start is None and reader.first_index != expected:
                raise NotFound(f"audit records {expected}..{reader.first_index - 1} are in none of the "
                               "journal files found (archived? give the archive directory)")
            offsets: list[int] = []
            for e in reader.entries(offsets, start):
                yield reader.first_index, offsets.pop(), e
                expected = e.index + 1

    def identity(self) -> tuple[int, bytes]:
        """Its first record and that record's digest: a journal another history started
        (an audit directory moved aside and begun again) does not match an old index."""
        for e in JournalReader(self.paths[0]).entries():
            return self.first_index, hashlib.sha256(e.leaf).digest()
        return self.first_index, b""


@dataclass(frozen=True)
class _Stop:
    """Where a replay can start: record ``index`` at byte ``offset`` of the journal file
    whose first record is ``segment``, and the replay's state before it."""

    index: int
    segment: int
    offset: int
    revision: int
    time_ms: int
    state: bytes
    users: tuple[tuple[int, str], ...]


class HistoryIndex:
    """The stops of one audit directory's journal (see the module docs); shared by the
    queries of a server (each runs in a worker thread: a lock guards the list)."""

    def __init__(self, every: int = STOP_EVERY) -> None:
        if every < 1:
            raise BadArgument("a history index needs a stop every >= 1 records")
        self._lock = threading.Lock()
        self._identity: tuple[int, bytes] | None = None
        self._stops: list[_Stop] = []
        self._first_every = self._every = every

    def start(self, journal: _Journal, after: int, from_ms: int) -> _Stop | None:
        """The last stop before which no event can have a revision above ``after`` and a
        time from ``from_ms`` on (None: start at the beginning)."""
        identity = journal.identity()
        with self._lock:
            if identity != self._identity:
                self._identity, self._stops, self._every = identity, [], self._first_every
            best = None
            for stop in self._stops:
                # Events before the stop have revision <= stop.revision and time <= stop.time_ms.
                if stop.revision <= after or stop.time_ms < from_ms:
                    best = stop
                else:
                    break
            return best

    def note(self, segment: int, offset: int, entry: Entry, r: Replayer, first_index: int) -> None:
        """Keep a stop at ``entry`` (not applied yet) if one is due there."""
        n = entry.index - first_index
        if n == 0 or n % self._every:
            return
        with self._lock:
            if self._stops and self._stops[-1].index >= entry.index:
                return
            self._stops.append(_Stop(entry.index, segment, offset, r.machine.revision, r.machine.time_ms,
                                     r.machine.snapshot(), tuple(r._users.items())))
            if len(self._stops) > MAX_STOPS:
                self._every *= 2
                self._stops = [s for s in self._stops if (s.index - first_index) % self._every == 0]

    def __len__(self) -> int:
        return len(self._stops)


def query(directory: Path, prefix: bytes = b"", from_ms: int = 0, to_ms: int = 2**63 - 1, *,
          after: int = 0, limit: int = DEFAULT_LIMIT, archives: Sequence[Path] = (),
          index: HistoryIndex | None = None) -> tuple[list[AuditEvent], int]:
    """At most ``limit`` events on keys under ``prefix`` (session events too when
    ``prefix`` is empty) with ``from_ms <= time <= to_ms`` and revision above ``after``;
    and the ``after`` of the next page (0: there is none). With ``index`` (kept by the
    caller between queries), the replay starts from its last stop before the range."""
    if limit < 1:
        raise BadArgument("limit must be >= 1")
    for attempt in range(_RELIST):
        try:
            return _query(_Journal(directory, archives), prefix, from_ms, to_ms, after, limit,
                          index if index is not None else HistoryIndex())
        except FileNotFoundError:
            # A sealed segment moved to the archive while it was read (it is copied
            # there before it is removed here): list the segments again.
            if attempt == _RELIST - 1:
                raise
    raise AssertionError("unreachable")


#: How often a history query lists the journal's segments again when one moved away.
_RELIST = 3


def _query(journal: _Journal, prefix: bytes, from_ms: int, to_ms: int, after: int,
           limit: int, index: HistoryIndex) -> tuple[list[AuditEvent], int]:
    found: list[AuditEvent] = []
    stop = index.start(journal, after, from_ms)
    r = Replayer(stop.state if stop is not None else journal.base)
    if stop is not None:
        r._users = dict(stop.users)
    for segment, offset, entry in journal.positioned(stop):
        index.note(segment, offset, entry, r, journal.first_index)
        if r.machine.time_ms > to_ms:
            return found, 0  # time never goes back: no later event is in range
        for ev in r.step(entry):
            if ev.revision <= after or not from_ms <= ev.time_ms <= to_ms:
                continue
            if prefix and not (ev.key and ev.key.startswith(prefix)):
                continue
            if len(found) == limit:
                return found, found[-1].revision
            found.append(ev)
    return found, 0


def export(directory: Path, since: int = 0, archives: Sequence[Path] = ()) -> Iterator[str]:
    """The export's JSON lines (see the module docs), from record ``since`` (0: the first);
    sealed segments archived elsewhere are found in ``archives``."""
    reader = _Journal(directory, archives)
    base = reader.base
    checkpoints = cpmod.read_checkpoints(directory)
    if not checkpoints:
        raise NotFound(f"no signed checkpoint in {directory}: nothing can be proved yet "
                       "(AUDIT.CHECKPOINT signs one)")
    last = checkpoints[-1]
    since = max(since, reader.first_index)
    tree = MerkleTree()  # a first pass builds the tree, a second replays (no record kept)
    for e in _covered(reader, last.last_index):
        tree.append(leaf_hash(e.leaf))
    if tree.size < last.size:
        raise NotFound(f"the audit journal in {directory} ends before its last checkpoint")
    yield _line({"type": "export", "version": 1, "first_index": reader.first_index, "since": since,
                 "base": base64.b64encode(base).decode() if base is not None and since == reader.first_index
                 else None})
    prev: cpmod.Checkpoint | None = None
    for cp in checkpoints:
        proof: list[bytes] = tree.consistency_proof(prev.size, cp.size) if prev is not None else []
        yield _line({"type": "checkpoint", **cp.to_json(), "consistency": [p.hex() for p in proof]})
        prev = cp
    for entry, events in replay(_covered(reader, last.last_index), base):
        if entry.index < since:
            continue
        leaf_index = entry.index - reader.first_index
        yield _line({"type": "record", "index": entry.index, "leaf": base64.b64encode(entry.leaf).decode(),
                     "time_ms": _batch_time(entry.record),
                     "events": [ev.to_json() for ev in events], "tree_size": last.size,
                     "proof": [p.hex() for p in tree.inclusion_proof(leaf_index, last.size)]})


def _batch_time(record: bytes) -> int:
    """A batch record's own timestamp (header bytes 8..16; see coordcore.locks.machine)."""
    return int.from_bytes(record[8:16], "little")


def _covered(reader: _Journal, last_index: int) -> Iterator[Entry]:
    for e in reader.entries():
        if e.index > last_index:
            return
        yield e


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))
