"""Quota pools in cluster mode, on a real 3-member etcd: a pool defined on the leader,
leases taken by clients, then ``kill -9`` of the leader. After the failover the pool's
definition and leases are the new leader's, no pool is over capacity nor a tenant over
its maximum, tokens keep rising, a waiter parked on the dead leader gets its lease, and
a follower's ``READONLY`` ``POOL.INFO`` agrees with the leader's."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from coordcore import Client
from coordcore.client._common import CapacityLease
from coordcore.cluster.testing import EtcdCluster
from tests.cluster.ccluster import CoordCluster, command
from tests.cluster.test_cluster_followers import wait_agree


def _info(port: int, readonly: bool) -> dict[bytes, Any]:
    reply = command(port, "POOL.INFO", "gpu", readonly=readonly)
    assert isinstance(reply, list), reply
    m = dict(zip(reply[::2], reply[1::2]))
    m[b"tenants"] = [dict(zip(t[::2], t[1::2])) for t in m[b"tenants"]]
    m[b"leases"] = [dict(zip(x[::2], x[1::2])) for x in m[b"leases"]]
    return m


def _sound(info: dict[str, Any]) -> None:
    assert info["held"] <= info["capacity"], info
    assert info["held"] == sum(t["held"] for t in info["tenants"]) == sum(x["units"] for x in info["leases"])
    for t in info["tenants"]:
        assert t["held"] <= t["max"], t


def test_pools_survive_a_leader_kill9(cluster: EtcdCluster, tmp_path: Path) -> None:
    with CoordCluster(cluster, tmp_path, 2) as cc:
        lead = cc.settled()
        follow = 1 - lead
        lport = cc.servers[lead].port
        for args in (("POOL.DEFINE", "gpu", 6, "GRACE", 2000), ("POOL.TENANT", "gpu", "a", "WEIGHT", 1),
                     ("POOL.TENANT", "gpu", "b", "WEIGHT", 2, "MAX", 4), ("POOL.TENANT", "gpu", "c", "MIN", 1)):
            assert command(lport, *args, readonly=False) == b"OK", args
        client = Client([cc.addresses[follow], cc.addresses[lead]], connect_timeout=2.0)
        s = client.session(ttl=10)
        leases = [client.acquire_capacity("gpu", 2, tenant="a", session=s),
                  client.acquire_capacity("gpu", 3, tenant="b", session=s)]
        before = client.pool_info("gpu")
        assert before is not None and before["held"] == 5
        # A waiter parked on the leader when it dies: 2 more for "a" do not fit.
        waiter = client.session(ttl=10)
        got: list[CapacityLease] = []
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                got.append(client.acquire_capacity("gpu", 2, tenant="a", session=waiter, timeout=40))
            except BaseException as exc:  # reported below
                errors.append(exc)

        t = threading.Thread(target=wait)
        t.start()
        deadline = time.monotonic() + 10
        while client.pool_info("gpu")["waiting"] != 1:  # type: ignore[index]
            assert time.monotonic() < deadline, "the waiter never queued"
            time.sleep(0.02)

        cc.kill(lead)
        new = cc.leader(exclude=lead)
        assert new == follow
        after = client.pool_info("gpu")
        assert after is not None
        _sound(after)
        # The definition and the leases survived, tokens and all.
        assert {k: after[k] for k in ("capacity", "grace_ms", "patience", "held", "waiting")} == \
            {k: before[k] for k in ("capacity", "grace_ms", "patience", "held")} | {"waiting": 1}
        assert [(t["name"], t["weight"], t["min"], t["max"], t["band"], t["held"]) for t in after["tenants"]] == \
            [(t["name"], t["weight"], t["min"], t["max"], t["band"], t["held"]) for t in before["tenants"]]
        assert [(x["session"], x["units"], x["token"]) for x in after["leases"]] == \
            [(x["session"], x["units"], x["token"]) for x in before["leases"]]
        # Tokens keep rising: a new lease (c's guaranteed unit) is above every earlier one.
        c = client.acquire_capacity("gpu", 1, tenant="c", session=s)
        assert c.token > max(x["token"] for x in before["leases"])
        # A release hands the units to the waiter, which re-attached on the new leader.
        client.release_capacity(leases[0])
        t.join(40)
        assert not errors, errors
        assert len(got) == 1 and got[0].token > c.token
        final = client.pool_info("gpu")
        assert final is not None
        _sound(final)
        assert sorted(x["token"] for x in final["leases"]) == sorted([leases[1].token, c.token, got[0].token])

        # The killed server rejoins as a follower; once it has applied the leader's last
        # record, its READONLY POOL.INFO is the leader's.
        cc.restart(lead)
        fport, nport = cc.servers[lead].port, cc.servers[new].port
        wait_agree(nport, fport, timeout=30)
        assert _info(fport, readonly=True) == _info(nport, readonly=False)
        client.close()
