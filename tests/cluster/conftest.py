"""Fixtures for the cluster tests: one real 3-member etcd cluster on loopback per test
module (started by :class:`coordcore.cluster.testing.EtcdCluster`, stopped by PID also
when a test fails), and a key prefix of its own for every test."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from coordcore.cluster.testing import EtcdCluster, etcd_binary


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    if etcd_binary() is None:
        why = "etcd is not installed (Debian: apt-get install etcd-server; ./dev test installs it as root)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    c = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def healthy(cluster: EtcdCluster) -> Iterator[EtcdCluster]:
    """The cluster, with every member running again after the test (faults undone)."""
    yield cluster
    for i, m in enumerate(cluster.members):
        cluster.resume(i)
        if not m.running:
            cluster.restart(i)
    cluster.wait_healthy()


@pytest.fixture
def prefix() -> str:
    return f"/test/{uuid.uuid4().hex[:12]}"
