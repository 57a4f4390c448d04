"""Cluster mode: the lock log in etcd, leader election with terms, worker IDs leased in etcd.

Needs the ``cluster`` extra (``pip install coordcore[cluster]``: aetcd and gRPC).
:mod:`coordcore.cluster.etcd` is the only module that imports them.

How a server uses it::

    etcd = await Etcd(["127.0.0.11:2379", ...]).connect()
    keys = Keys(f"/coordcore/{cluster_name}")
    session = await Session.open(etcd, ttl=5.0)            # one lease per server
    worker = await claim_worker_id(etcd, keys, session)    # IDs until worker.safe_until()
    log = EtcdLog(etcd, keys)
    await log.replay(machine.restore, machine.apply)       # snapshot + records
    follower = asyncio.create_task(apply_all(log.follow(log.next_index)))
    leadership = await Election(etcd, keys, session, advertise).campaign()
    follower.cancel()                                      # now the writer:
    log.lead(leadership)
    await log.catch_up(machine.apply)                      # no older writer can append now
    index = await log.append(batch_record)                 # while leadership.alive()

When ``session.lost`` is set, everything held through it is over: stop serving as
leader and issuing IDs, open a new session and start again.
"""
from coordcore.cluster.election import Election, LeaderInfo, Leadership, current_leader
from coordcore.cluster.errors import (
    AppendOutcomeUnknown,
    EtcdCompacted,
    EtcdRequestFailed,
    EtcdUnavailable,
    FollowerBehind,
    LeadershipLost,
    LogInvalid,
)
from coordcore.cluster.etcd import Etcd
from coordcore.cluster.keys import Keys
from coordcore.cluster.log import EtcdLog
from coordcore.cluster.session import Session
from coordcore.cluster.worker_ids import WorkerLease, claim_worker_id

__all__ = [
    "Etcd",
    "Keys",
    "EtcdLog",
    "Session",
    "Election",
    "Leadership",
    "LeaderInfo",
    "current_leader",
    "WorkerLease",
    "claim_worker_id",
    "AppendOutcomeUnknown",
    "EtcdCompacted",
    "EtcdRequestFailed",
    "EtcdUnavailable",
    "FollowerBehind",
    "LeadershipLost",
    "LogInvalid",
]
