"""The trail beside a file log: what it keeps, what survives a restart, what refuses."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import shutil

from coordcore.audit.checkpoint import key_id, load_private_key, read_checkpoints
from coordcore.audit.history import export
from coordcore.audit.journal import JOURNAL, JournalReader
from coordcore.audit.merkle import MerkleTree, leaf_hash, verify_consistency
from coordcore.errors import LogCorrupted
from coordcore.audit.trail import AuditedStore, attach
from coordcore.audit.verify import verify_lines
from coordcore.locks.service import LockService
from coordcore.locks.store import FileStore
from tests.audit.helpers import open_audited, some_history

DATA = Path(__file__).parent / "data"


def test_records_users_and_checkpoints_every_n(tmp_path: Path, run: Callable[..., Any]) -> None:
    key = Ed25519PrivateKey.generate()

    async def go() -> None:
        svc, store = await open_audited(tmp_path, key, every=3)
        await some_history(svc)
        await svc.close()

    run(go())
    entries = list(JournalReader(tmp_path / "audit" / JOURNAL).entries())
    assert [e.index for e in entries] == list(range(1, len(entries) + 1))
    assert [name for e in entries for _, name in e.users] == ["alice", "bob"]
    cps = [json.loads(line) for line in (tmp_path / "audit" / "checkpoints.jsonl").read_text().splitlines()]
    assert len(cps) >= 2 and [c["size"] for c in cps] == sorted(c["size"] for c in cps)
    assert all(c["size"] >= 3 and c["state"] != "-" for c in cps)


def test_restart_extends_the_tree_and_keeps_checkpoints_consistent(tmp_path: Path, run: Callable[..., Any]) -> None:
    key = Ed25519PrivateKey.generate()

    async def go() -> None:
        svc, store = await open_audited(tmp_path, key)
        await some_history(svc)
        first = await store.request_checkpoint(svc)
        await svc.snapshot()  # the log drops its records: the journal keeps them
        await svc.close()
        svc, store = await open_audited(tmp_path, key)
        await some_history(svc)
        second = await store.request_checkpoint(svc)
        await svc.close()
        tree = MerkleTree()  # proofs come from the journal, offline
        for e in JournalReader(tmp_path / "audit" / JOURNAL).entries():
            tree.append(leaf_hash(e.leaf))
        assert second.size > first.size and tree.root(second.size) == second.root
        assert verify_consistency(first.size, second.size, first.root, second.root,
                                  tree.consistency_proof(first.size, second.size))

    run(go())


def test_refuses_a_journal_that_no_longer_extends_the_checkpoint(tmp_path: Path, run: Callable[..., Any]) -> None:
    key = Ed25519PrivateKey.generate()

    async def go() -> None:
        svc, store = await open_audited(tmp_path, key)
        await some_history(svc)
        await store.request_checkpoint(svc)
        await svc.close()

    run(go())
    path = tmp_path / "audit" / JOURNAL
    data = bytearray(path.read_bytes())
    data[-3] ^= 1  # inside the last entry: its checksum fails (a torn tail), the tree shrinks
    path.write_bytes(bytes(data))
    with pytest.raises(LogCorrupted, match="does not extend the last signed checkpoint"):
        run(open_audited(tmp_path, key))


def test_refuses_another_key(tmp_path: Path, run: Callable[..., Any]) -> None:
    async def go(key: Ed25519PrivateKey) -> None:
        svc, store = await open_audited(tmp_path, key)
        await store.request_checkpoint(svc)
        await svc.close()

    run(go(Ed25519PrivateKey.generate()))
    with pytest.raises(LogCorrupted, match="signed by key"):
        run(go(Ed25519PrivateKey.generate()))


def test_a_rotated_key_needs_the_old_one_trusted(tmp_path: Path, run: Callable[..., Any]) -> None:
    old, new, third = (Ed25519PrivateKey.generate() for _ in range(3))

    async def go(key: Ed25519PrivateKey, trusted: list[Any]) -> int:
        inner = await FileStore.open(tmp_path / "locks", durability="unsafe-no-fsync")
        store = await AuditedStore.open(inner, tmp_path / "audit", key=key, trusted=trusted)
        async with LockService.open_store(store) as svc:
            attach(svc, store)
            await some_history(svc)
            return (await store.request_checkpoint(svc)).size

    run(go(old, []))
    with pytest.raises(LogCorrupted, match=f"signed by key {key_id(old.public_key())}, which is not a trusted"):
        run(go(new, [third.public_key()]))
    size = run(go(new, [old.public_key()]))
    cps = read_checkpoints(tmp_path / "audit")
    assert [c.key_id for c in cps] == [key_id(old.public_key()), key_id(new.public_key())]
    assert cps[-1].size == size
    assert verify_lines(export(tmp_path / "audit"), [new.public_key(), old.public_key()]).ok
    # The new chain's last checkpoint is the new key's: the old key alone no longer starts it.
    with pytest.raises(LogCorrupted, match=f"signed by key {key_id(new.public_key())}"):
        run(go(old, []))


def test_a_data_dir_of_the_v1_format_starts_and_extends(tmp_path: Path, run: Callable[..., Any]) -> None:
    """A data dir written before checkpoints named their key id (by the code of that time)."""
    shutil.copytree(DATA / "v1-data", tmp_path, dirs_exist_ok=True)
    key = load_private_key(DATA / "v1.key")

    async def go() -> None:
        svc, store = await open_audited(tmp_path, key)
        await some_history(svc)
        await store.request_checkpoint(svc)
        await svc.close()

    run(go())
    cps = read_checkpoints(tmp_path / "audit")
    assert [c.key_id for c in cps] == ["", "", key_id(key.public_key())]
    report = verify_lines(export(tmp_path / "audit"), key.public_key())
    assert report.ok and report.replayed and report.checkpoints == 3, report.problems


def test_a_lost_journal_tail_is_taken_from_the_log(tmp_path: Path, run: Callable[..., Any]) -> None:
    async def go() -> int:
        svc, store = await open_audited(tmp_path, None)
        await some_history(svc)
        await svc.close()
        return store.trail.tree.size

    size = run(go())
    path = tmp_path / "audit" / JOURNAL
    offsets: list[int] = []
    list(JournalReader(path).entries(offsets))
    with open(path, "r+b") as f:
        f.truncate(offsets[-2])  # a power cut took the last two entries

    async def again() -> tuple[int, int]:
        svc, store = await open_audited(tmp_path, None)
        await svc.close()
        return store.trail.tree.size, store.trail.recovered_from_log

    grown, recovered = run(again())
    assert recovered == 2 and grown >= size


def test_a_journal_that_differs_from_the_log_refuses(tmp_path: Path, run: Callable[..., Any]) -> None:
    from coordcore.audit.journal import Journal
    from coordcore.audit.trail import _leaf_parts

    async def go() -> None:
        svc, _ = await open_audited(tmp_path, None)
        await some_history(svc)
        await svc.close()

    run(go())
    audit = tmp_path / "audit"
    entries = list(JournalReader(audit / JOURNAL).entries())
    (audit / JOURNAL).unlink()
    journal = Journal.create(audit, 1, fsync=False)
    for e in entries:  # rewritten whole, checksums and all, with record 3's time moved
        record = e.record[:8] + (int.from_bytes(e.record[8:16], "little") + 1).to_bytes(8, "little") + e.record[16:] \
            if e.index == 3 else e.record
        journal.append(e.index, _leaf_parts(record, e.users))
    journal.close()
    with pytest.raises(LogCorrupted, match="record 3 differs from the audit journal's copy"):
        run(open_audited(tmp_path, None))


def test_journal_damage_before_its_end_refuses_and_changes_nothing(tmp_path: Path, run: Callable[..., Any]) -> None:
    async def go() -> None:
        svc, _ = await open_audited(tmp_path, None)
        await some_history(svc)
        await svc.close()

    run(go())
    path = tmp_path / "audit" / JOURNAL
    offsets: list[int] = []
    n = len(list(JournalReader(path).entries(offsets)))
    good = path.read_bytes()
    # Zeros or half an entry at the end are a torn tail: the entries before it stay.
    for tail in (b"\0" * 40, good[offsets[2]:offsets[3]][:-5]):
        path.write_bytes(good + tail)
        assert len(list(JournalReader(path).entries())) == n
    bad = bytearray(good)
    bad[offsets[2] + 20] ^= 0x40
    path.write_bytes(bytes(bad))
    with pytest.raises(LogCorrupted, match=f"checksum mismatch in the entry at byte {offsets[2]}"):
        run(open_audited(tmp_path, None))
    assert path.read_bytes() == bytes(bad)  # refused before anything was cut


def test_stored_records_are_found_from_the_sparse_index(tmp_path: Path, rng: Any) -> None:
    from coordcore.audit.trail import AuditTrail

    trail = AuditTrail.load(tmp_path, fsync=False)
    trail.start(5, None)
    records = {i: bytes([i % 251]) * rng.randrange(1, 300) for i in range(5, 2600)}
    for i, rec in records.items():
        trail.add(i, rec, ((0, "u"),) if i % 7 == 0 else ())
    trail.close()
    again = AuditTrail.load(tmp_path, fsync=False)
    picks = [*rng.sample(sorted(records), 50), *range(1020, 1040), 5, 2599]
    assert all(again.stored_record(i) == records[i] for i in picks)
    again.close()


def test_a_sync_in_a_thread_never_hides_a_record_the_loop_appended_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AuditedStore.write_snapshot fsyncs the journal in a thread while the loop may
    append: a record appended during that fsync must still be synced by the next one
    (the snapshot after it drops the record from the log, so the journal is its only copy)."""
    from coordcore.audit import journal as journal_mod
    from coordcore.audit.journal import Journal
    from coordcore.audit.trail import AuditTrail

    trail = AuditTrail.load(tmp_path / "audit", key=Ed25519PrivateKey.generate(), every=1_000)
    journal = trail.journal = Journal.create(tmp_path / "audit", 1, True)  # (made at the first record)
    journal.append(1, [b"first"])
    synced: list[int] = []
    real = journal_mod.os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(journal.next_index)
        if len(synced) == 1:
            journal.append(2, [b"appended by the loop during the thread's fsync"])
        real(fd)

    monkeypatch.setattr(journal_mod.os, "fdatasync", fdatasync)
    trail.sync()  # as write_snapshot's thread does
    journal.sync()  # the next durable point on the loop
    assert synced == [2, 3], "the record appended during the first fsync was never synced"
    trail.close()


