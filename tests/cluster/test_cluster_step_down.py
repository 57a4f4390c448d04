"""A server's change of role under an open connection: a connection made while the
server followed keeps working when the server comes to lead (its lock commands take the
command table), and a leader whose lock service fails lets another server lead at once."""
from __future__ import annotations

import time
from pathlib import Path

from coordcore.cluster.testing import EtcdCluster
from tests.cluster.ccluster import CoordCluster, cluster_info
from tests.server.ccserver import Raw


def test_a_connection_made_while_following_is_served_once_the_server_leads(
        cluster: EtcdCluster, tmp_path: Path) -> None:
    with CoordCluster(cluster, tmp_path, 2) as cc:
        lead = cc.settled()
        follow = 1 - lead
        with Raw(cc.servers[follow].port) as raw:
            assert str(raw.command("SESSION.OPEN", 10)).startswith("MOVED ")
            cc.kill(lead)
            assert cc.leader(exclude=lead) == follow
            cred = raw.command("SESSION.OPEN", 10)  # the same connection, now on the leader
            assert isinstance(cred, bytes) and b"." in cred, cred
            token = raw.command("LOCK.ACQUIRE", "jobs/1", cred, "TIMEOUT", 1000)
            assert isinstance(token, int) and token > 0, token
            assert raw.command("LOCK.RELEASE", "jobs/1", cred) == b"OK"
        time.sleep(0.2)
        assert cluster_info(cc.servers[follow].port)["role"] == "leader"  # its service still runs
        assert "writer failed" not in cc.servers[follow].log()
