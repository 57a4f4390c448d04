"""The audit trail in ``coordcore serve --audit-key KEY``: the audited service and AUDIT.*.

::

    AUDIT.CHECKPOINT                       -> map (size, root, revision, time_ms): signed now
    AUDIT.HISTORY prefix from_ms to_ms [AFTER revision] [COUNT n]
                                           -> [next AFTER (0: no more), [event maps]]

The journal lives in ``<data_dir>/audit``; with ``--audit-segment-bytes`` it is sealed
into segments that ``--audit-archive-dir`` or ``--audit-archive-command`` take away.
AUDIT.HISTORY replays the journal (and a directory archive) in a worker thread, from the
last stop of the store's history index before its range (see
:mod:`coordcore.audit.history`); it answers at most ``COUNT``
(at most the server's max_reply_items) events a page. A limited ACL user is refused
both (the ACL's command table does not list them: only unlimited users run them).
"""
from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Literal

from coordcore.audit.checkpoint import load_private_key, load_public_key
from coordcore.audit.history import AuditEvent, HistoryIndex, query
from coordcore.audit.trail import DEFAULT_EVERY, AuditedStore, attach, move_to, run_command
from coordcore.errors import BadArgument, Unavailable
from coordcore.locks.service import LockService
from coordcore.locks.store import FileStore
from coordcore.server import resp
from coordcore.server.commands import parse_int, parse_options, require_args
from coordcore.server.core import Client

__all__ = ["archiver", "audit_store", "find_store", "cmd_checkpoint", "cmd_history", "open_audited_service", "register"]

_U63 = 2**63 - 1
_stores: weakref.WeakKeyDictionary[LockService, AuditedStore] = weakref.WeakKeyDictionary()
#: Where a store's archived segments can be read back (AUDIT.HISTORY reaches into them).
_archives: weakref.WeakKeyDictionary[AuditedStore, list[Path]] = weakref.WeakKeyDictionary()
#: Each store's history index (where AUDIT.HISTORY's replays can start).
_indexes: weakref.WeakKeyDictionary[AuditedStore, HistoryIndex] = weakref.WeakKeyDictionary()


async def open_audited_service(path: Path, audit_dir: Path, key_path: Path, *,
                               durability: Literal["fsync", "unsafe-no-fsync"], allow_empty_log: bool,
                               waiter_grace: float, every: int = DEFAULT_EVERY, segment_bytes: int = 0,
                               archive_dir: Path | None = None,
                               archive_command: str | None = None,
                               trusted: Sequence[Path] = ()) -> LockService:
    """The lock service on ``path``'s file log, every record audited in ``audit_dir``;
    journal segments sealed past ``segment_bytes`` go to ``archive_dir`` or
    ``archive_command``; checkpoints of the older public keys in ``trusted`` are accepted."""
    key = load_private_key(key_path)  # a bad key refuses before anything is opened
    olds = [load_public_key(p) for p in trusted]
    archive = archiver(archive_dir, archive_command)
    inner = await FileStore.open(path, durability=durability, allow_empty_log=allow_empty_log)
    store = await AuditedStore.open(inner, audit_dir, key=key, every=every, segment_bytes=segment_bytes,
                                    archive=archive, trusted=olds)
    svc = await LockService.open_store(store, count_downtime=False, waiter_grace=waiter_grace)
    attach(svc, store)
    register(svc, store, [archive_dir] if archive_dir is not None else [])
    return svc


def archiver(archive_dir: Path | None, archive_command: str | None) -> Callable[[Path], None] | None:
    """What takes sealed journal segments away: a directory, a command, or nothing."""
    if archive_dir is not None and archive_command is not None:
        raise BadArgument("an audit archive is a directory or a command, not both")
    return move_to(archive_dir) if archive_dir is not None else \
        run_command(archive_command) if archive_command is not None else None


def register(svc: LockService, store: AuditedStore, archives: list[Path]) -> None:
    """Serve AUDIT.* for ``svc`` from ``store`` (its archived segments in ``archives``)."""
    _archives[store] = archives
    _indexes[store] = HistoryIndex()
    _stores[svc] = store


def find_store(svc: LockService) -> AuditedStore | None:
    """The audited store ``svc`` runs on, or None (no --audit-key)."""
    return _stores.get(svc)


def audit_store(svc: LockService) -> AuditedStore:
    store = _stores.get(svc)
    if store is None:
        raise Unavailable("this server keeps no audit trail (start it with --audit-key)")
    return store


def cmd_checkpoint(svc: LockService, conn: Client, req: list[bytes]) -> Awaitable[bytes]:
    require_args(req, 0, 0)
    store = audit_store(svc)

    async def run() -> bytes:
        cp = await store.request_checkpoint(svc)
        return resp.encode_map([(b"size", resp.encode_int(cp.size)),
                                (b"root", resp.encode_bulk(cp.root.hex().encode())),
                                (b"revision", resp.encode_int(cp.revision)),
                                (b"time_ms", resp.encode_int(cp.time_ms))], conn.resp3)

    return run()


def cmd_history(svc: LockService, conn: Client, req: list[bytes], max_items: int) -> Awaitable[bytes]:
    require_args(req, 3)
    store = audit_store(svc)
    prefix = req[1]
    from_ms = parse_int(req[2], "from_ms", 0, _U63)
    to_ms = parse_int(req[3], "to_ms", 0, _U63)
    o = parse_options(req[4:], {b"AFTER": (0, _U63), b"COUNT": (1, max_items)})
    after, count = o.get(b"AFTER", 0), o.get(b"COUNT", min(100, max_items))
    directory = store.trail.directory
    archives = _archives.get(store, [])
    index = _indexes.setdefault(store, HistoryIndex())

    async def run() -> bytes:
        loop = asyncio.get_running_loop()
        events, nxt = await loop.run_in_executor(
            None, lambda: query(directory, prefix, from_ms, to_ms, after=after, limit=count, archives=archives,
                                index=index))
        return resp.encode_array([resp.encode_int(nxt),
                                  resp.encode_array([_event(ev, conn.resp3) for ev in events])])

    return run()


def _event(ev: AuditEvent, resp3: bool) -> bytes:
    i, b = resp.encode_int, resp.encode_bulk
    return resp.encode_map([(b"index", i(ev.index)), (b"time_ms", i(ev.time_ms)), (b"revision", i(ev.revision)),
                            (b"event", b(ev.event.encode())), (b"session", i(ev.session)),
                            (b"user", b(ev.user.encode())), (b"key", b(ev.key)), (b"mode", b(ev.mode.encode())),
                            (b"ticket", i(ev.ticket)), (b"token", i(ev.token))], resp3)
