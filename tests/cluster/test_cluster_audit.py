"""The audit trail in a cluster: every server journals the records it applied, the
leader signs checkpoints into etcd, the others check them against their own journal
(coordcore.audit.cluster). Real etcd, real ``coordcore serve`` processes, kill -9."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordcore import Client
from coordcore.audit.cluster import ClusterAudit
from coordcore.audit.trail import AuditedStore, AuditTrail
from coordcore.cluster import Keys
from coordcore.cluster.etcd import Etcd, put
from coordcore.errors import Unavailable
from coordcore.audit.checkpoint import read_checkpoints, write_keypair
from coordcore.audit.journal import JOURNAL, JournalReader, chain_entries, segments
from coordcore.audit.merkle import MerkleTree, leaf_hash
from coordcore.cluster.testing import EtcdCluster
from tests.cluster.ccluster import CoordCluster, cluster_info, command


def traffic(addresses: list[str], tag: str, n: int) -> None:
    """Lock cycles through the client (it follows MOVED to the leader)."""
    with Client(addresses) as client:
        s = client.session(ttl=60, keepalive=False)
        for i in range(n):
            client.release(client.acquire(f"{tag}/{i % 7}", session=s))


def audit_info(port: int) -> dict[str, str]:
    return {k: v for k, v in cluster_info(port).items() if k.startswith("audit_")}


def checkpoint(cc: CoordCluster, lead: int) -> int:
    reply = command(cc.servers[lead].port, "AUDIT.CHECKPOINT", readonly=False)
    assert isinstance(reply, list), reply
    return int(dict(zip(reply[::2], reply[1::2]))[b"size"])


def wait_checkpoint(cc: CoordCluster, servers: list[int], size: int, timeout: float = 20.0) -> None:
    """Until every server in ``servers`` kept the checkpoint of ``size``."""
    deadline = time.monotonic() + timeout
    for i in servers:
        while int(audit_info(cc.servers[i].port)["audit_checkpoint_size"]) < size:
            assert time.monotonic() < deadline, f"server {i} never kept checkpoint {size}: " \
                f"{audit_info(cc.servers[i].port)}\n{cc.servers[i].log()[-3000:]}"
            time.sleep(0.05)


def leaves(data_dir: Path) -> list[bytes]:
    audit = data_dir / "audit"
    return [leaf_hash(e.leaf) for e in chain_entries(segments([audit], audit / JOURNAL))]


def verify(data_dir: Path, public: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordcore.cli", "audit", "verify", str(data_dir),
                           "--public-key", str(public)], capture_output=True, text=True, timeout=120)


def test_every_server_journals_the_same_tree_across_a_failover(cluster: EtcdCluster, tmp_path: Path) -> None:
    key = tmp_path / "audit.key"
    public = write_keypair(key)
    with CoordCluster(cluster, tmp_path, 3, "--audit-key", str(key), "--audit-every", "40") as cc:
        first = cc.settled()
        traffic(cc.addresses, "a", 60)
        size1 = checkpoint(cc, first)
        wait_checkpoint(cc, [0, 1, 2], size1)

        cc.kill(first)  # kill -9: its journal has what it appended, nothing signed after
        second = cc.leader(exclude=first)
        live = [i for i in range(3) if i != first]
        traffic([cc.addresses[i] for i in live], "b", 60)
        size2 = checkpoint(cc, second)
        assert size2 > size1
        wait_checkpoint(cc, live, size2)
        cc.restart(first)  # rejoins as a follower: its journal resumes, it checks size2
        wait_checkpoint(cc, [first], size2)
        for i in range(3):
            a = audit_info(cc.servers[i].port)
            assert a["audit_state"] == "ok" and a["audit_mismatches"] == "0", (i, a)
            assert a["audit_first_index"] == "1", a
    # Stopped: each data dir verifies on its own, with the leaders' signatures.
    trees = []
    for s in cc.servers:
        r = verify(s.data_dir, public)
        assert r.returncode == 0 and r.stdout.startswith("ok") and "; replayed" in r.stdout, r.stdout + r.stderr
        cps = read_checkpoints(s.data_dir / "audit")
        assert cps[-1].size >= size2 and size1 in [c.size for c in cps]
        trees.append(leaves(s.data_dir))
    # Roots hashed from each journal agree at every checkpoint size, and at the size all reach.
    common = min(len(t) for t in trees)
    assert common >= size2
    for size in (size1, size2, common):
        roots = set()
        for t in trees:
            m = MerkleTree()
            for h in t[:size]:
                m.append(h)
            roots.add(m.root())
        assert len(roots) == 1, size


def audit_metrics(port: int) -> dict[str, float]:
    """The coordcore_audit_* samples of a server's /metrics."""
    from tests.server.test_metrics import scrape

    with redis.Redis(port=port) as r:
        mport = int(r.info("server")["metrics_port"])
    return {name: v for (name, labels), v in scrape(mport).items() if name.startswith("coordcore_audit_")}


