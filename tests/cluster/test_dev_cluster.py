"""``./dev cluster`` (``python -m coordcore.cluster.up``, which ./dev execs): it comes up,
serves locks through the Client it prints, and a SIGINT stops every process it started."""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordcore import Client
from coordcore.cluster.testing import etcd_binary

ROOT = Path(__file__).resolve().parent.parent.parent


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # reaped soon: not running
    except FileNotFoundError:
        return True


def test_dev_cluster_comes_up_serves_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed")
    with open(tmp_path / "up.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "coordcore.cluster.up", "--dir", str(tmp_path / "c"),
                                 "--base-port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    try:
        out = b""
        deadline = time.monotonic() + 60
        while b"Ctrl-C" not in out:  # raw reads: a buffered reader would hide lines from select
            assert time.monotonic() < deadline and proc.poll() is None, (out, (tmp_path / "up.err").read_text())
            if select.select([proc.stdout], [], [], 0.5)[0]:
                out += os.read(proc.stdout.fileno(), 1 << 16)
        text = out.decode()
        pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
        servers = re.findall(r"server\s+(127\.0\.0\.1:\d+)", text)
        assert len(pids) == 6 and len(servers) == 3, text
        assert "(leader)" in text and "redis-cli -p" in text
        # The Client line it prints works: a lock, through whichever server is first.
        with Client(servers, connect_timeout=2.0) as client:
            with client.lock("try/it", ttl=10) as grant:
                assert grant.token > 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert b"stopped" in out + proc.stdout.read()
        still = [p for p in pids if not gone(p)]
        assert not still, f"left running: {still}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
