"""Followers keep the lock state: they apply the log from etcd in order, answer reads
and watches from it, keep a local snapshot, and a wiped follower rejoins from etcd's
snapshot with the leader's state byte for byte (``CLUSTER.STATE`` compares the SHA-256
of both machines' snapshot bytes at the same record)."""
from __future__ import annotations

import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

from coordcore import Client
from coordcore.client._wire import new_reader, pack
from coordcore.cluster.replica import LOCAL_SNAPSHOT
from coordcore.cluster.testing import EtcdCluster
from coordcore.errors import Moved, Unavailable
from tests.cluster.ccluster import CoordCluster, cluster_info, command


def as_map(reply: list[Any]) -> dict[bytes, Any]:
    return dict(zip(reply[::2], reply[1::2]))


def state(port: int) -> list[Any] | None:
    """``CLUSTER.STATE``, or None while the server is still loading its state."""
    reply = command(port, "CLUSTER.STATE")
    if isinstance(reply, (Moved, Unavailable)):  # not loaded yet: no state to show
        return None
    assert isinstance(reply, list), reply
    return reply


def wait_agree(lport: int, fport: int, timeout: float = 10.0) -> list[Any]:
    """The leader's [index, revision, sha256] once the follower reports the same."""
    deadline = time.monotonic() + timeout
    while True:
        lead, follow = state(lport), state(fport)
        if lead is not None and lead == follow:
            return lead
        assert time.monotonic() < deadline, f"follower {follow} never reached the leader's {lead}"
        time.sleep(0.05)


def work(client: Client, tag: str) -> list[int]:
    """Some state of every kind: sessions, locks, a waiter, a semaphore, an election."""
    s1 = client.session(ttl=60, keepalive=False)
    s2 = client.session(ttl=60, keepalive=False)
    tokens = [client.acquire(f"{tag}/lock/{i}", session=s1).token for i in range(5)]
    tokens.append(client.acquire_semaphore(f"{tag}/sem", 3, session=s2).token)
    client.release(client.acquire(f"{tag}/lock/gone", session=s2))
    return tokens


def test_follower_answers_reads_and_watches_from_its_applied_state(cluster: EtcdCluster, tmp_path: Path) -> None:
    with CoordCluster(cluster, tmp_path) as cc:
        lead = cc.settled()
        lport, fport = cc.servers[lead].port, cc.servers[1 - lead].port
        with Client([cc.addresses[lead]]) as client:
            s = client.session(ttl=60, keepalive=False)
            grant = client.acquire("f/1", session=s)
            wait_agree(lport, fport)
            # Reads on the follower, from its own machine.
            # Without READONLY a follower sends reads to the leader (the client reads its writes).
            reply = command(fport, "LOCK.INFO", "f/1", readonly=False)
            assert isinstance(reply, Moved) and reply.address == cc.addresses[lead], reply
            info = as_map(command(fport, "LOCK.INFO", "f/1"))
            holder = as_map(info[b"holders"][0])
            assert (holder[b"session"], holder[b"token"]) == (s.id, grant.token)
            assert as_map(command(fport, "SESSION.INFO", s.id))[b"contender_count"] == 1
            assert command(fport, "LOCKS.KEYS", "f/") == [b"f/1"]
            assert command(fport, "LOCKS.REVISION") == command(lport, "LOCKS.REVISION")
            fi = cluster_info(fport)
            assert fi["role"] == "follower" and fi["replica"] == "ready"
            assert int(fi["applied_revision"]) == command(lport, "LOCKS.REVISION")
            # Writes still go to the leader.
            reply = command(fport, "LOCK.TRY", "f/2", s.credential)
            assert isinstance(reply, Moved) and reply.address == cc.addresses[lead], reply

            # A watch on the follower sees what the leader commits, in order.
            with socket.create_connection(("127.0.0.1", fport), timeout=10) as sock:
                reader = new_reader()
                sock.sendall(pack(["READONLY"]) + pack(["WATCH", "f/"]))
                while (item := reader.gets()) is False:
                    reader.feed(sock.recv(1 << 16))
                assert item == b"OK"  # READONLY's
                pushes: list[Any] = []
                while len(pushes) < 3:
                    while (item := reader.gets()) is False:
                        reader.feed(sock.recv(1 << 16))
                    pushes.append(item)
                    if len(pushes) == 1:
                        assert item == b"OK"
                        second = client.acquire("f/2", session=s)
                        client.release(grant)
                kinds = [(p[2], p[3]) for p in pushes[1:]]
                assert kinds == [(b"grant", b"f/2"), (b"release", b"f/1")], pushes
                assert pushes[1][1] < pushes[2][1]  # revisions rise
                assert as_map(pushes[1][4])[b"token"] == second.token