def test_the_user_less_fast_path_writes_and_hashes_the_same_bytes(tmp_path: Path) -> None:
    from coordcore.audit.journal import Journal
    from coordcore.audit.trail import AuditTrail, _leaf_hash, _leaf_parts

    records = [b"", b"x", bytes(range(256)) * 5]
    slow, fast = tmp_path / "slow", tmp_path / "fast"
    slow.mkdir()
    journal = Journal.create(slow, 7, fsync=False)
    for i, r in enumerate(records):
        journal.append(7 + i, _leaf_parts(r, ()))
    journal.close()
    fast.mkdir()
    trail = AuditTrail(fast, None, 1000, fsync=False)
    trail.start(7, None)
    for i, r in enumerate(records):
        trail.add(7 + i, r, ())
    trail.close()
    assert (fast / JOURNAL).read_bytes() == (slow / JOURNAL).read_bytes()
    tree = MerkleTree()
    for r in records:
        tree.append(_leaf_hash(_leaf_parts(r, ())))
    assert trail.tree.root() == tree.root()


def test_a_record_the_trail_cannot_take_is_not_acknowledged(tmp_path: Path, run: Callable[..., Any]) -> None:
    async def go() -> None:
        svc, store = await open_audited(tmp_path, None)
        await svc.open_session(ttl=30, keepalive=False)
        assert store._append_then is not None  # the file store's path, without a second future
        size = store.trail.tree.size

        def broken(*_: object) -> None:
            raise OSError("audit disk full")

        store.trail.add = broken  # type: ignore[method-assign]
        with pytest.raises(Exception):
            await svc.open_session(ttl=30, keepalive=False)
        assert store.trail.tree.size == size
        try:
            await svc.close()
        except Exception:
            pass

    run(go())