def test_a_follower_whose_journal_was_edited_refuses_the_checkpoint(cluster: EtcdCluster, tmp_path: Path) -> None:
    key = tmp_path / "audit.key"
    write_keypair(key)
    with CoordCluster(cluster, tmp_path, 3, "--audit-key", str(key), "--audit-every", "100000",
                      "--metrics-port", "0") as cc:
        lead = cc.settled()
        traffic(cc.addresses, "a", 20)
        size1 = checkpoint(cc, lead)
        wait_checkpoint(cc, [0, 1, 2], size1)
        traffic(cc.addresses, "b", 20)
        bad, good = [i for i in range(3) if i != lead]
        # Wait until the follower journaled the new records, then edit one on disk: one
        # byte of a record's payload, past the checkpoint it kept (what it rehashes).
        target = size1 + 3
        deadline = time.monotonic() + 20
        while int(audit_info(cc.servers[bad].port)["audit_tree_size"]) <= target:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        path = cc.servers[bad].data_dir / "audit" / JOURNAL
        offsets: list[int] = []
        for e in JournalReader(path).entries(offsets):
            if e.index == target:
                break
        at = offsets[-1] + 16 + 4 + 2  # entry header, leaf length, into the record
        with open(path, "r+b") as f:
            f.seek(at)
            byte = f.read(1)
            f.seek(at)
            f.write(bytes([byte[0] ^ 0x01]))
        size2 = checkpoint(cc, lead)
        wait_checkpoint(cc, [good], size2)
        deadline = time.monotonic() + 20
        while (a := audit_info(cc.servers[bad].port))["audit_mismatches"] == "0":
            assert time.monotonic() < deadline, a
            time.sleep(0.05)
        assert a["audit_state"] == "mismatch" and "altered" in a["audit_last_problem"], a
        assert int(a["audit_checkpoint_size"]) == size1, a  # refused: not kept
        assert "checkpoint refused" in cc.servers[bad].log()
        assert audit_info(cc.servers[good].port)["audit_state"] == "ok"
        assert max(c.size for c in read_checkpoints(cc.servers[bad].data_dir / "audit")) == size1
        m_bad, m_good = (audit_metrics(cc.servers[i].port) for i in (bad, good))
        assert m_bad["coordcore_audit_checkpoint_mismatches_total"] == int(a["audit_mismatches"]) >= 1
        assert m_good["coordcore_audit_checkpoint_mismatches_total"] == 0
        assert m_bad["coordcore_audit_checkpoint_size"] == size1 and m_good["coordcore_audit_checkpoint_size"] == size2
        assert m_good["coordcore_audit_checkpoints_total"] == 2 and m_bad["coordcore_audit_checkpoints_total"] == 1
        assert m_good["coordcore_audit_tree_size"] >= size2
        # Restarted, it refuses the edited journal outright (its checksum no longer holds).
        cc.servers[bad].kill()
        try:
            cc.servers[bad].start(timeout=30)
        except RuntimeError as exc:
            assert "audit journal" in str(exc) and "checksum" in str(exc), str(exc)[-2000:]
        else:
            raise AssertionError("a server with an edited audit journal started")


