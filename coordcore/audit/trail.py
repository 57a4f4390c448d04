"""The audit trail of a lock log: the journal, its Merkle tree, signed checkpoints.

:class:`AuditedStore` wraps any :class:`~coordcore.locks.store.LogStore` (the file log
now; the etcd log can be wrapped the same way) and adds every record to the
:class:`AuditTrail` once the inner store says it is durable, before the pipeline
applies it, so nothing is acknowledged that the journal does not have. Hashing a record
is one SHA-256 over its bytes and the journal write one ``writev`` without fsync: the
commit path pays little (``bench/compare_audit.py``). The server keeps only the tree's
right edge (its root in O(log n) memory); inclusion and consistency proofs are built from
the journal by whoever exports it.

In cluster mode (:mod:`coordcore.audit.cluster`) one trail lives as long as the server:
a follower journals each record it applies (:meth:`AuditTrail.take`), the leader through
an :class:`AuditedStore` over the etcd log that shares it (``owns_trail=False``).

Checkpoints are signed between batches (a :meth:`CommitPipeline.on_batch
<coordcore.locks.pipeline.CommitPipeline.on_batch>` listener), where the tree and the
machine's state have taken exactly the same records: every ``every`` records, and when
asked (:meth:`AuditedStore.request_checkpoint`, which commits a tick so a batch
boundary comes at once).

>>> import asyncio, tempfile
>>> from pathlib import Path
>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
>>> from coordcore.locks.service import LockService
>>> from coordcore.locks.store import FileStore
>>> async def demo(d: Path) -> tuple[int, int]:
...     inner = await FileStore.open(d / "locks", durability="unsafe-no-fsync")
...     store = await AuditedStore.open(inner, d / "audit", key=Ed25519PrivateKey.generate())
...     async with LockService.open_store(store) as svc:
...         attach(svc, store)
...         s = await svc.open_session(ttl=10, owner=b"alice")
...         cp = await store.request_checkpoint(svc)
...     return cp.size, len(store.trail.checkpoints)
>>> with tempfile.TemporaryDirectory() as d:
...     asyncio.run(demo(Path(d)))
(2, 1)
"""
from __future__ import annotations

import array
import asyncio
import collections
import hashlib
import json
import logging
import os
import shlex
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from coordcore.audit import checkpoint as cpmod
from coordcore.audit.checkpoint import Checkpoint
from coordcore.audit.journal import (
    BASE,
    JOURNAL,
    TREE,
    Journal,
    JournalReader,
    _fsync_dir,
    encode_leaf,
    segment_name,
    segments,
)
from coordcore.audit.merkle import EMPTY_ROOT, CompactTree
from coordcore.errors import BadArgument, LogCorrupted, Unavailable
from coordcore.locks.machine import Op, decode_batch
from coordcore.locks.store import LogStore, unwrap_snapshot

if TYPE_CHECKING:
    from coordcore.locks.service import LockService

__all__ = ["AuditTrail", "AuditedStore", "attach", "move_to", "run_command", "DEFAULT_EVERY"]

logger = logging.getLogger("coordcore.audit")

#: Records between two automatic checkpoints.
DEFAULT_EVERY: Final = 10_000
#: One journal offset kept per this many entries (recovery finds a record from there).
_MARK_EVERY: Final = 1024
#: What a user-less leaf's hash starts with: RFC 6962's 0x00, then the record's u32 length.
_LEAF_PREFIX: Final = struct.Struct("<BI")
#: Openers remembered until their OPEN is appended (one that never is: evicted oldest first).
_MAX_PENDING_OWNERS: Final = 65_536


