"""At a leader change every session gets a whole TTL from the new leader's start (as
etcd renews leases), so a failover that takes longer than what a session had left does
not expire it; and the clock never counts the time without a leader."""
from __future__ import annotations

import time
from pathlib import Path

from coordcore import Client
from coordcore.cluster.testing import EtcdCluster
from tests.cluster.ccluster import CoordCluster

TTL = 3.0


def test_a_session_outlives_a_failover_longer_than_its_remaining_ttl(cluster: EtcdCluster, tmp_path: Path) -> None:
    with CoordCluster(cluster, tmp_path) as cc:
        lead = cc.settled()
        with Client(cc.addresses, connect_timeout=2.0) as client:
            short = client.session(ttl=TTL, keepalive=False)
            short.keepalive()
            kept = time.monotonic()
            client.acquire("ttl/k", session=short)
            busy = client.session(ttl=30)  # other traffic: batch time moves on
            while time.monotonic() < kept + TTL - 0.8:
                client.release(client.acquire("ttl/busy", session=busy))
                time.sleep(0.05)
            # At most 0.8 s of its TTL is left in the last batch before the crash.
            cc.kill(lead)
            cc.leader(exclude=lead)
            # Longer than what it had left, counted from the new leader's start; within
            # one TTL of it. Without the renewal the new leader would expire it by now.
            time.sleep(1.6)
            client.release(client.acquire("ttl/busy", session=busy))
            holders = client.lock_info("ttl/k").holders
            assert [h.session for h in holders] == [short.id], holders
            short.keepalive()  # still a live session