def test_wiped_follower_rejoins_from_the_etcd_snapshot_byte_for_byte(cluster: EtcdCluster, tmp_path: Path) -> None:
    with CoordCluster(cluster, tmp_path) as cc:
        lead = cc.settled()
        follow = 1 - lead
        lport, fport = cc.servers[lead].port, cc.servers[follow].port
        with Client([cc.addresses[lead]]) as client:
            work(client, "a")
            wait_agree(lport, fport)
            cc.kill(follow)
            shutil.rmtree(cc.servers[follow].data_dir)
            work(client, "b")
            # A snapshot in etcd, the log below it deleted, then more records after it.
            assert command(lport, "CLUSTER.SNAPSHOT") > 0
            work(client, "c")
            cc.restart(follow)
            index, revision, _ = wait_agree(lport, fport)
            assert index > 0 and revision > 0
            # Loaded from etcd's snapshot (its data dir is empty), not replayed from record 1.
            assert cluster_info(fport)["replica_loaded_from"].startswith("etcd:")
            # It follows on: a new grant shows up there too.
            token = client.acquire("d/1", ttl=60).token
            wait_agree(lport, fport)
            holder = as_map(as_map(command(fport, "LOCK.INFO", "d/1"))[b"holders"][0])
            assert holder[b"token"] == token


def test_follower_restarts_from_its_local_snapshot_unless_etcd_truncated_past_it(
        cluster: EtcdCluster, tmp_path: Path) -> None:
    with CoordCluster(cluster, tmp_path) as cc:
        lead = cc.settled()
        follow = 1 - lead
        lport, fport = cc.servers[lead].port, cc.servers[follow].port
        fsrv = cc.servers[follow]
        with Client([cc.addresses[lead]]) as client:
            work(client, "a")
            wait_agree(lport, fport)
            saved = state(fport)[0]  # type: ignore[index]
            fsrv.stop(signal.SIGTERM)  # a clean stop writes the local snapshot
            assert (fsrv.data_dir / LOCAL_SNAPSHOT).exists()
            work(client, "b")
            cc.restart(follow)
            wait_agree(lport, fport)
            assert cluster_info(fport)["replica_loaded_from"] == f"local:{saved}"

            # Stopped again; meanwhile the leader truncates the log past its snapshot:
            # it must not follow on from there (records are gone), but load etcd's.
            fsrv.stop(signal.SIGTERM)
            work(client, "c")
            command(lport, "CLUSTER.SNAPSHOT")
            work(client, "d")
            cc.restart(follow)
            wait_agree(lport, fport)
            assert cluster_info(fport)["replica_loaded_from"].startswith("etcd:")


def test_paused_follower_whose_records_were_truncated_reloads_and_agrees(
        cluster: EtcdCluster, tmp_path: Path) -> None:
    with CoordCluster(cluster, tmp_path) as cc:
        lead = cc.settled()
        follow = 1 - lead
        lport, fport = cc.servers[lead].port, cc.servers[follow].port
        fsrv = cc.servers[follow]
        with Client([cc.addresses[lead]]) as client:
            work(client, "a")
            wait_agree(lport, fport)
            fsrv.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
            try:
                for tag in "bcd":
                    work(client, tag)
                    command(lport, "CLUSTER.SNAPSHOT")  # each compacts etcd past the watch
            finally:
                fsrv.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
            work(client, "e")
            wait_agree(lport, fport, timeout=20)
