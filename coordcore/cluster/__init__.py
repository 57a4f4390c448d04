"""Cluster mode: the lock log in etcd, leader election with terms, worker IDs leased in etcd.

Needs the ``cluster`` extra (``pip install coordcore[cluster]``: aetcd and gRPC).
:mod:`coordcore.cluster.etcd` is the only module that imports them.
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
