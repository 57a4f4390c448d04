"""coordcore._native.syncwrite: the lock log's native writer thread."""
from __future__ import annotations

import doctest
import os
import select
from pathlib import Path

import pytest

from coordcore._native import require
from coordcore.errors import BadArgument, ServiceClosed

SyncWriter = require("syncwrite").SyncWriter


def _wait(w: object) -> int | None:
    fileno = w.fileno  # type: ignore[attr-defined]
    assert select.select([fileno], [], [], 10)[0] == [fileno], "the writer never signalled"
    return w.result()  # type: ignore[attr-defined,no-any-return]


def test_docstring_examples() -> None:
    native = require("syncwrite")
    assert doctest.testmod(native).failed == 0


@pytest.mark.parametrize("sync", [True, False])
def test_jobs_are_written_whole_and_in_order(tmp_path: Path, sync: bool) -> None:
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    w = SyncWriter()
    try:
        expected = b""
        for i in range(50):
            data = bytes([i]) * (i * 997 + 1)  # up to ~50 KB, odd sizes
            w.submit(fd, data, sync)
            assert w.busy
            assert _wait(w) == len(data)
            assert not w.busy
            expected += data
        assert path.read_bytes() == expected
    finally:
        w.close()
        os.close(fd)


def test_a_failed_write_is_an_oserror_and_the_writer_goes_on(tmp_path: Path) -> None:
    readonly = os.open(tmp_path / "ro", os.O_RDONLY | os.O_CREAT, 0o644)
    good = os.open(tmp_path / "ok", os.O_WRONLY | os.O_CREAT, 0o644)
    w = SyncWriter()
    try:
        w.submit(readonly, b"x", True)
        with pytest.raises(OSError, match="Bad file descriptor"):
            _wait(w)
        w.submit(good, b"fine", True)
        assert _wait(w) == 4
        assert (tmp_path / "ok").read_bytes() == b"fine"
    finally:
        w.close()
        os.close(readonly)
        os.close(good)


def test_misuse_is_a_clear_error(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    w = SyncWriter()
    try:
        with pytest.raises(BadArgument, match="no job"):
            w.result()
        with pytest.raises(BadArgument, match="descriptor"):
            w.submit(-1, b"x", False)
        with pytest.raises(TypeError):
            w.submit(fd, "text", False)  # type: ignore[arg-type]
        w.submit(fd, b"a", False)
        with pytest.raises(BadArgument, match="in flight"):
            w.submit(fd, b"b", False)
        assert _wait(w) == 1
    finally:
        w.close()
    w.close()  # idempotent
    with pytest.raises(ServiceClosed):
        w.submit(fd, b"x", False)
    os.close(fd)


def test_close_finishes_the_job_in_flight(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    w = SyncWriter()
    data = b"z" * (4 << 20)
    w.submit(fd, data, True)
    w.close()  # waits for the write + fdatasync, then stops the thread
    os.close(fd)
    assert (tmp_path / "f").read_bytes() == data
