"""Issue 9, item 6: damage to the lock log is not a torn tail, and tokens are never issued
twice: refuse and name the damage, repair explicitly, keep a revision high-water mark,
refuse a lost log. Through LockService (in-process), `coordcore locks repair` and a Server."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coordcore.errors import LogCorrupted
from coordcore.ids import Snowflake
from coordcore.locks import recovery
from coordcore.locks.log import BatchLog, LogDamaged
from coordcore.locks.recovery import MARK_NAME, LockLogMissing, LogBehindMark, RevisionMark
from coordcore.locks.service import LockService, ManualClock
from coordcore.server import Server, ServerConfig
from coordcore.server.log import configure

Run = Callable[..., Any]


def open_svc(path: Path, **kw: Any) -> Any:
    return LockService.open(path, clock=ManualClock(), tick_interval=0, **kw)


async def busy_history(path: Path, rounds: int = 60, prefix: str = "jobs") -> tuple[list[int], int]:
    """Acquire and release locks (some kept held): the tokens issued and the revision."""
    tokens: list[int] = []
    async with open_svc(path) as svc:
        s = await svc.open_session(ttl=3600, keepalive=False)
        for i in range(rounds):
            g = await svc.acquire(f"{prefix}/{i}", s)
            tokens.append(g.token)
            if i % 3:
                await svc.release(g)
        return tokens, svc.revision


def active_segment(path: Path) -> Path:
    return sorted(path.glob("segment-*.log"))[-1]


def record_starts(seg: Path) -> list[int]:
    data = seg.read_bytes()
    offsets, off = [], 32
    while off < len(data):
        offsets.append(off)
        off += 8 + int.from_bytes(data[off:off + 4], "little")
    return offsets


def tree(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def coordcore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordcore.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_flipped_byte_in_the_last_record_refuses_naming_it(run: Run, tmp_path: Path) -> None:
    """Before: cut off as a torn tail, the last batch's grant forgotten."""
    run(busy_history(tmp_path, 10))
    seg = active_segment(tmp_path)
    start = record_starts(seg)[-1]
    data = bytearray(seg.read_bytes())
    mid = (start + len(data)) // 2
    data[mid] ^= 0x01
    seg.write_bytes(data)
    with pytest.raises(LogDamaged) as info:
        run(open_svc(tmp_path))
    d = info.value.damage
    n_records = len(record_starts(seg))
    assert (d.file, d.offset, d.index, d.records) == (seg.name, start, n_records, 1)
    msg = str(info.value)
    assert seg.name in msg and f"byte {start}" in msg and f"record {n_records}" in msg
    assert "checksum mismatch" in msg and "not a torn tail" in msg and "coordcore locks repair" in msg
    assert seg.read_bytes() == bytes(data)


def test_zeroed_last_4k_refuses(run: Run, tmp_path: Path) -> None:
    """The issue's case (before: revision 62 -> 4, held locks gone, token 62 issued twice)."""
    tokens, revision = run(busy_history(tmp_path, 80))
    seg = active_segment(tmp_path)
    size = seg.stat().st_size
    assert size > 4096 + 32
    with open(seg, "r+b") as f:
        f.seek(size - 4096)
        f.write(bytes(4096))
    with pytest.raises(LogCorrupted, match="not a torn tail") as info:
        run(open_svc(tmp_path))
    assert isinstance(info.value, LogDamaged) and info.value.damage.bytes <= 4096 + 200


def test_truncated_mid_record_is_cut_automatically(run: Run, tmp_path: Path) -> None:
    """A crash mid-append leaves a short file: that batch was never acknowledged."""
    tokens, revision = run(busy_history(tmp_path, 10))
    seg = active_segment(tmp_path)
    start = record_starts(seg)[-1]
    os.truncate(seg, start + 11)

    async def main() -> tuple[Any, int, int]:
        async with open_svc(tmp_path) as svc:
            s = await svc.open_session(ttl=60, keepalive=False)
            g = await svc.acquire("after", s)
            return svc.torn_tail, svc.revision, g.token

    torn, rev, token = run(main())
    assert torn is not None and (torn.segment, torn.offset, torn.bytes_cut) == (seg.name, start, 11)
    assert rev < revision + 10 and token > 0


def test_damaged_middle_record_refuses(run: Run, tmp_path: Path) -> None:
    run(busy_history(tmp_path, 10))
    seg = active_segment(tmp_path)
    starts = record_starts(seg)
    data = bytearray(seg.read_bytes())
    data[starts[3] + 12] ^= 0xFF
    seg.write_bytes(data)
    with pytest.raises(LogDamaged, match="not a torn tail") as info:
        run(open_svc(tmp_path))
    d = info.value.damage
    assert (d.index, d.offset, d.last_index) == (4, starts[3], len(starts))
    assert d.records == len(starts) - 3  # the damaged one and every record after it


