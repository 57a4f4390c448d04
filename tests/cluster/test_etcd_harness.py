"""The etcd test harness: members on their own loopback addresses, stopped by PID."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from coordcore.cluster.testing import EtcdCluster, etcd_binary


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): check its state.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


@pytest.mark.skipif(etcd_binary() is None and not os.environ.get("CI"), reason="etcd is not installed")
def test_members_start_on_their_own_addresses_and_stop_by_pid(tmp_path: Path) -> None:
    with EtcdCluster(tmp_path, size=2, hosts=["127.0.0.31", "127.0.0.32"]) as cluster:
        assert [m.host for m in cluster.members] == ["127.0.0.31", "127.0.0.32"]
        assert len({m.client_port for m in cluster.members} | {m.peer_port for m in cluster.members}) == 4
        pids = [m.proc.pid for m in cluster.members if m.proc is not None]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        cluster.pause(1)
        assert not cluster.healthy(1)
        cluster.resume(1)
        cluster.wait_healthy([1])
        cluster.kill(0)
        assert not _alive(pids[0])
        cluster.restart(0)  # same data dir, same ports
        assert cluster.healthy(0) and cluster.leader_index() in (0, 1)
        cluster.pause(0)  # stop() must also end a paused member
        pids = [m.proc.pid for m in cluster.members if m.proc is not None]
    assert not any(_alive(p) for p in pids)
    assert all(m.proc is None for m in cluster.members)
    assert (tmp_path / "m0" / "member").is_dir()
