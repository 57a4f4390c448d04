"""Sealed journal segments archived (a directory, a command): the tree goes on from its
saved edge, and history, export and verify reach into the archives when given them."""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordcore.audit.history import export, query
from coordcore.audit.trail import move_to, run_command
from coordcore.audit.verify import verify_lines
from coordcore.errors import NotFound
from tests.audit.helpers import open_audited, some_history

KEY = Ed25519PrivateKey.generate()


def three_restarts(d: Path, archive: Callable[[Path], None], run: Callable[..., Any]) -> None:
    async def go() -> None:
        for _ in range(3):
            svc, store = await open_audited(d, KEY, every=4, segment_bytes=1, archive=archive)
            await some_history(svc)
            await svc.snapshot()  # the log drops its records: only the journal has them
            await svc.close()

    run(go())


def test_archived_segments_stay_verifiable(tmp_path: Path, run: Callable[..., Any]) -> None:
    archive = tmp_path / "archive"
    three_restarts(tmp_path, move_to(archive), run)
    audit = tmp_path / "audit"
    local = sorted(p.name for p in audit.iterdir())
    assert "journal.log" in local and "tree.json" in local
    assert not [n for n in local if n.startswith("journal-")]  # all moved away
    assert len(list(archive.glob("journal-*.log"))) >= 6
    with pytest.raises(NotFound, match="give the archive directory"):
        list(export(audit))
    lines = list(export(audit, archives=[archive]))
    report = verify_lines(lines, KEY.public_key())
    assert report.ok and report.replayed and report.checkpoints >= 6, report.problems
    events, _ = query(audit, b"billing/", archives=[archive], limit=10_000)
    assert [e.user for e in events if e.event == "granted"] == ["alice", "bob"] * 3
    # Every checkpoint proves into the last: the chain across segments is one tree.
    sizes = [json.loads(line)["size"] for line in lines if '"type":"checkpoint"' in line]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_an_archive_command_takes_each_segment(tmp_path: Path, run: Callable[..., Any]) -> None:
    kept = tmp_path / "kept"
    kept.mkdir()
    script = 'cp -- "$0" ' + shlex.quote(str(kept))
    command = "sh -c " + shlex.quote(script)
    three_restarts(tmp_path, run_command(command), run)
    assert not list((tmp_path / "audit").glob("journal-*.log"))
    assert verify_lines(export(tmp_path / "audit", archives=[kept]), KEY.public_key()).ok


def test_a_failing_archive_keeps_the_segments(tmp_path: Path, run: Callable[..., Any]) -> None:
    three_restarts(tmp_path, run_command("false"), run)
    segments = list((tmp_path / "audit").glob("journal-*.log"))
    assert len(segments) >= 6  # nothing lost: the command failed, so they stayed
    assert verify_lines(export(tmp_path / "audit"), KEY.public_key()).ok


def test_a_crash_in_the_middle_of_sealing_recovers(tmp_path: Path, run: Callable[..., Any]) -> None:
    async def go(rename: bool) -> int:
        svc, store = await open_audited(tmp_path, KEY, every=4)
        await some_history(svc)
        await svc.close()
        if rename:  # renamed into a segment; the new journal and tree.json never made
            (tmp_path / "audit" / "journal.log").rename(tmp_path / "audit" / "journal-00000000000000000001.log")
        return store.trail.tree.size

    size = run(go(True))
    grown = run(go(False))
    assert grown > size
    assert verify_lines(export(tmp_path / "audit"), KEY.public_key()).ok
