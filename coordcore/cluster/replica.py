"""A follower's copy of the lock state: the log in etcd applied natively, in order.

:class:`Replica` holds a :class:`~coordcore.locks.machine.LockMachine` and the verified
end of the log it reflects (a :class:`~coordcore.cluster.record.Chain`). It starts from
its local snapshot (``<data_dir>/replica.snap``) if that still lies on the log in etcd,
else from the newest snapshot in etcd, then tails the log with
:func:`~coordcore.cluster.reader.follow` (a Range from its position, then a watch).
Records go to the machine exactly as the leader applied them, so at the same index
both machines' snapshots are the same bytes.

It never jumps over records: if the records after its position were truncated below a
snapshot (it was away too long, or its local snapshot is old), it loads that snapshot
from etcd and tells its watches to re-read (:meth:`Replica.restart_watches`), since the
events in between are gone. A record the machine refuses, or a broken chain, stops it
loudly (:attr:`Replica.failed`); it never skips one.

Reads (``LOCK.INFO``, ``LOCKS.*``, ``SESSION.INFO``, ``ELECT.LEADER``, ``WATCH``) use the
same method names as :class:`~coordcore.locks.service.LockService`, so the server's read
handlers serve either.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path

from coordcore.cluster import reader, snapshot
from coordcore.cluster.errors import EtcdCompacted, EtcdRequestFailed, EtcdUnavailable, FollowerBehind, LogInvalid
from coordcore.cluster.etcd import Etcd, sleep_backoff
from coordcore.cluster.keys import Keys
from coordcore.cluster.record import Chain, decode
from coordcore.errors import CoordcoreError, LogCorrupted, ServiceClosed
from coordcore.locks.machine import Contender, KeyInfo, LockMachine, SessionInfo, decode_events
from coordcore.locks.pools import PoolReads
from coordcore.locks.store import unwrap_snapshot
from coordcore.locks.watches import DEFAULT_WATCH_BUFFER, Watch, WatchHub
from coordcore.types import Leader

__all__ = ["Replica", "LOCAL_SNAPSHOT"]

log = logging.getLogger(__name__)

#: The file name of the local snapshot in the server's data dir.
LOCAL_SNAPSHOT = "replica.snap"
_MAGIC = b"CCREPLI1"
_HEAD = struct.Struct("<8sQQ32s32s")  # magic, index, term, record digest, SHA-256 of the state


class Replica:
    """See the module docs. ``await start()``, then :meth:`run` tails the log until
    cancelled (or until it fails: :attr:`failed` says why)."""

    def __init__(self, etcd: Etcd, keys: Keys, data_dir: Path, *, page_size: int = 64,
                 page_bytes: int = 32 * 1024 * 1024, snapshot_every: int = 10_000,
                 on_record: Callable[[int, bytes, Callable[[], bytes]], None] | None = None) -> None:
        self.etcd = etcd
        #: Called with each record before it is applied, and a function giving the state
        #: before it (the audit trail journals it; raising LogCorrupted stops the replica).
        self.on_record = on_record
        self._keys = keys
        self.path = data_dir / LOCAL_SNAPSHOT
        self.page_size = page_size
        self.page_bytes = page_bytes
        self.snapshot_every = snapshot_every
        self.machine = LockMachine()
        #: POOL.INFO and the other pool reads, from whichever machine is loaded now.
        self.pools = PoolReads(lambda: self.machine)
        self.chain = Chain()
        #: Why it stopped applying (a broken log or a record the machine refused), or None.
        self.failed: Exception | None = None
        self.ready = False
        #: Where the state was last loaded from: "local:<index>", "etcd:<index>" or "empty".
        self.loaded_from = ""
        self._saved_index = 0
        self._watches = WatchHub(self._set_sink)
        self._sink_on = False
        self._local_tried = False

    # --- state ------------------------------------------------------------------------

    @property
    def index(self) -> int:
        """The last record applied."""
        return self.chain.index

    async def start(self) -> None:
        """Load the local snapshot if it is still on the log in etcd, else etcd's newest."""
        local = self._load_local() if not self._local_tried else None
        self._local_tried = True
        if local is not None:
            machine, chain = local
            if await self._on_log(chain):
                self.machine, self.chain, self._saved_index = machine, chain, chain.index
                self.loaded_from = f"local:{chain.index}"
                log.info("replica resumes from its local snapshot at record %d", chain.index)
            else:
                log.warning("local snapshot at record %d is not on the log in etcd (truncated or"
                            " another history): loading etcd's snapshot", chain.index)
                await self._from_etcd()
        else:
            await self._from_etcd()
        self.ready = True

    async def _on_log(self, chain: Chain) -> bool:
        """True if record ``chain.index`` in etcd (or a snapshot at it) has this digest:
        the local state then lies on etcd's log, and following on from it is safe."""
        if chain.index == 0:
            return True
        kv = await self.etcd.get(self._keys.log(chain.index))
        if kv is not None:
            return decode(kv.value, where=chain.index).digest == chain.digest
        man = await self.etcd.get(self._keys.snap_manifest(chain.index))
        if man is not None:
            return snapshot.Manifest.decode(man.value, chain.index).record_digest == chain.digest
        return False

    async def _from_etcd(self) -> None:
        snap = await snapshot.read_newest(self.etcd, self._keys, page_bytes=self.page_bytes)
        machine = LockMachine()
        chain = Chain()
        if snap is not None:
            m = snap.manifest
            machine.restore(unwrap_snapshot(snap.payload, m.index, "etcd"))
            chain = Chain(m.index, m.record_digest, m.term)
            log.info("replica loaded etcd's snapshot at record %d", m.index)
        self.machine, self.chain = machine, chain
        self.loaded_from = f"etcd:{chain.index}" if snap is not None else "empty"

    # --- tailing ----------------------------------------------------------------------

    async def run(self) -> None:
        """Load the state (:meth:`start`) and apply every record after it, forever (see
        the module docs). Retries while etcd is unreachable; raises only for a broken
        log (:attr:`failed`)."""
        attempt = 0
        while True:
            try:
                if not self.ready:
                    await self.start()
                async for rec in reader.follow(self.etcd, self._keys, self.chain, page_size=self.page_size):
                    attempt = 0
                    self._apply(rec.seq, rec.payload)
                    if rec.seq - self._saved_index >= self.snapshot_every:
                        await self.save()
            except FollowerBehind as exc:
                log.warning("replica behind the log (%s): loading etcd's snapshot", exc)
                self.ready = False
                self.restart_watches("the follower reloads its state from a snapshot: re-read and watch again")
            except (EtcdUnavailable, EtcdRequestFailed, EtcdCompacted) as exc:
                log.warning("replica cannot read etcd (%s); retrying", exc)
                await sleep_backoff(attempt, cap=2.0)
                attempt += 1
            except (LogInvalid, LogCorrupted) as exc:
                self.failed = exc
                self.ready = False
                log.error("replica stopped applying the log: %s", exc)
                self.restart_watches(f"the follower stopped applying the log: {exc}")
                raise

    def _apply(self, index: int, payload: bytes) -> None:
        if self.on_record is not None:
            self.on_record(index, payload, self.machine.snapshot)
        try:
            _results, raw_events = self.machine.apply_raw(payload)
        except CoordcoreError as exc:
            raise LogCorrupted(f"record {index} passed its checks but the lock machine refuses it ({exc})") from exc
        if self._sink_on:
            self._watches.offer(decode_events(raw_events))

    # --- the local snapshot -----------------------------------------------------------

    async def save(self) -> None:
        """Write the local snapshot (atomically: temp file, fsync, rename) off the loop."""
        state, chain = self.machine.snapshot(), self.chain.copy()
        await asyncio.get_running_loop().run_in_executor(None, self._write, state, chain)
        self._saved_index = chain.index

    def _write(self, state: bytes, chain: Chain) -> None:
        head = _HEAD.pack(_MAGIC, chain.index, chain.term, chain.digest, hashlib.sha256(state).digest())
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(head + state)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _load_local(self) -> tuple[LockMachine, Chain] | None:
        """The local snapshot, or None (missing or damaged: then etcd's is used)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            if len(data) < _HEAD.size:
                raise ValueError("shorter than its header")
            magic, index, term, record_digest, sha = _HEAD.unpack_from(data)
            state = data[_HEAD.size:]
            if magic != _MAGIC:
                raise ValueError(f"bad magic {magic!r}")
            if hashlib.sha256(state).digest() != sha:
                raise ValueError("checksum mismatch")
            machine = LockMachine()
            machine.restore(state)
        except (ValueError, CoordcoreError) as exc:
            log.warning("local snapshot %s unusable (%s): loading etcd's snapshot", self.path, exc)
            return None
        return machine, Chain(index, record_digest, term)

    # --- reads (LockService's names) --------------------------------------------------

    @property
    def revision(self) -> int:
        return self.machine.revision

    def state_snapshot(self) -> bytes:
        return self.machine.snapshot()

    def info(self, key: str | bytes, *, limit: int = 2**32 - 1) -> KeyInfo | None:
        return self.machine.info(key, limit=limit)

    def session_info(self, session: int, *, after: int = 0, limit: int = 2**32 - 1) -> SessionInfo | None:
        return self.machine.session(session, after=after, limit=limit)

    def leader(self, name: str | bytes) -> Leader | None:
        c = self.machine.leader(name)
        return None if c is None else Leader(c.session, c.value, c.token)

    def contenders(self, key: str | bytes) -> list[Contender]:
        return self.machine.contenders(key)

    def scan_keys(self, prefix: str | bytes = b"", cursor: int = 0, count: int = 1000) -> tuple[int, list[bytes]]:
        return self.machine.scan_keys(prefix, cursor, count)

    def keys(self, prefix: str | bytes = b"") -> list[bytes]:
        return self.machine.keys(prefix)

    def watch(self, prefix: bytes = b"", *, buffer: int = DEFAULT_WATCH_BUFFER) -> Watch:
        if self.failed is not None:
            raise ServiceClosed(f"the follower stopped applying the log: {self.failed}")
        return self._watches.add(prefix, buffer, self.machine.revision)

    def restart_watches(self, why: str) -> None:
        """End every watch (their events stop here: the state jumped, or stops)."""
        self._watches.fail_all(ServiceClosed(why))

    def _set_sink(self, sink: object) -> None:
        self._sink_on = sink is not None

