"""Leader election with terms, against real etcd: failover when the leader's process is
killed, stepping down before etcd could expire the lease, resigning, worker-ID leases."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.etcd_support import connect

from coordcore.cluster import (
    Election,
    EtcdLog,
    Keys,
    LeadershipLost,
    Session,
    claim_worker_id,
    current_leader,
)
from coordcore.cluster.testing import EtcdCluster
from coordcore.errors import WorkerIdUnavailable

Run = Callable[..., Any]
CHILD = Path(__file__).with_name("campaign_child.py")


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start campaign_child.py processes; every one is killed (by PID) after the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
        proc = subprocess.Popen([sys.executable, str(CHILD), *args], stdout=subprocess.PIPE, text=True, env=env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_failover_when_the_leaders_process_is_killed(run: Run, cluster: EtcdCluster, prefix: str,
                                                     spawn: Callable[..., subprocess.Popen[str]]) -> None:
    ttl = 2.0
    child = spawn(",".join(cluster.endpoints), prefix, str(ttl), "127.0.0.21:7379")

    async def main() -> None:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)
        first = json.loads(line)
        etcd = await connect(cluster.endpoints)
        keys = Keys(prefix)
        session = await Session.open(etcd, ttl)
        try:
            assert await current_leader(etcd, keys) is not None
            assert (await current_leader(etcd, keys)).address == "127.0.0.21:7379"  # type: ignore[union-attr]
            campaign = asyncio.create_task(Election(etcd, keys, session, "127.0.0.22:7379").campaign())
            await asyncio.sleep(0.5)
            assert not campaign.done()  # the older candidate leads
            child.kill()
            killed_at = time.monotonic()
            lead = await asyncio.wait_for(campaign, 10)
            took = time.monotonic() - killed_at
            assert lead.term > first["term"]
            assert lead.alive()
            assert took < ttl + 2.0  # bounded by the dead leader's lease TTL
            info = await current_leader(etcd, keys)
            assert info is not None and (info.address, info.term) == ("127.0.0.22:7379", lead.term)
            # The dead server's worker ID went with its lease.
            assert (await claim_worker_id(etcd, keys, session)).worker_id == first["worker"]
        finally:
            await session.close()
            await etcd.close()

    run(main(), timeout=60)


def test_leader_steps_down_before_etcd_expires_its_lease(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    async def main() -> None:
        etcd = await connect(cluster.endpoints)
        keys = Keys(prefix)
        a = await Session.open(etcd, 2.0)
        b = await Session.open(etcd, 2.0)
        try:
            lead_a = await Election(etcd, keys, a, "a:1").campaign()
            log = EtcdLog(etcd, keys)
            log.lead(lead_a)
            await log.replay(lambda i, p: None, lambda i, p: None)
            assert await log.append(b"a1") == 1
            assert lead_a.deadline - time.monotonic() <= 0.8 * a.ttl
            campaign_b = asyncio.create_task(Election(etcd, keys, b, "b:1").campaign())
            a.stop_keepalive()  # A's server stalls: no more keep-alives
            while lead_a.alive():
                await asyncio.sleep(0.01)
            # A stopped acting while etcd still had its key: never two leaders at once.
            assert await etcd.get(lead_a.key) is not None
            assert not campaign_b.done()
            with pytest.raises(LeadershipLost, match="no live leadership"):
                await log.append(b"a2")
            lead_b = await asyncio.wait_for(campaign_b, 10)
            assert lead_b.term > lead_a.term
            assert await etcd.get(lead_a.key) is None
            assert a.lost.is_set() and not lead_a.alive()
        finally:
            await a.close()
            await b.close()
            await etcd.close()

    run(main(), timeout=60)


def test_resign_hands_over_and_keeps_the_session(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    async def main() -> None:
        etcd = await connect(cluster.endpoints)
        keys = Keys(prefix)
        a = await Session.open(etcd, 5.0)
        b = await Session.open(etcd, 5.0)
        try:
            assert await current_leader(etcd, keys) is None
            worker = await claim_worker_id(etcd, keys, a)
            lead_a = await Election(etcd, keys, a, "a:1").campaign()
            campaign_b = asyncio.create_task(Election(etcd, keys, b, "b:1").campaign())
            await asyncio.sleep(0.2)
            assert not campaign_b.done()
            started = time.monotonic()
            await lead_a.resign()
            lead_b = await asyncio.wait_for(campaign_b, 5)
            assert time.monotonic() - started < 1.0  # a watch, not a lease expiry
            assert not lead_a.alive() and a.alive() and worker.valid()
            assert lead_b.term > lead_a.term
        finally:
            await a.close()
            await b.close()
            await etcd.close()

    run(main(), timeout=30)


def test_campaign_ends_when_the_session_does(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    async def main() -> None:
        etcd = await connect(cluster.endpoints)
        keys = Keys(prefix)
        a = await Session.open(etcd, 5.0)
        b = await Session.open(etcd, 2.0)
        try:
            await Election(etcd, keys, a, "a:1").campaign()
            campaign_b = asyncio.create_task(Election(etcd, keys, b, "b:1").campaign())
            await asyncio.sleep(0.2)
            await etcd.lease_revoke(b.lease_id)  # etcd drops B's lease
            with pytest.raises(LeadershipLost, match="session ended"):
                await asyncio.wait_for(campaign_b, 5)
            assert not b.alive()
        finally:
            await a.close()
            await b.close()
            await etcd.close()

    run(main(), timeout=30)


def test_worker_ids_are_unique_under_concurrent_claims(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    claimants = 6

    async def main() -> None:
        keys = Keys(prefix)
        # Each claimant has its own connection, starting at a different member.
        conns = [await connect(cluster.endpoints[i % 3:] + cluster.endpoints[:i % 3]) for i in range(claimants)]
        sessions = [await Session.open(c, 5.0) for c in conns]
        try:
            results = await asyncio.gather(
                *(claim_worker_id(c, keys, s, worker_ids=range(4), owner=f"s{i}")
                  for i, (c, s) in enumerate(zip(conns, sessions))), return_exceptions=True)
            won = [r for r in results if not isinstance(r, BaseException)]
            lost = [r for r in results if isinstance(r, BaseException)]
            assert sorted(w.worker_id for w in won) == [0, 1, 2, 3]
            assert len(lost) == 2 and all(isinstance(e, WorkerIdUnavailable) for e in lost)
            held = await conns[0].range(keys.ids_prefix, keys.end(keys.ids_prefix))
            assert len(held.kvs) == 4
            assert {kv.lease for kv in held.kvs} == {w.session.lease_id for w in won}
            assert all(w.safe_until() <= time.monotonic() + 0.8 * 5.0 for w in won)
            # A holder's lease ends: its ID is free, and the lowest free one is taken next.
            freed = next(w for w in won if w.worker_id == 2)
            await freed.session.close()
            spare = next(s for s in sessions if s.alive() and s.lease_id not in {w.session.lease_id for w in won})
            again = await claim_worker_id(conns[0], keys, spare, worker_ids=range(4))
            assert again.worker_id == 2
        finally:
            for s in sessions:
                await s.close()
            for c in conns:
                await c.close()

    run(main(), timeout=60)