def damage_last_4k(path: Path) -> None:
    seg = active_segment(path)
    with open(seg, "r+b") as f:
        f.seek(seg.stat().st_size - 4096)
        f.write(bytes(4096))


def test_repair_dry_run_reports_and_changes_nothing(run: Run, tmp_path: Path) -> None:
    run(busy_history(tmp_path, 80))
    damage_last_4k(tmp_path)
    before = tree(tmp_path)
    result = coordcore("locks", "repair", str(tmp_path))
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "damage:" in out and "would drop" in out and "would truncate" in out and "bytes" in out
    assert "recognisable record" in out and "dry run: nothing changed" in out
    assert f"would raise the revision to" in out
    assert tree(tmp_path) == before
    with pytest.raises(LogDamaged):
        run(open_svc(tmp_path))


def test_repair_apply_then_tokens_stay_above_every_old_one(run: Run, tmp_path: Path) -> None:
    tokens, revision = run(busy_history(tmp_path, 80))
    mark = RevisionMark.read(tmp_path / MARK_NAME)
    assert mark is not None and mark.reserved >= max(tokens)
    damage_last_4k(tmp_path)
    seg = active_segment(tmp_path)
    damaged_bytes = seg.read_bytes()
    result = coordcore("locks", "repair", str(tmp_path), "--apply")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "repaired" in result.stdout and f"{seg.name}.damaged" in result.stdout
    assert (tmp_path / f"{seg.name}.damaged").read_bytes() == damaged_bytes
    assert coordcore("locks", "repair", str(tmp_path)).returncode == 1  # the raise is still pending

    async def main() -> tuple[int, int]:
        async with open_svc(tmp_path) as svc:
            rev = svc.revision
            s = await svc.open_session(ttl=60, keepalive=False)
            return rev, (await svc.acquire("fresh/0", s)).token

    rev, token = run(main())
    assert rev >= mark.reserved and token > max(tokens)
    # The raise is in a snapshot, the pending raise is cleared: reopening is plain replay.
    after = RevisionMark.read(tmp_path / MARK_NAME)
    assert after is not None and after.raise_to == 0 and after.reserved >= token

    async def again() -> int:
        async with open_svc(tmp_path) as svc:
            s = await svc.open_session(ttl=60, keepalive=False)
            return (await svc.acquire("fresh/1", s)).token

    assert run(again()) > token
    assert coordcore("locks", "repair", str(tmp_path)).returncode == 0


def test_deleted_log_refuses_and_the_flag_starts_above_the_mark(run: Run, tmp_path: Path) -> None:
    tokens, _ = run(busy_history(tmp_path, 20))
    mark = RevisionMark.read(tmp_path / MARK_NAME)
    assert mark is not None
    for p in [*tmp_path.glob("segment-*"), *tmp_path.glob("snapshot-*")]:
        p.unlink()
    with pytest.raises(LockLogMissing, match="allow_empty_log=True") as info:
        run(open_svc(tmp_path))
    assert "revision mark" in str(info.value) and not list(tmp_path.glob("segment-*"))

    async def main() -> tuple[int, int]:
        async with open_svc(tmp_path, allow_empty_log=True) as svc:
            s = await svc.open_session(ttl=60, keepalive=False)
            return svc.revision, (await svc.acquire("jobs/0", s)).token

    rev, token = run(main())
    assert rev > mark.reserved and token > max(tokens)
    # It is a log again: the next open needs no flag.
    run(again_opens(tmp_path))


async def again_opens(path: Path) -> None:
    async with open_svc(path):
        pass


def test_log_behind_the_mark_refuses_until_repaired(run: Run, tmp_path: Path) -> None:
    """Segments deleted by hand, or an older copy restored: the log is intact but short."""
    old = tmp_path / "old"
    run(busy_history(tmp_path / "live", 5))
    shutil.copytree(tmp_path / "live", old)
    tokens, _ = run(busy_history(tmp_path / "live", 30, "more"))
    shutil.copy(tmp_path / "live" / MARK_NAME, old / MARK_NAME)
    # The mark was written when the revision first passed what was reserved; reserve
    # again at the end so that it names the last batch (as after a million revisions).
    state = RevisionMark.read(old / MARK_NAME)
    assert state is not None
    RevisionMark(old).write(recovery.MarkState(state.reserved, max(tokens), 30))
    with pytest.raises(LogBehindMark, match="records are missing"):
        run(open_svc(old))
    assert coordcore("locks", "repair", str(old), "--apply").returncode == 0

    async def main() -> int:
        async with open_svc(old) as svc:
            s = await svc.open_session(ttl=60, keepalive=False)
            return (await svc.acquire("x", s)).token

    assert run(main()) > max(tokens)