def test_a_new_leader_signs_nothing_unless_its_journal_extends_the_last_checkpoint(
        run: Any, cluster: EtcdCluster, prefix: str, tmp_path: Path) -> None:
    """ClusterAudit.check_before_signing against a checkpoint in a real etcd: a journal
    with the same records adopts it; one with a record changed, or a checkpoint signed
    by another key, refuses to sign (and says why)."""
    key = Ed25519PrivateKey.generate()
    records = [b"record %d" % i for i in range(1, 30)]

    def trail(name: str, recs: list[bytes], k: Ed25519PrivateKey = key) -> AuditTrail:
        t = AuditTrail.load(tmp_path / name, key=k, fsync=False)
        t.start(1, None)
        for i, r in enumerate(recs, 1):
            t.add(i, r, ())
        return t

    async def main() -> None:
        etcd = await Etcd(cluster.endpoints).connect()
        keys = Keys(prefix)
        try:
            signer = ClusterAudit(trail("signer", records), etcd, keys)
            cp = signer.trail.checkpoint(revision=7, state=None)
            await etcd.txn([], [put(signer.cp_key(cp.size), json.dumps(cp.to_json()).encode())])
            for name, recs, k, refused in [("same", records + [b"more"], key, False),
                                           ("edited", records[:5] + [b"forged"] + records[6:], key, True),
                                           ("other-key", records, Ed25519PrivateKey.generate(), True)]:
                audit = ClusterAudit(trail(name, recs, k), etcd, keys)
                store = audit.store = AuditedStore(_NoLog(), audit.trail, owns_trail=False)
                await audit.check_before_signing(store)
                assert (store.refuse_signing is not None) == refused, (name, store.refuse_signing)
                assert audit.state == ("refusing" if refused else "ok"), name
                assert audit.mismatches == int(refused)
                if refused:
                    assert "does not extend" in (store.refuse_signing or "")
                    wanted = asyncio.get_running_loop().create_future()
                    store._want.append(wanted)  # what AUDIT.CHECKPOINT waits on
                    store.after_batch()
                    assert isinstance(wanted.exception(), Unavailable)
                    assert len(audit.trail.checkpoints) == 0  # nothing signed
                else:
                    assert audit.trail.checkpoints[-1] == cp  # adopted: kept in its own checkpoints
                audit.trail.close()
        finally:
            await etcd.close()

    run(main())


class _NoLog:
    """A LogStore stand-in: check_before_signing never touches the log."""

    max_record_bytes = 1 << 20
    syncs = True
    max_in_flight = 1


def test_a_clean_stop_of_the_leader_signs_a_final_checkpoint(cluster: EtcdCluster, tmp_path: Path) -> None:
    """As a single server does: a leader stopped cleanly (SIGTERM) signs what its term
    added while it still leads, publishes it, and the followers keep it."""
    key = tmp_path / "audit.key"
    public = write_keypair(key)
    with CoordCluster(cluster, tmp_path, 3, "--audit-key", str(key), "--audit-every", "100000") as cc:
        lead = cc.settled()
        traffic(cc.addresses, "a", 10)
        size1 = checkpoint(cc, lead)
        traffic(cc.addresses, "b", 15)  # not covered by any checkpoint yet
        assert cc.servers[lead].stop() == 0
        mine = read_checkpoints(cc.servers[lead].data_dir / "audit")
        journaled = len(leaves(cc.servers[lead].data_dir))
        assert mine[-1].size == journaled > size1 + 15, (mine[-1].size, journaled, size1)
        others = [i for i in range(3) if i != lead]
        wait_checkpoint(cc, others, mine[-1].size)
        for i in others:
            assert [c for c in read_checkpoints(cc.servers[i].data_dir / "audit")
                    if c.size == mine[-1].size] == [mine[-1]]
        done = verify(cc.servers[lead].data_dir, public)
        assert done.returncode == 0 and done.stdout.startswith(f"ok: {journaled} records"), done.stdout + done.stderr