class AuditTrail:
    """The journal, the tree over its leaves and the checkpoints of one audit directory.

    With ``segment_bytes``, the live journal is sealed after the checkpoint that finds it
    that long (renamed ``journal-<first>.log``, the tree's right edge saved in
    ``tree.json``) and a new one started; ``archive(path)`` (run in a thread) then takes
    each sealed segment away: a move to an archive directory, or a command. The tree
    needs only its edge to go on, so archived segments never have to come back except to
    export or verify history that reaches into them.
    """

    def __init__(self, directory: Path, key: Ed25519PrivateKey | None, every: int, fsync: bool,
                 segment_bytes: int = 0, archive: Callable[[Path], None] | None = None,
                 trusted: Sequence[Ed25519PublicKey] = ()) -> None:
        self.directory = directory
        self.key = key
        #: The keys whose checkpoints this trail accepts: its own and older ones it was
        #: signed with before ``--audit-key`` was rotated (``--audit-trusted-key``).
        self.keyring = cpmod.Keyring([*([key.public_key()] if key is not None else []), *trusted])
        self.every = every
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.archive = archive
        #: The root only (O(log n) memory); proofs are built offline from the journal.
        self.tree = CompactTree()
        self.journal: Journal | None = None
        #: The first record the audit has (of all its segments).
        self.origin = 0
        #: Where every _MARK_EVERY-th entry of the live journal starts (a sparse index).
        self._marks = array.array("Q")
        #: (offset, index) of the entry after the last one stored_record() read.
        self._cursor = (0, 0)
        self.checkpoints: list[Checkpoint] = cpmod.read_checkpoints(directory)
        self.base_digest = "-"
        #: Records taken from the log at start because the journal had lost them.
        self.recovered_from_log = 0
        self._read_fd = -1
        self._root_at_checkpoint = b""
        self._archiving = threading.Lock()
        #: Held by a checkpoint job writing (fsync, append) and by whoever closes the journal.
        self._writing = threading.Lock()
        self._written_size = self.checkpoints[-1].size if self.checkpoints else -1
        #: Checkpoints signed or adopted since start (a metric).
        self.checkpoints_kept = 0
        self._threads: list[threading.Thread] = []
        #: How many records tree.json's edge covers (sealed segments up to there may go).
        self._sealed_size = 0
        #: A tree whose later leaves are all in the live journal: :meth:`root_at` starts
        #: from it (the last checkpoint adopted or signed, or where the live journal starts).
        self._base = CompactTree()

    @classmethod
    def load(cls, directory: Path, *, key: Ed25519PrivateKey | None = None, every: int = DEFAULT_EVERY,
             fsync: bool = True, segment_bytes: int = 0,
             archive: Callable[[Path], None] | None = None,
             trusted: Sequence[Ed25519PublicKey] = ()) -> AuditTrail:
        """Read an audit directory (creating it); raises :class:`LogCorrupted` if its tree
        does not extend its last checkpoint, or that checkpoint is not signed by ``key``
        or one of the ``trusted`` older keys."""
        if type(every) is not int or every < 1:
            raise BadArgument(f"checkpoint interval must be >= 1 record, not {every!r}")
        directory.mkdir(parents=True, exist_ok=True)
        trail = cls(directory, key, every, fsync, segment_bytes, archive, trusted)
        last = trail.checkpoints[-1] if trail.checkpoints else None
        sealed = trail._load_edge()
        if last is not None and last.size == trail.tree.size:
            trail._root_at_checkpoint = trail.tree.root()
        live = directory / JOURNAL
        expected = trail.origin + trail.tree.size if trail.origin else None
        for path in segments([directory], live):
            reader = JournalReader(path)
            if reader.first_index <= sealed:
                continue  # a sealed segment the saved edge covers (not archived yet)
            if path == live:
                trail._base = trail.tree.copy()
            if trail.origin == 0:
                trail.origin = reader.first_index
            elif reader.first_index != expected:
                raise LogCorrupted(f"audit {directory}: {path.name} starts at record {reader.first_index}, "
                                   f"the records before end at {expected - 1 if expected else '?'}")
            offsets: list[int] = []
            for entry in reader.entries(offsets):
                if path == live:
                    trail._mark(entry.index - reader.first_index, offsets.pop())
                trail.tree.append(_leaf_hash([entry.leaf]))
                if last is not None and trail.tree.size == last.size:
                    trail._root_at_checkpoint = trail.tree.root()
                    if path == live:
                        trail._base = trail.tree.copy()
            expected = trail.origin + trail.tree.size
            if path == live:
                trail.journal = Journal.reopen(path, reader.first_index, expected, reader.end, fsync)
        if trail.journal is None and trail.origin:  # a crash between sealing and the new journal
            trail.journal = Journal.create(directory, trail.origin + trail.tree.size, fsync)
        if (directory / BASE).exists():
            trail.base_digest = hashlib.sha256((directory / BASE).read_bytes()).hexdigest()
        trail._check_last_checkpoint()
        trail._archive_sealed()
        return trail

    def _load_edge(self) -> int:
        """Restore the tree from tree.json; returns the last record it covers (0: none)."""
        try:
            obj = json.loads((self.directory / TREE).read_bytes())
            if obj is None:
                return 0
            self.origin = int(obj["origin"])
            self.tree = CompactTree.restore(int(obj["size"]), [bytes.fromhex(h) for h in obj["edge"]])
            self._sealed_size = self.tree.size
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError) as exc:
            raise LogCorrupted(f"audit {self.directory}: {TREE} is damaged ({exc})") from None
        return self.origin + self.tree.size - 1

    def _check_last_checkpoint(self) -> None:
        if not self.checkpoints:
            return
        cp = self.checkpoints[-1]
        first = self.origin or None
        where = f"audit {self.directory}"
        root = EMPTY_ROOT if cp.size == 0 else self._root_at_checkpoint
        if first != cp.first_index or cp.size > self.tree.size or root != cp.root:
            raise LogCorrupted(
                f"{where}: the journal ({self.tree.size} records from {first}) does not extend the "
                f"last signed checkpoint (size {cp.size} from record {cp.first_index}): refusing to "
                "start, which would sign a checkpoint inconsistent with it")
        problem = self.keyring.problem(cp) if self.key is not None else None
        if problem is not None:
            raise LogCorrupted(f"{where}: the last checkpoint (size {cp.size}) {problem}; neither --audit-key "
                               "nor an --audit-trusted-key made it (give the old public key with "
                               "--audit-trusted-key after a key rotation, or move checkpoints.jsonl aside "
                               "to start a new chain)")

    @property
    def first_index(self) -> int:
        return self.origin

    @property
    def next_index(self) -> int:
        return self.journal.next_index if self.journal is not None else 0

    def start(self, first_index: int, base_state: bytes | None) -> None:
        """Create the journal at ``first_index``; ``base_state`` is the machine state
        before it (a log that had state before the audit began)."""
        if base_state is not None:
            tmp = self.directory / (BASE + ".tmp")
            tmp.write_bytes(base_state)
            if self.fsync:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, self.directory / BASE)
            self.base_digest = hashlib.sha256(base_state).hexdigest()
        self.journal = Journal.create(self.directory, first_index, self.fsync)
        self.origin = first_index

    def add(self, index: int, record: bytes, users: tuple[tuple[int, str], ...]) -> None:
        journal = self.journal
        assert journal is not None
        if (index - journal.first_index) % _MARK_EVERY == 0:
            self._marks.append(journal.end)
        if users:
            parts = [encode_leaf(record, users)]
            journal.append(index, parts)
            self.tree.append(_leaf_hash(parts))
            return
        # Every batch without a named user (the commit path): the same bytes, fewer calls.
        journal.append_record(index, record)
        h = hashlib.sha256(_LEAF_PREFIX.pack(0, len(record)))  # 0x00 || u32 length || record
        h.update(record)
        self.tree.append(h.digest())

    def stored_record(self, index: int) -> bytes | None:
        """The record the live journal holds for ``index`` (read back from the file);
        None for one in a sealed segment."""
        leaf = self.stored_leaf(index)
        return None if leaf is None else leaf[4:4 + int.from_bytes(leaf[:4], "little")]

    def stored_leaf(self, index: int) -> bytes | None:
        """The whole leaf (record and users) the live journal holds for ``index``; None
        for one in a sealed segment."""
        assert self.journal is not None
        if index < self.journal.first_index or index >= self.journal.next_index:
            return None
        if self._read_fd < 0:  # kept open: recovery compares every record after the snapshot
            self._read_fd = os.open(self.journal.path, os.O_RDONLY)
        n = index - self.journal.first_index
        offset, at = self._cursor
        if at != index or offset == 0:  # not the next one in order: from the mark before it
            offset, at = self._marks[n // _MARK_EVERY], self.journal.first_index + n - n % _MARK_EVERY
        while True:
            head = os.pread(self._read_fd, 16, offset)
            length = int.from_bytes(head[:4], "little")
            if at == index:
                self._cursor = (offset + 8 + length, index + 1)
                return os.pread(self._read_fd, length - 8, offset + 16)
            offset, at = offset + 8 + length, at + 1

    def take(self, index: int, record: bytes, base_state: Callable[[], bytes | None]) -> bool:
        """Journal record ``index`` as applied from a log that may hold records the
        journal has already (a replay, a follower resuming from an older snapshot):
        those are compared with the journal's copy, the next one is added. The first
        record starts the journal (``base_state()``: the state before it). Returns True
        if it was added; :class:`LogCorrupted` for a copy that differs or a gap."""
        if self.journal is None:
            self.start(index, base_state() if index > 1 else None)
        if index < self.first_index:
            return False  # before the audit began
        if index < self.next_index:
            stored = self.stored_record(index)  # None: in a sealed segment, covered by the edge
            if stored is not None and stored != record:
                raise LogCorrupted(f"audit {self.directory}: lock-log record {index} differs from "
                                   "the audit journal's copy: one of them was altered")
            return False
        if index > self.next_index:
            raise LogCorrupted(f"audit {self.directory}: the journal ends at record {self.next_index - 1} "
                               f"but the lock log resumes at {index}: records {self.next_index}..{index - 1} "
                               "were never audited")
        self.add(index, record, ())
        return True

    def tree_at(self, size: int) -> CompactTree | None:
        """The tree of the first ``size`` leaves, hashed again from the live journal's
        copy on disk (so an edited journal shows); None if ``size`` lies before what the
        live journal can rebuild, or beyond the tree."""
        job = self.rebuild(size)
        return job() if job is not None else None

    def rebuild(self, size: int) -> Callable[[], CompactTree | None] | None:
        """:meth:`tree_at` in two halves: what it starts from is taken now (on the event
        loop), the returned job reads and hashes the leaves and may run in a thread: it
        reads through a descriptor of its own (which a seal's rename does not disturb)
        and only bytes written before now, never the trail's read cursor."""
        base = self._base
        journal = self.journal
        if size < base.size or size > self.tree.size or journal is None:
            return None
        start, end = self.origin + base.size, self.origin + size
        if start == end:
            copy = base.copy()
            return lambda: copy
        if start < journal.first_index:
            return None
        n = start - journal.first_index
        offset, at = self._marks[n // _MARK_EVERY], journal.first_index + n - n % _MARK_EVERY
        fd = os.open(journal.path, os.O_RDONLY)
        base = base.copy()

        def run() -> CompactTree | None:
            tree, pos, index = base, offset, at
            try:
                while index < end:
                    head = os.pread(fd, 16, pos)
                    if len(head) < 16:
                        return None
                    length = int.from_bytes(head[:4], "little")
                    if index >= start:
                        tree.append(_leaf_hash([os.pread(fd, length - 8, pos + 16)]))
                    pos, index = pos + 8 + length, index + 1
            finally:
                os.close(fd)
            return tree

        return run

    def adopt(self, cp: Checkpoint, tree: CompactTree) -> None:
        """Keep a checkpoint another server signed, once the caller found that ``tree``
        (:meth:`tree_at` its size) has its root."""
        job = self.begin_adopt(cp)
        kept = job()
        if kept is not None:
            self.kept(kept, tree)

    def begin_adopt(self, cp: Checkpoint) -> Callable[[], Checkpoint | None]:
        """:meth:`adopt`'s file work (fsync the journal, append the checkpoint) as a job
        that may run in a thread; then :meth:`kept` on the loop if it returned ``cp``."""
        return self._writer(lambda: cp)

    def _writer(self, make: Callable[[], Checkpoint]) -> Callable[[], Checkpoint | None]:
        """A job that fsyncs the journal (a checkpoint never covers a record the journal
        could lose), makes the checkpoint and appends it to checkpoints.jsonl: one at a
        time, in size order (None: a checkpoint as large was written meanwhile)."""
        journal = self.journal
        assert journal is not None

        def run() -> Checkpoint | None:
            with self._writing:
                journal.sync_data()
                cp = make()
                if cp.size <= self._written_size:
                    return None
                cpmod.append_checkpoint(self.directory, cp, self.fsync)
                self._written_size = cp.size
                return cp

        return run

    def kept(self, cp: Checkpoint, tree: CompactTree) -> None:
        """On the event loop, once a checkpoint's job wrote it: keep it in memory, and
        seal the live journal if it is long enough."""
        if self.checkpoints and cp.size <= self.checkpoints[-1].size:
            return
        self.checkpoints.append(cp)
        self.checkpoints_kept += 1
        if tree.size >= self._base.size:
            self._base = tree
        assert self.journal is not None
        if self.segment_bytes and self.journal.end >= self.segment_bytes \
                and self.journal.next_index > self.journal.first_index:
            self.seal()

    def _mark(self, n: int, offset: int) -> None:
        if n % _MARK_EVERY == 0:
            self._marks.append(offset)

    def sync(self) -> None:
        """fdatasync the journal; safe in a thread while the loop appends (it never
        clears the journal's dirty mark, which a later :meth:`Journal.sync` relies on)."""
        journal = self.journal
        if journal is not None:
            with self._writing:  # the journal is not closed under us (seal, close)
                journal.sync_data()

    def checkpoint(self, revision: int, state: bytes | None) -> Checkpoint:
        """Sign and store a checkpoint of the whole tree, all at once (see
        :meth:`begin_checkpoint` for the halves)."""
        job, tree = self.begin_checkpoint(revision, state)
        cp = job()
        if cp is None:
            raise Unavailable("a checkpoint as large was signed meanwhile")
        self.kept(cp, tree)
        return cp

    def begin_checkpoint(self, revision: int, state: bytes | None
                         ) -> tuple[Callable[[], Checkpoint | None], CompactTree]:
        """A checkpoint of the whole tree as it is now, in two halves. What it signs is
        taken here, on the event loop between two batches (the tree, the revision, the
        machine state's bytes); the returned job hashes the state, fsyncs the journal,
        signs and appends the checkpoint, and may run in a thread, since it touches
        nothing the loop changes. Then :meth:`kept` on the loop, with the tree returned."""
        if self.key is None:
            raise Unavailable("this audit trail has no signing key (--audit-key)")
        if self.journal is None:
            raise Unavailable("the audit journal has not started yet")
        key, tree, origin, base = self.key, self.tree.copy(), self.origin, self.base_digest
        time_ms = int(time.time() * 1000)

        def make() -> Checkpoint:
            return Checkpoint.sign(key, first_index=origin, size=tree.size, root=tree.root(), revision=revision,
                                   state=hashlib.sha256(state).hexdigest() if state is not None else "-",
                                   base=base, time_ms=time_ms)

        return self._writer(make), tree

    def seal(self) -> None:
        """Close the live journal as a sealed segment, save the tree's edge, start anew."""
        journal = self.journal
        assert journal is not None
        with self._writing:  # no checkpoint job is fsyncing the journal being closed
            journal.close()
        self._close_reader()
        os.replace(journal.path, self.directory / segment_name(journal.first_index))
        if self.fsync:
            _fsync_dir(self.directory)
        self.journal = Journal.create(self.directory, journal.next_index, self.fsync)
        self._marks = array.array("Q")
        self._cursor = (0, 0)
        tmp = self.directory / (TREE + ".tmp")
        tmp.write_text(json.dumps({"origin": self.origin, "size": self.tree.size,
                                   "edge": [h.hex() for h in self.tree.edge]}))
        if self.fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, self.directory / TREE)
        if self.fsync:
            _fsync_dir(self.directory)
        self._sealed_size = self.tree.size
        self._base = self.tree.copy()
        self._archive_sealed()

    def _archive_sealed(self) -> None:
        """Hand the sealed segments the saved edge covers to ``archive``, in a thread (a
        move across file systems or a command can take a while)."""
        archive = self.archive
        if archive is None:
            return
        covered = self.origin + self._sealed_size - 1
        todo = [p for p in segments([self.directory]) if int(p.name[8:28]) <= covered]
        if not todo:
            return

        def run() -> None:
            with self._archiving:  # one at a time, in order
                for path in todo:
                    if not path.exists():
                        continue
                    try:
                        archive(path)
                    except Exception:
                        logger.exception("audit: archiving %s failed; it stays and is tried again "
                                         "at the next seal", path)
                        return

        thread = threading.Thread(target=run, name="coordcore-audit-archive", daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _close_reader(self) -> None:
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1

    def close(self) -> None:
        self._close_reader()
        if self.journal is not None:
            with self._writing:  # a checkpoint job in a thread finishes first
                self.journal.close()
        for thread in self._threads:  # a clean stop lets the archiving finish
            thread.join()
        self._threads = []


def move_to(directory: Path) -> Callable[[Path], None]:
    """An ``archive`` that moves each sealed segment into ``directory`` (made durable
    there before the local one goes)."""
    directory.mkdir(parents=True, exist_ok=True)

    def archive(path: Path) -> None:
        target = directory / path.name
        tmp = directory / (path.name + ".tmp")
        shutil.copyfile(path, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(directory)
        path.unlink()

    return archive


def run_command(command: str) -> Callable[[Path], None]:
    """An ``archive`` that runs ``command PATH`` (a shell word list) for each sealed
    segment and removes the segment once the command exits 0."""
    argv = shlex.split(command)
    if not argv:
        raise BadArgument("an empty audit archive command")

    def archive(path: Path) -> None:
        subprocess.run([*argv, str(path)], check=True, timeout=3600, stdin=subprocess.DEVNULL)
        path.unlink()

    return archive


def _leaf_parts(record: bytes, users: tuple[tuple[int, str], ...]) -> list[bytes]:
    if not users:
        return [len(record).to_bytes(4, "little"), record]
    return [encode_leaf(record, users)]


def _leaf_hash(parts: list[bytes]) -> bytes:
    # RFC 6962 leaf hash over the parts without joining them (a record can be large).
    h = hashlib.sha256(b"\x00")
    for p in parts:
        h.update(p)
    return h.digest()


class AuditedStore:
    """A :class:`~coordcore.locks.store.LogStore` that audits every record of another."""

    def __init__(self, inner: LogStore, trail: AuditTrail, *, owns_trail: bool = True) -> None:
        self.inner = inner
        self.trail = trail
        #: False: the trail outlives this store (cluster mode: one trail per server, one
        #: store per term led), so close() neither signs nor closes it.
        self.owns_trail = owns_trail
        #: Called with each checkpoint signed here (cluster mode publishes it in etcd).
        self.on_checkpoint: Callable[[Checkpoint], None] | None = None
        #: Why this store must not sign (a new leader whose journal does not extend the
        #: cluster's last checkpoint), or None.
        self.refuse_signing: str | None = None
        self.max_record_bytes: int = inner.max_record_bytes
        self.syncs: bool = inner.syncs
        self._append_then: Callable[[bytes, Callable[[int], None]], asyncio.Future[int] | None] | None = \
            getattr(inner, "append_then", None)
        # One at a time: a checkpoint is signed at a batch boundary, where the tree and
        # the machine have taken the same records (the journal follows each append).
        self.max_in_flight = 1
        self._owners: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        self._want: list[asyncio.Future[Checkpoint]] = []
        self._state: Callable[[], bytes] | None = None
        self._revision: Callable[[], int] = lambda: 0
        #: The checkpoint being signed in a thread, if one is.
        self._signing: asyncio.Task[None] | None = None
        #: Sign in a worker thread (False: on the event loop, the bench's baseline).
        self.offload = True

    @classmethod
    async def open(cls, inner: LogStore, directory: Path, *, key: Ed25519PrivateKey | None = None,
                   every: int = DEFAULT_EVERY, segment_bytes: int = 0,
                   archive: Callable[[Path], None] | None = None,
                   trusted: Sequence[Ed25519PublicKey] = ()) -> AuditedStore:
        fsync = bool(inner.syncs)
        loop = asyncio.get_running_loop()
        try:
            trail = await loop.run_in_executor(
                None, lambda: AuditTrail.load(directory, key=key, every=every, fsync=fsync,
                                              segment_bytes=segment_bytes, archive=archive, trusted=trusted))
        except BaseException:
            await inner.close()
            raise
        return cls(inner, trail)

    # --- the LogStore interface --------------------------------------------------------

    @property
    def next_index(self) -> int:
        return self.inner.next_index

    async def replay(self, restore: Callable[[int, bytes], None], apply: Callable[[int, bytes], None]) -> int:
        trail = self.trail
        snap: list[tuple[int, bytes]] = []

        def on_restore(index: int, payload: bytes) -> None:
            snap[:] = [(index, payload)]
            restore(index, payload)

        def on_apply(index: int, payload: bytes) -> None:
            if trail.take(index, payload, lambda: self._base_state(index, snap)):
                trail.recovered_from_log += 1  # the journal's unsynced tail, lost in a crash
            apply(index, payload)

        try:
            floor = await self.inner.replay(on_restore, on_apply)
        finally:
            trail._close_reader()
        if trail.journal is None:
            first = self.inner.next_index
            trail.start(first, self._base_state(first, snap) if first > 1 else None)
        if trail.next_index > self.inner.next_index:
            raise LogCorrupted(f"audit {trail.directory}: the journal has records up to "
                               f"{trail.next_index - 1} but the lock log ends at {self.inner.next_index - 1}")
        if trail.recovered_from_log:
            logger.warning("audit %s: %d records taken again from the lock log (the journal lost its "
                           "unsynced tail); their user names are not known", trail.directory,
                           trail.recovered_from_log)
        return floor

    def _base_state(self, first_index: int, snap: list[tuple[int, bytes]]) -> bytes:
        """The state before record ``first_index``: the snapshot just before it."""
        if not snap or snap[0][0] != first_index - 1:
            raise LogCorrupted(f"audit {self.trail.directory}: cannot start at record {first_index} "
                               "without the snapshot before it")
        return unwrap_snapshot(snap[0][1], snap[0][0], self.inner)

    def append(self, record: bytes) -> asyncio.Future[int]:
        users = self._users_of(record) if self._owners else ()
        trail = self.trail
        if self._append_then is not None:
            # The file store runs the audit before it resolves the append: no second
            # future, no extra event-loop turn per batch.
            fut = self._append_then(record, lambda index: trail.add(index, record, users))
            if fut is not None:
                return fut
        inner = self.inner.append(record)
        out: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def done(f: asyncio.Future[int]) -> None:
            if out.done():
                return
            if f.cancelled():
                out.cancel()
                return
            exc = f.exception()
            if exc is not None:
                out.set_exception(exc)
                return
            index = f.result()
            try:
                trail.add(index, record, users)
            except BaseException as e:  # unaudited records are not acknowledged: the service stops
                out.set_exception(e)
                return
            out.set_result(index)

        inner.add_done_callback(done)
        return out

    async def write_snapshot(self, index: int, payload: bytes) -> None:
        # The snapshot lets the log drop the records it covers: the journal keeps them.
        await asyncio.get_running_loop().run_in_executor(None, self.trail.sync)
        await self.inner.write_snapshot(index, payload)

    def applied(self, revision: int) -> None:
        self.inner.applied(revision)

    async def close(self) -> None:
        try:
            await self.wait_signed()
            _fail(self._want, Unavailable("the lock service closed before the checkpoint"))
            trail = self.trail
            if self.owns_trail:
                last = trail.checkpoints[-1].size if trail.checkpoints else 0
                if trail.key is not None and trail.journal is not None and trail.tree.size > last:
                    # A clean stop signs what it has: an export then proves every record.
                    job, tree = trail.begin_checkpoint(self._revision(),
                                                       self._state() if self._state is not None else None)
                    cp = await asyncio.get_running_loop().run_in_executor(None, job)
                    if cp is not None:
                        trail.kept(cp, tree)
                trail.close()
        finally:
            await self.inner.close()

    def __repr__(self) -> str:
        return f"<AuditedStore {self.inner!r} audit={self.trail.directory}>"

    # --- who opened each session --------------------------------------------------------

    def note_owner(self, digest: bytes, owner: bytes) -> None:
        """The OPEN with credential ``digest`` is ``owner``'s (the default user: nothing)."""
        if not owner:
            return
        owners = self._owners
        owners[digest] = owner.decode(errors="replace")
        if len(owners) > _MAX_PENDING_OWNERS:
            owners.popitem(last=False)

    def _users_of(self, record: bytes) -> tuple[tuple[int, str], ...]:
        _, commands = decode_batch(record)
        users = []
        for pos, cmd in enumerate(commands):
            if cmd.op == Op.OPEN:
                name = self._owners.pop(cmd.value, None)
                if name is not None:
                    users.append((pos, name))
        return tuple(users)

    # --- checkpoints --------------------------------------------------------------------

    def after_batch(self) -> None:
        """Between two batches: begin a checkpoint if one is due or wanted (one at a
        time; the wanted ones that come meanwhile wait for the next)."""
        trail = self.trail
        last = trail.checkpoints[-1].size if trail.checkpoints else 0
        if self._signing is not None or trail.key is None or \
                not (self._want or trail.tree.size - last >= trail.every):
            return
        wants, self._want = self._want, []
        try:
            if self.refuse_signing is not None:
                raise Unavailable(f"this server signs no audit checkpoint: {self.refuse_signing}")
            # The state's bytes are taken here, where the machine has taken exactly the
            # tree's records; hashing them, the fsync and the signature go to a thread.
            job, tree = trail.begin_checkpoint(self._revision(), self._state() if self._state is not None else None)
        except Exception as exc:
            if not isinstance(exc, Unavailable):
                logger.exception("audit checkpoint failed")
            _fail(wants, exc)
            return
        if not self.offload:
            self._finish(job(), tree, wants)
            return
        self._signing = asyncio.get_running_loop().create_task(self._sign(job, tree, wants))

    async def _sign(self, job: Callable[[], Checkpoint | None], tree: CompactTree,
                    wants: list[asyncio.Future[Checkpoint]]) -> None:
        try:
            cp = await asyncio.get_running_loop().run_in_executor(None, job)
        except Exception as exc:
            logger.exception("audit checkpoint failed")
            _fail(wants, exc)
            return
        except BaseException:  # cancelled: the loop is going away
            _fail(wants, Unavailable("the lock service closed before the checkpoint"))
            raise
        finally:
            self._signing = None
        self._finish(cp, tree, wants)

    def _finish(self, cp: Checkpoint | None, tree: CompactTree, wants: list[asyncio.Future[Checkpoint]]) -> None:
        if cp is None:
            _fail(wants, Unavailable("a checkpoint as large was signed meanwhile"))
            return
        try:
            self.trail.kept(cp, tree)
            if self.on_checkpoint is not None:
                self.on_checkpoint(cp)
        except Exception as exc:
            logger.exception("audit checkpoint failed")
            _fail(wants, exc)
            return
        for w in wants:
            if not w.done():
                w.set_result(cp)

    async def request_checkpoint(self, svc: LockService) -> Checkpoint:
        """Sign a checkpoint now (after a tick, so it is taken at a batch boundary)."""
        if self.trail.key is None:
            raise Unavailable("no audit key: the server was started without --audit-key")
        fut: asyncio.Future[Checkpoint] = asyncio.get_running_loop().create_future()
        self._want.append(fut)
        while fut in self._want:  # not taken by a checkpoint yet (one was being signed)
            busy = self._signing
            if busy is not None:
                await asyncio.wait({busy})
            await svc.tick()
        return await fut

    async def wait_signed(self) -> None:
        """Until the checkpoint being signed (if any) is written."""
        busy = self._signing
        if busy is not None:
            await asyncio.wait({busy})


def _fail(wants: list[asyncio.Future[Checkpoint]], exc: BaseException) -> None:
    for w in wants:
        if not w.done():
            w.set_exception(exc)


def attach(svc: LockService, store: AuditedStore, *, users: bool = True) -> None:
    """Wire an audited store to the service that runs on it: openers' names (unless
    not ``users``: in a cluster the followers, who never see them, must hash the same
    leaves), the state each checkpoint commits to, and the batch boundary checkpoints
    are taken at."""
    store._state = svc.state_snapshot
    store._revision = lambda: svc.revision
    if users:
        svc.on_open = store.note_owner
    svc.pipeline.on_batch(store.after_batch)