def test_log_without_a_mark_opens_and_gets_one(run: Run, tmp_path: Path) -> None:
    tokens, revision = run(busy_history(tmp_path, 5))
    (tmp_path / MARK_NAME).unlink()  # as a log written before marks existed

    async def main() -> int:
        async with open_svc(tmp_path) as svc:
            return svc.revision

    assert run(main()) == revision
    mark = RevisionMark.read(tmp_path / MARK_NAME)
    assert mark is not None and mark.reserved == revision + recovery.RESERVE


def test_mark_is_written_before_a_token_above_it_is_answered(run: Run, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery, "RESERVE", 7)
    writes: list[int] = []
    real = RevisionMark.write

    def spy(self: RevisionMark, state: recovery.MarkState) -> None:
        writes.append(state.reserved)
        real(self, state)

    monkeypatch.setattr(RevisionMark, "write", spy)

    async def main() -> None:
        async with open_svc(tmp_path) as svc:
            s = await svc.open_session(ttl=60, keepalive=False)
            for i in range(40):
                g = await svc.acquire(f"k{i}", s)
                mark = RevisionMark.read(tmp_path / MARK_NAME)
                assert mark is not None and mark.reserved >= g.token >= svc.revision - 1
                assert svc.revision <= mark.reserved

    run(main())
    assert len(writes) >= 5 and writes == sorted(writes)


def test_damaged_mark_refuses_clearly(run: Run, tmp_path: Path) -> None:
    run(busy_history(tmp_path, 3))
    path = tmp_path / MARK_NAME
    path.write_bytes(path.read_bytes().replace(b"reserved 1", b"reserved 9"))
    with pytest.raises(LogCorrupted, match="revision mark .* is damaged"):
        run(open_svc(tmp_path))


def server_config(data_dir: Path, **kw: Any) -> ServerConfig:
    return ServerConfig(port=0, data_dir=data_dir, worker_id=3, fsync=False, **kw)


async def start_server(cfg: ServerConfig) -> Server:
    server = Server(cfg, log=configure("kv", "warning", name="coordcore.server.test"))
    try:
        await server.start()
    except BaseException:
        await server.close()
        raise
    return server


def test_server_refuses_a_data_dir_with_id_state_but_no_lock_log(run: Run, tmp_path: Path) -> None:
    (tmp_path / "ids").mkdir()
    with Snowflake(3, datacenter_id=0, state_file=tmp_path / "ids" / "worker-0-3.state") as gen:
        gen.next_id()  # this data dir has served IDs; its lock log is gone
    with pytest.raises(LockLogMissing, match="--allow-empty-lock-log") as info:
        run(start_server(server_config(tmp_path)))
    assert "ID state" in str(info.value)

    async def flagged() -> int:
        server = await start_server(server_config(tmp_path, allow_empty_lock_log=True))
        try:
            rev: int = server.locks.revision
            return rev
        finally:
            await server.close()

    assert run(flagged()) == 0  # no mark to start above: a warning says tokens may repeat
    run(plain_start(tmp_path))  # and from then on it has a log


async def plain_start(data_dir: Path) -> None:
    server = await start_server(server_config(data_dir))
    await server.close()


def test_brand_new_data_dir_starts(run: Run, tmp_path: Path) -> None:
    run(plain_start(tmp_path / "new"))
    run(plain_start(tmp_path / "new"))


def test_a_crash_during_repair_never_leaves_a_cut_log_without_its_raise(run: Run, tmp_path: Path,
                                                                         monkeypatch: Any) -> None:
    """The raise goes to the mark before any record is cut: a repair that dies between the
    two leaves the damage (refused again) and the raise, never a clean short log without
    it (whose dropped records' tokens would be issued again)."""
    from coordcore.locks import log as _log
    from coordcore.locks import recovery

    tokens, _ = run(busy_history(tmp_path, 40))
    damage_last_4k(tmp_path)
    real = _log.repair

    def dies_when_cutting(path: Any, *, apply: bool = False, durability: Any = "fsync") -> Any:
        if apply:
            raise KeyboardInterrupt("the process died before cutting")
        return real(path, apply=apply, durability=durability)

    monkeypatch.setattr(_log, "repair", dies_when_cutting)
    with pytest.raises(KeyboardInterrupt):
        recovery.repair(tmp_path, apply=True)
    monkeypatch.setattr(_log, "repair", real)
    pending = RevisionMark.read(tmp_path / MARK_NAME)
    assert pending is not None and pending.raise_to >= max(tokens)
    recovery.repair(tmp_path, apply=True)  # the operator runs it again

    async def main() -> int:
        async with open_svc(tmp_path) as svc:
            s = await svc.open_session(ttl=60, keepalive=False)
            return (await svc.acquire("fresh", s)).token

    assert run(main()) > max(tokens)
