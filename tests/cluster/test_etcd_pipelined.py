"""EtcdLog with several appends in flight, against a real 3-member etcd: records keep
their order and hash chain under many concurrent appends (and a follower sees them in
order), an append etcd takes before its predecessor is refused and sent again, a failure
mid-flight fails every later append and acknowledges nothing after it, and a deposed
leader's appends in flight all fail their leader compare.

:class:`GatedEtcd` holds chosen Txns back (or loses them) before they reach the real
etcd, so the orders that matter happen on purpose, not by luck."""
from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from typing import Any

import pytest
from tests.cluster.etcd_support import Writer, connect, replayed, writer

from coordcore.cluster import AppendOutcomeUnknown, EtcdLog, EtcdUnavailable, Keys, LeadershipLost
from coordcore.cluster.etcd import Etcd, TxnResult
from coordcore.cluster.testing import EtcdCluster
from coordcore.locks import LockMachine
from coordcore.locks.service import LockService

Run = Callable[..., Any]


def put_seqs(success: Any) -> list[int]:
    """The log seqs a Txn's (nested) puts write, its own last ([]: not a log append)."""
    seqs = []
    for op in success:
        for put in [op.message] + list(op.message.request_txn.success):
            key = bytes(put.request_put.key)
            if b"/log/" in key:
                seqs.append(int(key.rsplit(b"/", 1)[1]))
    return seqs


class GatedEtcd(Etcd):
    """Holds the Txn of each seq in ``hold`` until its event is set; ``lose`` maps a seq
    to "request" (never sent) or "answer" (sent, answer lost) for every Txn of it;
    ``sent`` lists the seqs of the Txns that reached etcd, in order, ``answers`` whether
    each succeeded, ``carried`` the records each Txn carried."""

    def setup(self) -> None:
        self.hold: dict[int, asyncio.Event] = {}
        self.lose: dict[int, str] = {}
        self.sent: list[int] = []
        self.answers: list[tuple[int, bool]] = []
        self.carried: list[list[int]] = []

    async def txn(self, compare: Any, success: Any, failure: Any = (), *,
                  timeout: float | None = None) -> TxnResult:
        seqs = put_seqs(success)
        seq = seqs[-1] if seqs else 0
        self.carried.append(seqs)
        gate = self.hold.get(seq)
        if gate is not None:
            await gate.wait()
        lose = self.lose.get(seq)
        if lose == "request":
            raise EtcdUnavailable("test: request lost")
        self.sent.append(seq)
        r = await super().txn(compare, success, failure, timeout=timeout)
        if lose == "answer":
            raise EtcdUnavailable("test: answer lost")
        self.answers.append((seq, r.succeeded))
        return r


async def gated_writer(endpoints: list[str], prefix: str, **options: Any) -> tuple[Writer, GatedEtcd]:
    w = await writer(endpoints, prefix)
    gated = await GatedEtcd(endpoints, timeout=2.0).connect()
    gated.setup()
    log = EtcdLog(gated, w.log.keys, **options)
    log.lead(w.leadership)
    await log.catch_up(lambda i, p: None)
    w.log = log
    return w, gated


