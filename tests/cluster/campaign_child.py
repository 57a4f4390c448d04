"""A stand-in coordcore server for the failover tests, run as its own process so that a
test can kill -9 it: it opens a session, claims a worker ID, campaigns, prints what it
got as one JSON line, then idles until killed.

    python campaign_child.py ENDPOINTS PREFIX TTL ADDRESS
"""
from __future__ import annotations

import asyncio
import json
import sys

from coordcore.cluster import Election, Etcd, Keys, Session, claim_worker_id


async def main(endpoints: str, prefix: str, ttl: float, address: str) -> None:
    etcd = await Etcd(endpoints.split(","), timeout=2.0).connect()
    keys = Keys(prefix)
    session = await Session.open(etcd, ttl)
    worker = await claim_worker_id(etcd, keys, session, owner=address)
    leadership = await Election(etcd, keys, session, address).campaign()
    print(json.dumps({"term": leadership.term, "lease": session.lease_id, "worker": worker.worker_id}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]))
