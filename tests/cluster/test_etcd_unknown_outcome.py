"""Appends whose answer never came: resolved by reading the record back, never doubled.

The first tests lose the request or the answer on purpose (the Txn really is sent, or
really is not), so each branch of the resolution runs; the last pauses the etcd leader
the writer talks to with SIGSTOP in the middle of appends."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from tests.cluster.etcd_support import Writer, replayed, writer

from coordcore.cluster import AppendOutcomeUnknown, EtcdLog, EtcdUnavailable, LeadershipLost
from coordcore.cluster.etcd import Etcd, TxnResult
from coordcore.cluster.testing import EtcdCluster

Run = Callable[..., Any]


class LossyEtcd(Etcd):
    """Loses the next Txn's request (``lose="request"``: never sent) or answer
    (``lose="answer"``: committed, then reported as a timeout); ``between`` runs after
    the loss, before the writer resolves."""

    lose: str | None = None
    between: Callable[[], Any] | None = None
    txns = 0

    async def txn(self, compare: Any, success: Any, failure: Any = (), *,
                  timeout: float | None = None) -> TxnResult:
        self.txns += 1
        lose, self.lose = self.lose, None
        if lose == "answer":
            await super().txn(compare, success, failure, timeout=timeout)
        if lose is not None:
            if self.between is not None:
                await self.between()
            raise EtcdUnavailable(f"test: {lose} lost")
        return await super().txn(compare, success, failure, timeout=timeout)


async def lossy_writer(endpoints: list[str], prefix: str, **options: Any) -> tuple[Writer, LossyEtcd]:
    w = await writer(endpoints, prefix, **options)
    lossy = await LossyEtcd(endpoints, timeout=2.0).connect()
    log = EtcdLog(lossy, w.log.keys, resolve_timeout=options.get("resolve_timeout", 10.0))
    log.lead(w.leadership)
    await log.catch_up(lambda i, p: None)
    w.log = log
    return w, lossy


@pytest.mark.parametrize("lose", ["request", "answer"])
def test_lost_request_or_answer_is_resolved_once(run: Run, cluster: EtcdCluster, prefix: str, lose: str) -> None:
    async def main() -> None:
        w, lossy = await lossy_writer(cluster.endpoints, prefix)
        try:
            assert await w.log.append(b"r1") == 1
            lossy.lose = lose
            assert await w.log.append(b"r2") == 2
            assert lossy.txns == 3  # r1, the lost one, the resolving one
            assert await w.log.append(b"r3") == 3
        finally:
            await lossy.close()
            await w.close()
        seen = await replayed(cluster.endpoints, prefix)
        assert seen.records == [(1, b"r1"), (2, b"r2"), (3, b"r3")]

    run(main())


@pytest.mark.parametrize("lose", ["request", "answer"])
def test_deposed_while_in_doubt(run: Run, cluster: EtcdCluster, prefix: str, lose: str) -> None:
    """The writer loses its lease while an append is in doubt. If the record got in
    before, it is the writer's and is acknowledged; if not, it never gets in."""

    async def main() -> None:
        w, lossy = await lossy_writer(cluster.endpoints, prefix)
        try:
            assert await w.log.append(b"r1") == 1

            async def depose() -> None:
                await w.etcd.lease_revoke(w.session.lease_id)

            lossy.lose, lossy.between = lose, depose
            if lose == "answer":
                assert await w.log.append(b"r2") == 2
            else:
                with pytest.raises(LeadershipLost):
                    await w.log.append(b"r2")
        finally:
            await lossy.close()
            await w.close()
        seen = await replayed(cluster.endpoints, prefix)
        assert seen.records == ([(1, b"r1"), (2, b"r2")] if lose == "answer" else [(1, b"r1")])

    run(main())


def test_unresolvable_outcome_stops_the_writer(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    async def main() -> None:
        w, lossy = await lossy_writer(cluster.endpoints, prefix, resolve_timeout=0.5)
        try:
            original = Etcd.txn

            async def always_lost(self: Etcd, *args: Any, **kwargs: Any) -> TxnResult:
                raise EtcdUnavailable("test: etcd unreachable")

            lossy.txn = always_lost.__get__(lossy)  # type: ignore[method-assign]
            with pytest.raises(AppendOutcomeUnknown):
                await w.log.append(b"r1")
            lossy.txn = original.__get__(lossy)  # type: ignore[method-assign]
            with pytest.raises(LeadershipLost, match="writes stopped"):
                await w.log.append(b"r1")
        finally:
            await lossy.close()
            await w.close()

    run(main())


def test_etcd_leader_paused_mid_append(run: Run, healthy: EtcdCluster, prefix: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """SIGSTOP the etcd leader the writer is connected to, with an append in flight. The
    Txn times out, the writer moves to another member and resolves the append there,
    once a new etcd leader is elected: each record once, in order, none lost."""
    cluster = healthy
    leader = cluster.leader_index()
    # The writer talks to the etcd leader first; its session outlives an etcd election.
    endpoints = [cluster.endpoints[leader]] + [e for i, e in enumerate(cluster.endpoints) if i != leader]

    async def main() -> None:
        w = await writer(endpoints, prefix, ttl=6.0, timeout=1.0, resolve_timeout=20.0)
        try:
            assert await w.log.append(b"r1") == 1
            pending = w.log.append(b"r2")
            await asyncio.sleep(0)  # the Txn is on its way
            cluster.pause(leader)
            paused_at = time.monotonic()
            try:
                assert await asyncio.wait_for(pending, 30) == 2
                assert time.monotonic() - paused_at >= 0.5  # it did wait out the pause
                assert await w.log.append(b"r3") == 3
            finally:
                cluster.resume(leader)
            assert w.etcd.current_endpoint != cluster.endpoints[leader]
        finally:
            await w.close()
        seen = await replayed(cluster.endpoints, prefix)
        assert seen.records == [(1, b"r1"), (2, b"r2"), (3, b"r3")]

    run(main(), timeout=60)
    assert any("append of record 2: outcome unknown" in r.getMessage() for r in caplog.records)
