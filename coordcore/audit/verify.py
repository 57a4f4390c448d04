"""Verify an export (or a data directory, through its export) against a public key.

Checked, and each failure reported with its line and record index:

* every checkpoint's Ed25519 signature, by the given key its key id names (never by
  the key a checkpoint carries: an export that spans a key rotation verifies with the
  old and the new public key given, and fails naming the first checkpoint of a key not
  given), and each checkpoint's consistency proof from the one before;
* every record's RFC 6962 inclusion proof in the last checkpoint's tree, and that the
  records come in order, one per index, none missing at the end: an edited, dropped,
  reordered or inserted record fails here;
* when the export starts at the journal's first record: the tree rebuilt from the
  records has each checkpoint's root, and replaying the records through the
  deterministic machine (from the base state, whose digest the checkpoints sign) gives
  each checkpoint's revision and state digest and each record's exported events.

Lines are read with a bound (:data:`MAX_LINE`), so a hostile file costs bounded memory.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from coordcore.audit.checkpoint import Checkpoint, Keyring, canonical_hex, decode_b64
from coordcore.audit.history import Replayer
from coordcore.audit.journal import Entry, decode_leaf
from coordcore.audit.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from coordcore.errors import BadArgument, CoordcoreError
from coordcore.locks.machine import LockMachine

__all__ = ["Report", "verify_lines", "read_lines", "MAX_LINE"]

#: The longest export line read (a record of 48 MiB, base64'd, with its events).
MAX_LINE: Final = 64 << 20
#: Problems listed before the rest are only counted.
MAX_PROBLEMS: Final = 100


@dataclass
class Report:
    records: int = 0
    checkpoints: int = 0
    replayed: bool = False
    problems: list[str] = field(default_factory=list)
    more_problems: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)
        else:
            self.more_problems += 1


def read_lines(f: IO[bytes]) -> Iterator[bytes]:
    """The lines of a file, refusing (:class:`BadArgument`) one longer than MAX_LINE."""
    n = 0
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        n += 1
        if len(line) > MAX_LINE:
            raise BadArgument(f"line {n} is longer than {MAX_LINE} bytes: not an audit export")
        yield line


def _hashes(value: object) -> list[bytes]:
    if not isinstance(value, list) or len(value) > 128:
        raise BadArgument("a proof is a list of at most 128 hex hashes")
    out = [canonical_hex(h) for h in value]
    if any(h is None or len(h) != 32 for h in out):
        raise BadArgument("a proof holds something that is not a lower-case hex hash")
    return [h for h in out if h is not None]


def _int(obj: dict[str, Any], name: str) -> int:
    v = obj.get(name)
    if type(v) is not int or v < 0:
        raise BadArgument(f"{name} must be a non-negative integer")
    return v


def verify_lines(lines: Iterable[bytes | str],
                 public: Ed25519PublicKey | Iterable[Ed25519PublicKey] | Keyring) -> Report:
    """Check an export's lines (see the module docs) against the trusted public key(s);
    never raises on bad input."""
    keys = public if isinstance(public, Keyring) else \
        Keyring([public] if isinstance(public, Ed25519PublicKey) else public)
    report = Report()
    it = iter(enumerate(lines, 1))
    try:
        _verify(it, keys, report)
    except BadArgument as exc:  # a line too long: reading cannot go on
        report.problem(str(exc))
    return report


def _verify(it: Iterator[tuple[int, bytes | str]], keys: Keyring, report: Report) -> None:
    first = next(it, None)
    header = _json(first[1]) if first is not None else None
    if not isinstance(header, dict) or header.get("type") != "export" or header.get("version") != 1:
        report.problem("line 1: not an audit export header")
        return
    try:
        first_index, since = _int(header, "first_index"), _int(header, "since")
        base = decode_b64(header["base"], "base") if header["base"] is not None else None
        if set(header) != {"type", "version", "first_index", "since", "base"}:
            raise BadArgument("unknown or missing fields")
    except (BadArgument, KeyError) as exc:
        report.problem(f"line 1: a bad export header ({exc})")
        return
    checkpoints: list[Checkpoint] = []
    pending: tuple[int, bytes | str] | None = None
    for lineno, raw in it:
        obj = _json(raw)
        if not isinstance(obj, dict) or obj.get("type") != "checkpoint":
            pending = (lineno, raw)
            break
        try:
            cp = Checkpoint.from_json(obj)
            consistency = _hashes(obj.get("consistency"))
        except BadArgument as exc:
            report.problem(f"line {lineno}: a bad checkpoint ({exc})")
            continue
        report.checkpoints += 1
        unsigned = keys.problem(cp)
        if unsigned is not None:
            report.problem(f"line {lineno}: checkpoint of size {cp.size} {unsigned}")
        if cp.first_index != first_index:
            report.problem(f"line {lineno}: checkpoint starts at record {cp.first_index}, the export at {first_index}")
        prev = checkpoints[-1] if checkpoints else None
        if prev is None and consistency:
            report.problem(f"line {lineno}: the first checkpoint carries a consistency proof from nothing")
        if prev is not None and not verify_consistency(prev.size, cp.size, prev.root, cp.root, consistency):
            report.problem(f"line {lineno}: checkpoint of size {cp.size} is not consistent with the one "
                           f"of size {prev.size} before it")
        checkpoints.append(cp)
    if not checkpoints:
        report.problem("the export has no checkpoint: nothing in it is proved")
        return
    last = checkpoints[-1]
    at_size = {cp.size: cp for cp in checkpoints}
    # Replay only from the journal's start, and only from the base state the checkpoints sign.
    full = since == first_index
    if full and first_index > 1:
        digest = hashlib.sha256(base).hexdigest() if base is not None else "-"
        if any(cp.base != digest for cp in checkpoints):
            report.problem("line 1: the base state is not the one the checkpoints sign")
            full = False
    report.replayed = full
    tree = MerkleTree()
    machine_events = _Replayer(base) if full else None
    expected = since
    records = _chain([pending] if pending is not None else [], it)
    for lineno, raw in records:
        obj = _json(raw)
        if not isinstance(obj, dict) or obj.get("type") != "record":
            report.problem(f"line {lineno}: not a record line")
            full = False
            continue
        try:
            index = _int(obj, "index")
            leaf = decode_b64(obj["leaf"], "leaf")
            proof = _hashes(obj.get("proof"))
            size = _int(obj, "tree_size")
            time_ms = _int(obj, "time_ms")
        except (BadArgument, KeyError) as exc:
            report.problem(f"line {lineno}: a bad record line ({exc})")
            full = False
            continue
        report.records += 1
        if index != expected:
            what = "missing (dropped)" if index > expected else "out of place (reordered or inserted)"
            report.problem(f"line {lineno}: record {index} where record {expected} belongs: a record is {what}")
            full = False
        expected = index + 1
        if size != last.size or not verify_inclusion(leaf_hash(leaf), index - first_index, size, proof, last.root):
            report.problem(f"line {lineno}: record {index} does not prove into the checkpoint of size "
                           f"{last.size}: it was edited, or is not this log's")
            full = False
        if len(leaf) < 20 or int.from_bytes(leaf[12:20], "little") != time_ms:
            report.problem(f"line {lineno}: record {index}: time_ms is not its record's time")
        if not full:
            continue
        tree.append(leaf_hash(leaf))
        assert machine_events is not None
        problem = machine_events.apply(index, leaf, obj.get("events"))
        if problem:
            report.problem(f"line {lineno}: record {index}: {problem}")
            full = False
            continue
        at = at_size.get(tree.size)
        if at is not None:
            for text in _check_state(at, tree, machine_events.machine):
                report.problem(f"line {lineno}: after record {index}: {text}")
    if expected <= last.last_index:
        report.problem(f"end of export: records {expected}..{last.last_index} that the checkpoint of size "
                       f"{last.size} covers are missing")


_Line = tuple[int, bytes | str]


def _chain(first: list[_Line], rest: Iterator[_Line]) -> Iterator[_Line]:
    yield from first
    yield from rest


def _json(raw: bytes | str) -> object:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _check_state(cp: Checkpoint, tree: MerkleTree, machine: LockMachine) -> list[str]:
    out = []
    if tree.root() != cp.root:
        out.append(f"the records do not hash to the root of the checkpoint of size {cp.size}")
    if machine.revision != cp.revision:
        out.append(f"replay reaches revision {machine.revision}, the checkpoint signs {cp.revision}")
    if cp.state != "-" and hashlib.sha256(machine.snapshot()).hexdigest() != cp.state:
        out.append(f"replay reaches another state than the checkpoint of size {cp.size} signs")
    return out


class _Replayer:
    """Replays exported leaves, comparing each record's events with the exported ones."""

    def __init__(self, base: bytes | None) -> None:
        self._r = Replayer(base)
        self.machine = self._r.machine

    def apply(self, index: int, leaf: bytes, exported: object) -> str | None:
        try:
            record, users = decode_leaf(leaf)
            events = self._r.step(Entry(index, record, users))
        except CoordcoreError as exc:
            return f"the lock machine refuses it ({exc})"
        if [ev.to_json() for ev in events] != exported:
            return "its exported events differ from what replaying it gives"
        return None
