"""Helpers shared by the cluster tests: a writer (session, leadership, log) in a few lines,
and a toy state machine that records what a log fed it."""
from __future__ import annotations

from dataclasses import dataclass, field

from coordcore.cluster import Election, Etcd, EtcdLog, Keys, Leadership, Session


@dataclass
class Applied:
    """What a replay or follow delivered: the snapshot restored, then records in order."""

    snapshot: tuple[int, bytes] | None = None
    records: list[tuple[int, bytes]] = field(default_factory=list)

    def restore(self, index: int, payload: bytes) -> None:
        self.snapshot = (index, payload)
        self.records.clear()

    def apply(self, index: int, payload: bytes) -> None:
        self.records.append((index, payload))


@dataclass
class Writer:
    etcd: Etcd
    session: Session
    leadership: Leadership
    log: EtcdLog

    async def close(self) -> None:
        await self.log.close()
        await self.session.close()
        await self.etcd.close()


async def connect(endpoints: list[str], *, timeout: float = 2.0) -> Etcd:
    return await Etcd(endpoints, timeout=timeout).connect()


async def writer(endpoints: list[str], prefix: str, *, ttl: float = 2.0, address: str = "127.0.0.1:7379",
                 timeout: float = 2.0, **log_options: object) -> Writer:
    """A server that has won the election for ``prefix`` and replayed the log."""
    etcd = await connect(endpoints, timeout=timeout)
    keys = Keys(prefix)
    session = await Session.open(etcd, ttl)
    leadership = await Election(etcd, keys, session, address).campaign()
    log = EtcdLog(etcd, keys, **log_options)  # type: ignore[arg-type]
    log.lead(leadership)
    await log.replay(Applied().restore, Applied().apply)
    return Writer(etcd, session, leadership, log)


async def replayed(endpoints: list[str], prefix: str) -> Applied:
    """What a fresh reader's replay of ``prefix`` delivers."""
    etcd = await connect(endpoints)
    try:
        got = Applied()
        await EtcdLog(etcd, Keys(prefix)).replay(got.restore, got.apply)
        return got
    finally:
        await etcd.close()
