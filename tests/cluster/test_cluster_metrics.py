"""Metrics in cluster mode, on real ``coordcore serve --etcd`` processes and a real etcd
cluster: the leader exports the lock, session, revision and wait/hold figures of the
service it serves; a follower its replica (applied record and revision, lag, role); after
a ``kill -9`` of the leader the new one exports the lock figures; a follower that stops
applying shows how far behind etcd's log it is."""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordcore.cluster.testing import EtcdCluster
import hiredis

from tests.cluster.ccluster import CoordCluster, command, info
from tests.server.ccserver import aio_raw, inprocess_server, read_reply
from tests.server.test_metrics import histogram, scrape

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_of(port: int) -> Metrics:
    return scrape(int(info(port)["metrics_port"]))


def wait_for(port: int, check: object, what: str, timeout: float = 15.0) -> Metrics:
    deadline = time.monotonic() + timeout
    while True:
        m = metrics_of(port)
        if check(m):  # type: ignore[operator]
            return m
        assert time.monotonic() < deadline, f"{what}: {sorted(k for k in m if k[0].startswith('coordcore_'))}"
        time.sleep(0.1)


def test_leader_exports_the_lock_figures_and_a_follower_its_replica(healthy: EtcdCluster, tmp_path: Path) -> None:
    with CoordCluster(healthy, tmp_path, 2, "--metrics-port", "0") as cc:
        lead = cc.settled()
        lport, fport = cc.servers[lead].port, cc.servers[1 - lead].port
        s1 = command(lport, "SESSION.OPEN", 30, readonly=False)
        token = command(lport, "LOCK.ACQUIRE", "m/a", s1, readonly=False)
        got: dict[str, object] = {}

        def waiter() -> None:
            s2 = command(lport, "SESSION.OPEN", 30, readonly=False)
            got["token"] = command(lport, "LOCK.ACQUIRE", "m/a", s2, "TIMEOUT", 10_000, readonly=False)

        thread = threading.Thread(target=waiter)
        thread.start()
        wait_for(lport, lambda m: m[("coordcore_waiters", ())] == 1, "the leader never showed the waiter")
        time.sleep(0.3)
        assert command(lport, "LOCK.RELEASE", "m/a", s1, "TOKEN", token, readonly=False) == b"OK"
        thread.join(10)
        assert isinstance(got.get("token"), int) and got["token"] > token  # type: ignore[operator]

        m = metrics_of(lport)
        assert m[("coordcore_cluster_role", (("role", "leader"),))] == 1
        assert m[("coordcore_cluster_is_leader", ())] == 1
        assert m[("coordcore_sessions", ())] == 2
        assert m[("coordcore_keys_held", ())] == 1
        index, revision, _ = command(lport, "CLUSTER.STATE")
        assert m[("coordcore_revision", ())] == revision
        assert m[("coordcore_cluster_log_index", ())] >= index
        _, waits, wait_sum = histogram(m, "coordcore_lock_wait_seconds", "exclusive")
        assert waits == 2 and wait_sum >= 0.25
        assert histogram(m, "coordcore_lock_hold_seconds", "exclusive")[1] == 1
        assert not any(name.startswith("coordcore_replica_") for name, _ in m)

        # The follower: its replica catches up with the leader's record, lag 0; no lock
        # figures of its own (it serves none).
        f = wait_for(fport, lambda f: f.get(("coordcore_replica_applied_index", ())) == index
                     and f.get(("coordcore_replica_lag_records", ())) == 0, "the follower never caught up")
        assert f[("coordcore_cluster_role", (("role", "follower"),))] == 1
        assert f[("coordcore_cluster_is_leader", ())] == 0
        assert f[("coordcore_replica_ready", ())] == 1
        assert f[("coordcore_replica_revision", ())] == revision
        assert ("coordcore_sessions", ()) not in f and ("coordcore_cluster_log_index", ()) not in f
        assert info(fport)["replica_lag_records"] == "0"

        # The leader dies: the follower leads, and its metrics carry the lock figures
        # (the sessions renewed, the lock still held by the waiter's session).
        cc.kill(lead)
        cc.leader(exclude=lead)
        n = wait_for(fport, lambda n: n.get(("coordcore_cluster_is_leader", ())) == 1
                     and ("coordcore_sessions", ()) in n, "the new leader exports no lock figures")
        assert n[("coordcore_cluster_role", (("role", "leader"),))] == 1
        assert n[("coordcore_sessions", ())] == 2 and n[("coordcore_keys_held", ())] == 1
        assert n[("coordcore_revision", ())] >= revision
        assert n[("coordcore_cluster_terms_led_total", ())] == 1
        # Its histograms count from its term on: the replayed history is not counted again.
        assert histogram(n, "coordcore_lock_wait_seconds", "exclusive")[1] == 0
        assert not any(name.startswith("coordcore_replica_") for name, _ in n)


def test_a_follower_that_stops_applying_shows_its_lag(healthy: EtcdCluster, tmp_path: Path,
                                                     run: Callable[..., Any]) -> None:
    cfg = {"locks": True, "worker_id": None, "etcd": tuple(healthy.endpoints), "cluster": f"t{uuid.uuid4().hex[:10]}",
           "etcd_ttl": 2.0, "metrics_port": 0}

    async def until(check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 15
        while not check():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.05)

    async def main() -> None:
        async with inprocess_server(tmp_path / "a", **cfg) as a:
            await until(lambda: a.cluster.role == "leader", "the first server never led")
            async with inprocess_server(tmp_path / "b", **cfg) as b:
                node = b.cluster
                await until(lambda: node.replica_lag() == 0, "the follower never caught up")
                node._following.cancel()  # its replica stops applying (as if stuck)
                applied = node.replica.index
                reader, writer = await aio_raw(a.port)
                parser = hiredis.Reader()
                for _ in range(5):  # a record each
                    writer.write(b"*2\r\n$12\r\nSESSION.OPEN\r\n$2\r\n30\r\n")
                    assert isinstance(await read_reply(reader, parser), bytes)  # a session handle
                writer.close()
                last = a.cluster.log_index
                assert last >= applied + 5
                await until(lambda: (node.log_head or 0) >= last, "the follower never read the log's head")
                m = await asyncio.to_thread(scrape, b.http.port)
                assert m[("coordcore_replica_applied_index", ())] == applied
                assert m[("coordcore_replica_lag_records", ())] >= last - applied >= 5
                assert m[("coordcore_replica_ready", ())] == 1  # loaded, only not advancing

    run(main(), timeout=90)