def test_many_appends_in_flight_keep_order_and_chain(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    payloads = [os.urandom(i % 7 * 1000) + b"#%d" % i for i in range(240)]

    async def main() -> None:
        w = await writer(cluster.endpoints, prefix, max_in_flight=8, max_record_bytes=64 * 1024)
        reader_etcd = await connect(cluster.endpoints)
        followed: list[tuple[int, bytes]] = []

        async def follow() -> None:
            async for index, payload in EtcdLog(reader_etcd, Keys(prefix)).follow(1):
                followed.append((index, payload))
                if index == len(payloads):
                    return

        follower = asyncio.ensure_future(follow())
        try:
            settled: list[int] = []
            window: list[asyncio.Future[int]] = []
            most = 0
            for p in payloads:
                if len(window) == 8:
                    await window.pop(0)
                fut = w.log.append(p)
                fut.add_done_callback(lambda f: settled.append(f.result()))
                window.append(fut)
                most = max(most, w.log.in_flight)
            assert await asyncio.gather(*window) == list(range(len(payloads) - len(window) + 1, len(payloads) + 1))
            assert most == 8
            assert settled == list(range(1, len(payloads) + 1))  # resolved strictly in order
            await asyncio.wait_for(follower, 20)
        finally:
            follower.cancel()
            await reader_etcd.close()
            await w.close()
        assert followed == list(enumerate(payloads, 1))  # the watch saw them in order
        seen = await replayed(cluster.endpoints, prefix)  # checks every prev hash
        assert seen.records == list(enumerate(payloads, 1))

    run(main(), timeout=60)


def test_an_append_etcd_takes_before_its_predecessor_puts_both(
        run: Run, cluster: EtcdCluster, prefix: str) -> None:
    """Record 3's Txn reaches etcd while record 2's is held back: it carries record 2, so
    both get in together (no gap), but 3 is acknowledged only after 2's own Txn answers."""

    async def main() -> None:
        w, gated = await gated_writer(cluster.endpoints, prefix, max_in_flight=4)
        try:
            assert await w.log.append(b"r1") == 1
            gated.hold[2] = asyncio.Event()
            second, third = w.log.append(b"r2"), w.log.append(b"r3")
            for _ in range(200):
                await asyncio.sleep(0.01)
                if (3, True) in gated.answers:
                    break
            assert gated.answers[1:] == [(3, True)] and gated.carried[-1] == [2, 3]
            await asyncio.sleep(0.05)
            assert not third.done()  # strictly in order: 2 has not answered
            seen = await replayed(cluster.endpoints, prefix)
            assert seen.records == [(1, b"r1"), (2, b"r2"), (3, b"r3")]  # no gap, ever
            gated.hold[2].set()
            assert await second == 2 and await third == 3
            # 2's own Txn finds it in place: refused, and the read-back shows its batch id.
            assert gated.answers[1:] == [(3, True), (2, False)]
            assert await w.log.append(b"r4") == 4
            assert gated.carried[-1] == [4]  # nothing unsure left to carry
        finally:
            await gated.close()
            await w.close()
        seen = await replayed(cluster.endpoints, prefix)
        assert seen.records == [(1, b"r1"), (2, b"r2"), (3, b"r3"), (4, b"r4")]

    run(main())


@pytest.mark.parametrize("lose", ["request", "answer"])
def test_a_failure_mid_flight_fails_every_later_append(run: Run, cluster: EtcdCluster, prefix: str,
                                                        lose: str) -> None:
    """Record 2's own Txn never gets an answer, so its outcome stays unknown. Records 3
    and 4, in flight behind it, fail too: never acknowledged, even though etcd took
    them (and record 2 with them, which they carry)."""

    async def main() -> None:
        w, gated = await gated_writer(cluster.endpoints, prefix, resolve_timeout=0.5, max_in_flight=4)
        try:
            assert await w.log.append(b"r1") == 1
            gated.lose[2] = lose
            futs = [w.log.append(b"r%d" % i) for i in (2, 3, 4)]
            results = await asyncio.gather(*futs, return_exceptions=True)
            assert isinstance(results[0], AppendOutcomeUnknown), results
            for r in results[1:]:
                assert isinstance(r, LeadershipLost) and "the append before it failed" in str(r), results
            with pytest.raises(LeadershipLost, match="writes stopped"):
                await w.log.append(b"r5")
            assert w.log.in_flight == 0
        finally:
            await gated.close()
            await w.close()
        seen = await replayed(cluster.endpoints, prefix)  # whatever got in is a valid chain
        assert seen.records == [(i, b"r%d" % i) for i in (1, 2, 3, 4)]

    run(main())


def test_a_deposed_leaders_appends_in_flight_all_fail(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    """A's appends are on their way when its lease ends and B takes over and writes: each
    of A's Txns fails its leader compare, though the records before them now exist."""

    async def main() -> None:
        a, gated = await gated_writer(cluster.endpoints, prefix, max_in_flight=8, max_record_bytes=64 * 1024)
        b: Writer | None = None
        try:
            assert await a.log.append(b"a1") == 1
            for seq in range(2, 10):
                gated.hold[seq] = asyncio.Event()
            futs = [a.log.append(b"a%d" % seq) for seq in range(2, 10)]
            await a.etcd.lease_revoke(a.session.lease_id)
            a.leadership.alive = lambda: True  # type: ignore[method-assign]
            b = await writer(cluster.endpoints, prefix)
            for seq in range(2, 6):
                assert await b.log.append(b"b%d" % seq) == seq
            for seq in range(2, 10):
                gated.hold[seq].set()
            results = await asyncio.gather(*futs, return_exceptions=True)
            assert all(isinstance(r, LeadershipLost) for r in results), results
            assert all(not ok for _, ok in gated.answers[1:])  # etcd refused every one
        finally:
            await gated.close()
            await a.close()
            if b is not None:
                await b.close()
        seen = await replayed(cluster.endpoints, prefix)
        assert seen.records == [(1, b"a1")] + [(seq, b"b%d" % seq) for seq in range(2, 6)]

    run(main())


def test_a_snapshot_is_refused_while_appends_are_in_flight(run: Run, cluster: EtcdCluster, prefix: str) -> None:
    async def main() -> None:
        w = await writer(cluster.endpoints, prefix)
        try:
            assert await w.log.append(b"r1") == 1
            pending = w.log.append(b"r2")
            with pytest.raises(RuntimeError, match="in flight"):
                await w.log.write_snapshot(1, b"state")
            assert await pending == 2
            await w.log.write_snapshot(2, b"state")
        finally:
            await w.close()
        seen = await replayed(cluster.endpoints, prefix)
        assert seen.snapshot is not None and seen.snapshot[0] == 2 and seen.records == []

    run(main())


class DepthLog(EtcdLog):
    """EtcdLog that records the most appends it had in flight at once."""

    most = 0

    def append(self, record: bytes) -> asyncio.Future[int]:
        fut = super().append(record)
        self.most = max(self.most, self.in_flight)
        return fut


def test_the_lock_service_on_appends_in_flight_replays_to_its_state(
        run: Run, cluster: EtcdCluster, prefix: str) -> None:
    """The commit pipeline over EtcdLog with 4 in flight: clients whose requests arrive
    staggered get strictly rising tokens per key, and the log in etcd replays to the
    state the service served, byte for byte."""
    async def main() -> None:
        w = await writer(cluster.endpoints, prefix)
        log = DepthLog(w.etcd, w.log.keys, max_in_flight=4)
        log.lead(w.leadership)
        svc = await LockService.open_store(log)
        try:
            sessions = [await svc.open_session(ttl=60, keepalive=False) for _ in range(12)]
            tokens: dict[str, list[int]] = {}
            rng = random.Random(11)

            async def worker(i: int) -> None:
                for n in range(15):
                    await asyncio.sleep(rng.uniform(0, 0.004))  # staggered, as over a network
                    key = f"k{(i + n) % 4}"
                    g = await svc.acquire(key, sessions[i])
                    tokens.setdefault(key, []).append(g.token)
                    await svc.release(g)

            await asyncio.gather(*(worker(i) for i in range(len(sessions))))
            state = svc.state_snapshot()
        finally:
            await svc.close()
            await w.session.close()
            await w.etcd.close()
        assert log.most > 1, "the pipeline never had two appends in flight"
        for got in tokens.values():
            assert got == sorted(got) and len(set(got)) == len(got)
        seen = await replayed(cluster.endpoints, prefix)
        machine = LockMachine()
        for _, record in seen.records:
            machine.apply_raw(record)
        assert machine.snapshot() == state

    run(main(), timeout=60)
