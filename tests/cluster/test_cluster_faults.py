"""A short fault run on a cluster: client processes contend for three keys through the
public sync API (``Client([servers])``) while the leader is ``kill -9``ed twice (and
comes back as a follower); the fault suite's checker (tests/fault/checker.py) then reads
their histories: no two live holders, tokens rising in real-time order, no acknowledged
grant lost, fenced writes refused only when stale.

The kills are given to the checker with no downtime refund (``restart == stopped``):
the new leader does resume the session clock at the last batch's time, but its start
is not observable from outside precisely, and a refund counted short is the sound side.

COORDCORE_TEST_SEED replays a run's schedule (process timing still varies).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from coordcore import Client
from coordcore.cluster.testing import EtcdCluster
from tests.cluster.ccluster import CoordCluster
from tests.fault.checker import Snapshot, check
from tests.fault.fence import FenceServer
from tests.fault.history import Fault, load_fence_log, load_ops

ROOT = Path(__file__).resolve().parent.parent.parent
WORKER = ROOT / "tests" / "fault" / "client_worker.py"

CLIENTS = 4
KEYS = [f"fault/{i}" for i in range(3)]
TTL = 4.0  # above the failover time: sessions are meant to survive it
WAITER_GRACE = 2.0
ACQUIRE_TIMEOUT = 3.0
HOLD = (0.03, 0.2)


def snapshot(addresses: list[str]) -> Snapshot:
    snap: dict[str, dict[str, list[list[int]]]] = {}
    with Client(addresses, connect_timeout=2.0) as c:
        for key in KEYS:
            info = c.lock_info(key)
            snap[key] = {"holders": [[h.session, h.token] for h in info.holders],
                         "waiters": [[w.session, w.ticket] for w in info.waiters]}
    return {k: v for k, v in snap.items() if v["holders"] or v["waiters"]}


def wait_files(paths: list[Path], timeout: float) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(p.exists() for p in paths):
        time.sleep(0.05)
    return [p for p in paths if not p.exists()]


def kill_leader(cc: CoordCluster, faults: list[Fault], failovers: list[float]) -> int:
    lead = cc.leader()
    sent = time.monotonic()
    stopped = cc.kill(lead)
    cc.leader(exclude=lead)
    failovers.append(time.monotonic() - stopped)
    faults.append(Fault("kill", "leader", sent, time.monotonic(), stopped=stopped, restart=stopped))
    return lead


@pytest.mark.slow
def test_locks_hold_across_leader_kills(cluster: EtcdCluster, tmp_path: Path) -> None:
    seed = int(os.environ.get("COORDCORE_TEST_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    hist, control = tmp_path / "history", tmp_path / "control"
    hist.mkdir()
    control.mkdir()
    cc = CoordCluster(cluster, tmp_path, 2, "--waiter-grace", str(WAITER_GRACE))
    fence = FenceServer(tmp_path / "fence.jsonl")
    children: list[subprocess.Popen[bytes]] = []
    faults: list[Fault] = []
    failovers: list[float] = []
    errors: list[str] = []
    quiesced: Snapshot | None = None
    final: Snapshot | None = None
    t_begin = time.monotonic()
    try:
        fence.start()
        cc.start()
        cc.settled()
        paths = [p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
        for i in range(CLIENTS):
            wcfg: dict[str, Any] = {
                "process": f"c{i}", "servers": cc.addresses, "fence_port": fence.port, "keys": KEYS,
                "ttl": TTL, "acquire_timeout": ACQUIRE_TIMEOUT, "hold": list(HOLD), "seed": rng.randrange(2**32),
                "history": str(hist / f"c{i}.jsonl"), "control": str(control)}
            with open(tmp_path / f"c{i}.log", "wb") as out:
                children.append(subprocess.Popen([sys.executable, str(WORKER), json.dumps(wcfg)],
                                                 stdout=out, stderr=subprocess.STDOUT, env=env))
        for _ in range(2):
            time.sleep(rng.uniform(3.0, 5.0))
            lead = kill_leader(cc, faults, failovers)
            cc.restart(lead)  # back, as a follower
        time.sleep(3.0)
        errors += [f"client c{i} exited early: {p.returncode}" for i, p in enumerate(children) if p.poll() is not None]
        (control / "quiesce").touch()
        missing = wait_files([control / f"idle-c{i}" for i in range(CLIENTS)], ACQUIRE_TIMEOUT + 20.0)
        errors += [f"never idle: {p.name}" for p in missing]
        time.sleep(WAITER_GRACE + TTL + 0.5)  # detached waiters withdrawn, strays settled
        quiesced = snapshot(cc.addresses)
        (control / "close").touch()
        for i, p in enumerate(children):
            try:
                if p.wait(20.0) != 0:
                    errors.append(f"client c{i} exited with {p.returncode}")
            except subprocess.TimeoutExpired:
                errors.append(f"client c{i} did not exit")
        # Sessions closed: after one more failover nothing may be held or queued.
        kill_leader(cc, faults, failovers)
        time.sleep(WAITER_GRACE + 1.0)
        final = snapshot(cc.addresses)
    finally:
        for p in children:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
        cc.stop()
        fence.close()
    ops, _ = load_ops(hist.glob("*.jsonl"))
    report = check(ops, load_fence_log(tmp_path / "fence.jsonl"), faults, quiesced=quiesced, final=final)
    text = (f"COORDCORE_TEST_SEED={seed}\n{report.text()}\nfailovers (kill -9 to the new leader serving): "
            f"{', '.join(f'{f:.2f} s' for f in failovers)}; wall {time.monotonic() - t_begin:.1f} s")
    if errors:
        text += "\nharness errors: " + "; ".join(errors)
    print("\n" + text)
    assert not errors, text
    assert report.ok, text
    assert report.grants["released"] >= 20, text  # not vacuous: the run did contend
    assert report.faults["kill"] == 3, text
    # Keep-alives recorded: lease floors rest on them, else every check past open + TTL is void.
    assert report.ops["keepalive ok"] >= CLIENTS, text
