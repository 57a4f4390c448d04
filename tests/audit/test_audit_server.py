"""A live `coordcore serve --audit-key` on loopback: users in the history, AUDIT.* on the
wire, and the `coordcore audit` commands on what it wrote."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import hiredis

from coordcore.audit.checkpoint import write_keypair
from tests.server.ccserver import Raw, ServerProc, serve  # noqa: F401 (serve is a fixture)
from tests.server.test_acl import BASE_ACL, _login

Serve = Callable[..., ServerProc]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordcore.cli", "audit", *args], capture_output=True,
                          text=True, timeout=60)


def as_dict(reply: list[Any]) -> dict[bytes, Any]:
    return dict(zip(reply[::2], reply[1::2]))


def test_serve_with_an_audit_key(serve: Serve, tmp_path: Path) -> None:
    key = tmp_path / "audit.key"
    pub = write_keypair(key)
    acl = tmp_path / "acl.toml"
    acl.write_text(BASE_ACL)
    data = tmp_path / "data"
    archive = tmp_path / "archive"
    # Every checkpoint seals a segment, moved to the archive: history reaches into it.
    server = serve("--acl-file", str(acl), "--audit-key", str(key), "--unsafe-no-fsync",
                   "--audit-segment-bytes", "1", "--audit-archive-dir", str(archive), data=data)
    with _login(server.port, "alice", "alicepw") as alice, _login(server.port, "bob", "bobpw") as bob, \
            _login(server.port, "admin", "adminpw") as admin:
        a = alice.command("SESSION.OPEN", "30")
        b = bob.command("SESSION.OPEN", "30")
        token = alice.command("LOCK.ACQUIRE", "jobs/1", a)
        assert bob.command("LOCK.TRY", "jobs/1", b) is None
        assert alice.command("LOCK.RELEASE", "jobs/1", a, "TOKEN", str(token)) == b"OK"
        second = bob.command("LOCK.ACQUIRE", "jobs/1", b)
        assert isinstance(alice.command("AUDIT.CHECKPOINT"), hiredis.ReplyError)  # a limited user
        cp = as_dict(admin.command("AUDIT.CHECKPOINT"))
        assert cp[b"size"] >= 5 and len(cp[b"root"]) == 64
        assert as_dict(admin.command("AUDIT.CHECKPOINT"))[b"size"] == cp[b"size"] + 1  # its tick
        nxt, events = admin.command("AUDIT.HISTORY", "jobs/", "0", str(2**62), "COUNT", "2")
        seen = [as_dict(e) for e in events]
        assert nxt == seen[-1][b"revision"] and len(seen) == 2
        nxt, more = admin.command("AUDIT.HISTORY", "jobs/", "0", str(2**62), "AFTER", str(nxt))
        seen += [as_dict(e) for e in more]
        assert nxt == 0
        assert [(e[b"event"], e[b"user"], e[b"token"]) for e in seen] == [
            (b"granted", b"alice", token), (b"released", b"alice", token), (b"granted", b"bob", second)]
    server.stop()

    assert list(archive.glob("journal-*.log"))
    assert cli("verify", str(data), "--public-key", str(pub)).returncode == 2  # the archive is needed
    done = cli("verify", str(data), "--public-key", str(pub), "--archive", str(archive))
    assert done.returncode == 0 and done.stdout.startswith("ok: "), done.stdout + done.stderr
    export = tmp_path / "export.jsonl"
    assert cli("export", str(data), "-o", str(export), "--archive", str(archive)).returncode == 0
    assert cli("verify", str(export), "--public-key", str(pub)).returncode == 0
    lines = export.read_text().splitlines()
    at = max(i for i, line in enumerate(lines) if '"event":"granted"' in line)
    obj = json.loads(lines[at])
    obj["events"][0]["user"] = "mallory"
    export.write_text("\n".join([*lines[:at], json.dumps(obj), *lines[at + 1:]]) + "\n")
    done = cli("verify", str(export), "--public-key", str(pub))
    assert done.returncode == 1 and f"FAIL line {at + 1}: record {obj['index']}" in done.stdout

    history = cli("history", str(data), "jobs/", "--archive", str(archive))
    assert [json.loads(line)["user"] for line in history.stdout.splitlines()] == ["alice", "alice", "bob"]

    # Another key would sign checkpoints inconsistent with this chain's: refused at start.
    other = tmp_path / "other.key"
    write_keypair(other)
    proc = ServerProc(data, "--acl-file", str(acl), "--audit-key", str(other), "--unsafe-no-fsync")
    argv = [sys.executable, "-m", "coordcore.server", "--port", "0", "--data-dir", str(data),
            "--worker-id", "1", *proc.extra]
    done2 = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done2.returncode != 0 and "signed by key" in done2.stderr


def test_bad_key_files_are_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    done = cli("verify", str(tmp_path), "--public-key", str(junk))
    assert done.returncode == 2 and "not a PEM public key" in done.stderr
    key = tmp_path / "k"
    write_keypair(key)
    done = cli("keygen", str(key))
    assert done.returncode == 2 and "exists" in done.stderr
    done = cli("verify", str(tmp_path), "--public-key", str(key))
    assert done.returncode == 2 and "no audit journal" in done.stderr


def _traffic(port: int) -> None:
    with Raw(port) as c:
        s = c.command("SESSION.OPEN", "30")
        for _ in range(3):
            token = c.command("LOCK.ACQUIRE", "jobs/rotate", s)
            assert c.command("LOCK.RELEASE", "jobs/rotate", s, "TOKEN", str(token)) == b"OK"
        assert c.command("SESSION.CLOSE", s) == b"OK"


def test_a_key_rotation_across_a_real_restart(serve: Serve, tmp_path: Path) -> None:
    from coordcore.audit.checkpoint import Checkpoint, key_id, load_private_key, load_public_key

    old, new, third = tmp_path / "old.key", tmp_path / "new.key", tmp_path / "third.key"
    old_pub, new_pub, _ = write_keypair(old), write_keypair(new), write_keypair(third)
    data = tmp_path / "data"
    server = serve("--audit-key", str(old), "--unsafe-no-fsync", "--audit-every", "4", data=data)
    _traffic(server.port)
    server.stop()  # (a clean stop signs the rest)

    # The new key alone refuses to start: the chain's last checkpoint is the old key's.
    argv = [sys.executable, "-m", "coordcore.server", "--port", "0", "--data-dir", str(data), "--worker-id", "1",
            "--audit-key", str(new), "--unsafe-no-fsync"]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and f"signed by key {key_id(load_public_key(old_pub))}" in refused.stderr
    server = serve("--audit-key", str(new), "--audit-trusted-key", str(old_pub), "--unsafe-no-fsync",
                   "--audit-every", "4", data=data)
    _traffic(server.port)
    server.stop()

    export = tmp_path / "export.jsonl"
    assert cli("export", str(data), "-o", str(export)).returncode == 0
    lines = export.read_text().splitlines()
    ids = [json.loads(line).get("key_id") for line in lines if '"type":"checkpoint"' in line]
    old_id, new_id = key_id(load_public_key(old_pub)), key_id(load_public_key(new_pub))
    assert ids[0] == old_id and ids[-1] == new_id and set(ids) == {old_id, new_id}

    both = cli("verify", str(export), "--public-key", str(new_pub), "--trusted-key", str(old_pub))
    assert both.returncode == 0 and both.stdout.startswith("ok: "), both.stdout + both.stderr
    assert cli("verify", str(data), "--public-key", str(new_pub), "--trusted-key", str(old_pub)).returncode == 0
    alone = cli("verify", str(export), "--public-key", str(new_pub))
    first = json.loads(lines[1])
    assert alone.returncode == 1 and alone.stdout.startswith(
        f"FAIL line 2: checkpoint of size {first['size']} is signed by key {old_id}, which is not a trusted key"), \
        alone.stdout

    # A checkpoint forged with a third key (same fields, its own id and signature), and
    # one that keeps the new key's id under the third key's signature: both fail.
    at = max(i for i, line in enumerate(lines) if '"type":"checkpoint"' in line)
    obj = json.loads(lines[at])
    cp = Checkpoint.from_json(obj)
    forged = Checkpoint.sign(load_private_key(third), first_index=cp.first_index, size=cp.size, root=cp.root,
                             revision=cp.revision, state=cp.state, base=cp.base, time_ms=cp.time_ms)
    sig_only = {**obj, "sig": load_private_key(third).sign(cp.body()).hex()}
    for bad, why in (({**forged.to_json(), "type": "checkpoint", "consistency": obj["consistency"]},
                      f"is signed by key {forged.key_id}, which is not a trusted key"),
                     (sig_only, f"does not carry a valid signature of key {new_id}")):
        export.write_text("\n".join([*lines[:at], json.dumps(bad), *lines[at + 1:]]) + "\n")
        done = cli("verify", str(export), "--public-key", str(new_pub), "--trusted-key", str(old_pub))
        assert done.returncode == 1 and f"FAIL line {at + 1}: checkpoint of size {cp.size} {why}" in done.stdout, \
            done.stdout


def test_audit_metrics_move(serve: Serve, tmp_path: Path) -> None:
    from tests.server.test_metrics import scrape

    key = tmp_path / "audit.key"
    write_keypair(key)
    server = serve("--audit-key", str(key), "--unsafe-no-fsync", "--audit-every", "4", "--metrics-port", "0")
    with Raw(server.port) as c:
        info = c.command("INFO", "server").decode()
    mport = int(next(line.split(":")[1] for line in info.splitlines() if line.startswith("metrics_port:")))

    def audit() -> dict[str, float]:
        return {name: v for (name, _), v in scrape(mport).items() if name.startswith("coordcore_audit_")}

    before = audit()
    _traffic(server.port)
    with Raw(server.port) as c:
        size = as_dict(c.command("AUDIT.CHECKPOINT"))[b"size"]
    after = audit()
    assert after["coordcore_audit_tree_size"] >= size > before["coordcore_audit_tree_size"]
    assert after["coordcore_audit_checkpoint_size"] == size
    # Every 4 records and the one asked for (they were all signed in this run).
    assert after["coordcore_audit_checkpoints_total"] >= before["coordcore_audit_checkpoints_total"] + size // 4
    assert after["coordcore_audit_checkpoint_mismatches_total"] == 0
