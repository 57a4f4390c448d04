"""coordcore servers in cluster mode (``serve --etcd``) on a real 3-member etcd: one
leader serves locks, followers redirect (``-MOVED``) and serve IDs under worker IDs
leased in etcd, and a ``kill -9`` of the leader hands its locks, sessions and waiters
to a follower."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordcore import AsyncClient, Client
from coordcore.cluster.testing import EtcdCluster
from coordcore.errors import Moved, Unavailable
from coordcore.ids import decode
from tests.cluster.ccluster import ETCD_TTL, CoordCluster, cluster_info, command


def test_follower_redirects_and_both_issue_ids(cluster: EtcdCluster, tmp_path: Path) -> None:
    with CoordCluster(cluster, tmp_path) as cc:
        lead = cc.settled()
        follow = 1 - lead
        fport, lport = cc.servers[follow].port, cc.servers[lead].port
        # Lock commands on the follower: a redirect naming the leader, nothing applied.
        reply = command(fport, "SESSION.OPEN", "10")
        assert isinstance(reply, Moved) and reply.address == f"127.0.0.1:{lport}", reply
        reply = command(fport, "LOCK.ACQUIRE", "k", "1.00", "TIMEOUT", "10")
        assert isinstance(reply, Moved) and reply.address == f"127.0.0.1:{lport}", reply
        assert command(fport, "PING") == b"PONG"
        assert cluster_info(fport)["leader"] == f"127.0.0.1:{lport}"
        # Worker IDs leased in etcd: distinct, and so are the IDs of the two servers.
        workers = {int(cluster_info(s.port)["worker_id"]) for s in cc.servers}
        assert len(workers) == 2, workers
        ids: list[int] = []
        for s in cc.servers:
            for first, count in command(s.port, "ID.RANGE", 3000):
                ids.extend(range(first, first + count))
            ids += [command(s.port, "ID.NEXT") for _ in range(50)]
        assert len(ids) == len(set(ids)) == 2 * 3050
        assert {decode(i).worker for i in ids} == workers
        # A client given the follower first is sent to the leader.
        with Client([f"127.0.0.1:{fport}", f"127.0.0.1:{lport}"]) as client:
            with client.lock("jobs/1", ttl=10) as grant:
                assert grant.token > 0
                assert client.endpoint.port == lport
                assert client.lock_info("jobs/1").holders[0].token == grant.token


def test_leader_kill9_hands_over_locks_sessions_and_waiters(cluster: EtcdCluster, tmp_path: Path) -> None:
    with CoordCluster(cluster, tmp_path, 2, "--waiter-grace", "10") as cc:
        lead = cc.leader()
        follow = 1 - lead
        # The follower's address first: every call starts with a redirect.
        client = Client([cc.addresses[follow], cc.addresses[lead]], connect_timeout=2.0)
        holder = client.session(ttl=10)
        grant = client.acquire("k1", session=holder)
        before = [client.acquire(f"other/{i}", session=holder).token for i in range(5)]
        # A session nobody keeps alive: it outlives the failover only if the new leader
        # does not count the time without a leader against it.
        idle = client.session(ttl=4, keepalive=False)
        idle_opened = time.monotonic()
        client.acquire("k-idle", session=idle)
        # A waiter parked on the leader when it dies: it re-attaches to its wait on the
        # new leader (same request id) and gets the lock once the holder releases it.
        waiter = client.session(ttl=10)
        got: list[int] = []
        errors: list[BaseException] = []

        def wait_for_k1() -> None:
            try:
                got.append(client.acquire("k1", session=waiter, timeout=30).token)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        t = threading.Thread(target=wait_for_k1)
        t.start()
        deadline = time.monotonic() + 5
        while len(client.lock_info("k1").waiters) < 1:
            assert time.monotonic() < deadline, "the waiter never queued"
            time.sleep(0.02)

        killed = cc.kill(lead)
        new = cc.leader(exclude=lead)
        failover = time.monotonic() - killed
        assert new == follow
        print(f"failover (kill -9 to a leader serving): {failover:.2f} s")
        # About the lease TTL (a dead leader's key lives that long) plus the replay.
        assert failover < ETCD_TTL + 3.0, failover

        # The grant survives with its token, the holder's session with it.
        info = client.lock_info("k1")
        assert [(h.session, h.token) for h in info.holders] == [(holder.id, grant.token)]
        assert [w.session for w in info.waiters] == [waiter.id]
        holder.keepalive()
        # The idle session: past its TTL in wall time, still alive (failover not counted).
        time.sleep(max(0.0, idle_opened + 4.0 + 0.3 - time.monotonic()))
        assert [h.session for h in client.lock_info("k-idle").holders] == [idle.id]

        # New tokens are higher than every token issued before the failover.
        after = client.acquire("k2", session=holder).token
        assert after > max(before + [grant.token])
        client.release(grant)
        t.join(30)
        assert not errors, errors
        assert len(got) == 1 and got[0] > after
        assert [h.session for h in client.lock_info("k1").holders] == [waiter.id]
        client.close()


def test_graceful_stop_hands_over_at_once(cluster: EtcdCluster, tmp_path: Path) -> None:
    with CoordCluster(cluster, tmp_path, 2) as cc:
        lead = cc.leader()
        with Client(cc.addresses) as client:
            grant = client.acquire("g", ttl=10)
            t0 = time.monotonic()
            cc.servers[lead].stop()  # SIGTERM: resigns, no lease to wait out
            cc.leader(exclude=lead)
            assert time.monotonic() - t0 < ETCD_TTL, "a resigning leader should not make the others wait"
            assert client.lock_info("g").holders[0].token == grant.token


def test_async_client_follows_the_leader_through_a_failover(cluster: EtcdCluster, tmp_path: Path,
                                                            run: Callable[..., Any]) -> None:
    with CoordCluster(cluster, tmp_path, 2) as cc:
        lead = cc.settled()
        follow = 1 - lead

        async def scenario() -> None:
            async with AsyncClient([cc.addresses[follow], cc.addresses[lead]], connect_timeout=2.0) as client:
                s = await client.session(ttl=10)
                grant = await client.acquire("a1", session=s)
                assert client.endpoint.port == cc.servers[lead].port
                # A parked acquire on the leader when it dies: re-attached on the new one.
                waiting = asyncio.ensure_future(client.acquire("a1", session=await client.session(ttl=10),
                                                               timeout=30))
                while not (await client.lock_info("a1")).waiters:
                    await asyncio.sleep(0.02)
                await asyncio.get_running_loop().run_in_executor(None, cc.kill, lead)
                info = await client.lock_info("a1")  # waits out the failover
                assert [(h.session, h.token) for h in info.holders] == [(s.id, grant.token)]
                assert client.endpoint.port == cc.servers[follow].port
                await client.release(grant)
                second = await asyncio.wait_for(waiting, 30)
                assert second.token > grant.token

        run(scenario(), timeout=60)


def test_leader_paused_past_its_lease_never_answers_as_leader_again(cluster: EtcdCluster, tmp_path: Path) -> None:
    with CoordCluster(cluster, tmp_path, 2) as cc:
        lead = cc.settled()
        old = cc.servers[lead]
        with Client(cc.addresses, connect_timeout=2.0) as client:
            s = client.session(ttl=20)
            grant = client.acquire("p1", session=s)
            os.kill(old.pid, signal.SIGSTOP)  # a stalled VM: sockets open, nothing answers
            try:
                new = cc.leader(exclude=lead)
            finally:
                os.kill(old.pid, signal.SIGCONT)
            # It wakes up past its session's deadline: writes are refused at once (the
            # step-down may not have run yet), never applied to its stale state.
            for i in range(20):
                reply = command(old.port, "LOCK.TRY", f"p-stale/{i}", s.credential)
                assert isinstance(reply, (Moved, Unavailable)), reply
            deadline = time.monotonic() + 5
            while cluster_info(old.port)["role"] != "follower":
                assert time.monotonic() < deadline, "the paused leader never stepped down"
                time.sleep(0.05)
            assert cluster_info(cc.servers[new].port)["role"] == "leader"
            info = client.lock_info("p1")
            assert [(h.session, h.token) for h in info.holders] == [(s.id, grant.token)]
            assert client.acquire("p2", session=s).token > grant.token
            # Back as a follower, it redirects writes to the new leader once it has looked
            # it up, and answers reads from the log it follows (the new leader's grant too).
            deadline = time.monotonic() + 3
            while not isinstance(reply := command(old.port, "LOCK.TRY", "p-stale/x", s.credential), Moved):
                assert isinstance(reply, Unavailable) and time.monotonic() < deadline, reply
                time.sleep(0.05)
            assert reply.address == cc.addresses[new], reply
            while not isinstance(reply := command(old.port, "LOCK.INFO", "p2"), list) \
                    or not dict(zip(reply[::2], reply[1::2]))[b"holders"]:
                assert time.monotonic() < deadline + 5, reply
                time.sleep(0.05)
            assert client.lock_info("p-stale/0").holders == []
