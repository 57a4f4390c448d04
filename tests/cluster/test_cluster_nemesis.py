"""The short cluster fault run of the suite (tests/cluster/nemesis.py): every fault kind
once (coordcore leader killed, paused past its lease, cut off from etcd; etcd's leader
cut off from its peers; an etcd member killed), while client processes contend; then
the checker. The soak runs the same for minutes: bench/soak_cluster.py.

COORDCORE_TEST_SEED replays a run's schedule (process timing still varies).
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from coordcore.cluster.testing import etcd_binary
from tests.cluster.nemesis import CUTS, FAULTS, ClusterRunConfig, run
from tests.fault import netcut


@pytest.mark.slow
def test_locks_hold_under_every_cluster_fault(tmp_path: Path) -> None:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed")  # the cluster fixture fails in CI already
    faults = FAULTS
    why = netcut.unavailable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why)
        faults = tuple(f for f in FAULTS if f not in CUTS)
        print(f"\nno network cuts here ({why}): {', '.join(faults)} only")
    seed = int(os.environ.get("COORDCORE_TEST_SEED", random.randrange(2**32)))
    result = run(ClusterRunConfig(faults=faults, seed=seed, min_releases=20), tmp_path)
    text = f"COORDCORE_TEST_SEED={seed}\n{result.text()}"
    print("\n" + text)
    assert not result.harness_errors, text
    assert result.report.ok, text
    assert result.report.grants["released"] >= 20, text  # not vacuous: the run did contend
    # Every kind once, and the closing kill of the leader.
    assert result.report.faults["kill"] == 3 and result.report.faults["pause"] == 1, text
    assert result.report.faults["partition"] == (2 if faults == FAULTS else 0), text
    # Keep-alives recorded: lease floors rest on them, else every check past open + TTL is void.
    assert result.report.ops["keepalive ok"] >= 4, text
