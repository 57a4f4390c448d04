"""Worker IDs leased from a real coordcore server (ServerWorkerIds)."""
from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.server.ccserver import ServerProc, serve  # noqa: F401 (serve is a fixture)

from coordcore.client import Client, ServerWorkerIds
from coordcore.errors import BadArgument, WorkerIdUnavailable, WorkerLeaseLost
from coordcore.ids import Snowflake

Serve = Callable[..., ServerProc]


def test_generators_lease_distinct_ids_and_give_them_back(serve: Serve) -> None:
    server = serve()
    with Client(port=server.port) as c1, Client(port=server.port) as c2:
        a = Snowflake(ServerWorkerIds(c1, ttl=5, worker_ids=range(2)))
        b = Snowflake(ServerWorkerIds(c2, ttl=5, worker_ids=range(2)))
        assert {a.worker_id, b.worker_id} == {0, 1}
        assert c1.lock_info(f"coordcore/worker-ids/0/{a.worker_id}").holders
        with pytest.raises(WorkerIdUnavailable):
            Snowflake(ServerWorkerIds(c2, ttl=5, worker_ids=range(2)))
        ids = [a.next_id(), b.next_id()]
        assert len(set(ids)) == 2
        a.close()  # closes the lease's session: the ID is free at once
        c = Snowflake(ServerWorkerIds(c2, ttl=5, worker_ids=range(2)))
        assert c.worker_id == a.worker_id
        b.close()
        c.close()


def test_lost_lease_stops_issuance_before_the_server_could_reassign(serve: Serve) -> None:
    server = serve()
    with Client(port=server.port) as client:
        gen = Snowflake(ServerWorkerIds(client, ttl=1.0))
        gen.next_id()
        server.stop(signal.SIGKILL)  # keep-alives fail from now on
        killed = time.monotonic()
        deadline = killed + 5
        while time.monotonic() < deadline:
            try:
                gen.next_id()
            except WorkerLeaseLost:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the generator kept issuing IDs after its lease could have expired")
        # Sealed within the TTL (the server would free the ID only after the TTL).
        assert time.monotonic() - killed < 1.0
        with pytest.raises(WorkerLeaseLost):
            gen.next_ids(5)


def test_bad_safety_margin(serve: Serve) -> None:
    server = serve()
    with Client(port=server.port) as client:
        with pytest.raises(BadArgument):
            ServerWorkerIds(client, safety=1.5)
