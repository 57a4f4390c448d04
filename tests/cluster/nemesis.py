"""A fault run on a cluster, in the spirit of Jepsen: client processes contend for a few
keys through the public sync API (``Client([servers])``, tests/fault/client_worker.py)
while a nemesis injects, one after another in a seeded order:

* ``kill-leader``: ``kill -9`` the coordcore leader, start it again (as a follower);
* ``pause-leader``: SIGSTOP the coordcore leader past its etcd lease, then SIGCONT;
* ``cut-leader``: cut the coordcore leader off from every etcd member (the clients
  still reach it), until another server leads; then heal;
* ``cut-etcd-leader``: cut etcd's Raft leader off from its peers until etcd elects
  another; then heal;
* ``kill-etcd``: ``kill -9`` an etcd member (sometimes the Raft leader), restart it.

After every coordcore leader fault the harness checks that the old leader no longer
says it leads once a new one does (two leaders at once is a harness error, beside what
the checker finds). Then the fault suite's checker (tests/fault/checker.py) reads the
histories: no two live holders, tokens rising in real-time order and never reused, no
acknowledged grant lost, stale writes refused by the fenced resource.

Cuts are per-process iptables rules (tests/fault/netcut.py). ``run`` serves the suite's
short run (tests/cluster/test_cluster_nemesis.py) and the soak (bench/soak_cluster.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordcore import Client
from coordcore.cluster.testing import EtcdCluster
from tests.cluster.ccluster import CoordCluster, cluster_info
from tests.fault.checker import Report, Snapshot, check
from tests.fault.fence import FenceServer
from tests.fault.harness import lock_snapshot, wait_files
from tests.fault.history import Fault, load_fence_log, load_ops
from tests.fault.netcut import NetCut

__all__ = ["CUTS", "FAULTS", "ClusterRunConfig", "ClusterRunResult", "run"]

ROOT = Path(__file__).resolve().parent.parent.parent
WORKER = ROOT / "tests" / "fault" / "client_worker.py"
FAULTS = ("kill-leader", "pause-leader", "cut-leader", "cut-etcd-leader", "kill-etcd")
#: The faults that need network cuts (tests/fault/netcut.py: root, iptables, cgroups).
CUTS = ("cut-leader", "cut-etcd-leader")


@dataclasses.dataclass
class ClusterRunConfig:
    #: Faults to inject; each at least once, then in a seeded random order until duration.
    faults: tuple[str, ...] = FAULTS
    duration: float = 0.0
    servers: int = 3
    clients: int = 4
    keys: int = 3
    ttl: float = 4.0  # above the failover time: sessions are meant to survive failovers
    waiter_grace: float = 2.0
    acquire_timeout: float = 3.0
    hold: tuple[float, float] = (0.03, 0.2)
    gap: tuple[float, float] = (1.5, 3.0)  # between faults
    #: After the faults, the load goes on (at most ``settle_max`` s) until the clients have
    #: released this many grants: a run that happened to grant little is not vacuous.
    min_releases: int = 0
    settle_max: float = 30.0
    seed: int = 0
    verbose: bool = False


def _releases(hist: Path) -> int:
    """Releases the clients' histories so far record as done (a line being written is skipped)."""
    done = 0
    for path in hist.glob("*.jsonl"):
        releases: set[int] = set()
        for line in path.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("f") == "release":
                releases.add(e["op"])
            elif e.get("type") == "ok" and e.get("op") in releases:
                done += 1
    return done


@dataclasses.dataclass
class ClusterRunResult:
    report: Report
    failovers: list[float]
    etcd_db_bytes: list[int]
    wall: float
    workdir: Path
    harness_errors: list[str]

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.harness_errors

    def text(self) -> str:
        lines = [f"cluster fault run in {self.workdir} ({self.wall:.1f} s wall)", self.report.text(),
                 "failovers (fault to the new leader serving): "
                 + (", ".join(f"{f:.2f} s" for f in self.failovers) or "none"),
                 f"etcd db size per member: {', '.join(f'{b / 1024:.0f} KiB' for b in self.etcd_db_bytes)}"]
        if self.harness_errors:
            lines.append("harness errors: " + "; ".join(self.harness_errors))
        return "\n".join(lines)


def _snapshot(addresses: list[str], keys: list[str]) -> Snapshot:
    with Client(addresses, connect_timeout=2.0) as c:
        return lock_snapshot(c, keys)


class _Nemesis:
    """The faults of one run, over the cluster's processes."""

    def __init__(self, etcd: EtcdCluster, cc: CoordCluster, cut: NetCut | None, rng: random.Random,
                 log: Callable[[str], None]) -> None:
        self.etcd, self.cc, self.cut, self.rng, self.log = etcd, cc, cut, rng, log
        self.faults: list[Fault] = []
        self.failovers: list[float] = []
        self.errors: list[str] = []

    def inject(self, kind: str) -> None:
        getattr(self, "_" + kind.replace("-", "_"))()

    def _new_leader(self, old: int, since: float, *, old_answers: bool = True) -> int:
        """Wait for a leader other than ``old``; check that ``old`` (if it can answer: not
        paused) no longer says it leads then."""
        lead = self.cc.leader(timeout=30.0, exclude=old)
        self.failovers.append(time.monotonic() - since)
        if old_answers and self.cc.alive(old):
            with contextlib.suppress(OSError):
                if cluster_info(self.cc.servers[old].port, timeout=2.0).get("role") == "leader":
                    self.errors.append(f"two leaders: server {old} still says it leads after {lead} took over")
        return lead

    def _kill_leader(self) -> None:
        lead = self.cc.leader()
        sent = time.monotonic()
        stopped = self.cc.kill(lead)
        self._new_leader(lead, stopped)
        # Reaped at `stopped`, successor launched then too: no downtime refund claimed.
        self.faults.append(Fault("kill", "leader", sent, time.monotonic(), stopped=stopped, restart=stopped))
        self.cc.restart(lead)
        self.log(f"killed leader {lead}, restarted it")

    def _pause_leader(self) -> None:
        lead = self.cc.leader()
        proc = self.cc.servers[lead].proc
        assert proc is not None
        start = time.monotonic()
        proc.send_signal(signal.SIGSTOP)
        try:
            self._new_leader(lead, start, old_answers=False)
            time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGCONT)
        self.faults.append(Fault("pause", f"cc{lead}", start, time.monotonic()))
        self._steps_down(lead)
        self.log(f"paused leader {lead} past its lease, resumed it")

    def _steps_down(self, old: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, KeyError):
                if cluster_info(self.cc.servers[old].port, timeout=1.0)["role"] != "leader":
                    return
            time.sleep(0.05)
        self.errors.append(f"server {old} still says it leads {timeout:.0f} s after it lost its lease")

    def _cut_leader(self) -> None:
        assert self.cut is not None
        lead = self.cc.leader()
        start = time.monotonic()
        for m in self.etcd.members:
            self.cut.cut(f"cc{lead}", m.host, m.client_port)
        try:
            self._new_leader(lead, start)
            time.sleep(0.5)
        finally:
            self.cut.heal()
        self.faults.append(Fault("partition", f"cc{lead}", start, time.monotonic()))
        self._steps_down(lead)
        self.log(f"cut leader {lead} off from etcd until another led, healed")

    def _cut_etcd_leader(self) -> None:
        assert self.cut is not None
        j = self.etcd.leader_index()
        mj = self.etcd.members[j]
        start = time.monotonic()
        for k, mk in enumerate(self.etcd.members):
            if k != j:
                self.cut.cut(mj.name, mk.host, mk.peer_port)
                self.cut.cut(mk.name, mj.host, mj.peer_port)
        try:
            deadline = time.monotonic() + 20.0
            while time.monotonic() < deadline:  # the other two elect a leader of their own
                others = [k for k in range(len(self.etcd.members)) if k != j]
                with contextlib.suppress(TimeoutError):
                    if self.etcd.leader_index(timeout=1.0) in others:
                        break
                time.sleep(0.1)
            time.sleep(self.rng.uniform(0.5, 1.5))
        finally:
            self.cut.heal()
        self.faults.append(Fault("partition", f"etcd-{mj.name}", start, time.monotonic()))
        self.etcd.wait_healthy(timeout=30.0)
        self.log(f"cut etcd leader {mj.name} off from its peers, healed")

    def _kill_etcd(self) -> None:
        j = self.etcd.leader_index() if self.rng.random() < 0.5 else self.rng.randrange(len(self.etcd.members))
        start = time.monotonic()
        self.etcd.kill(j)
        stopped = time.monotonic()
        time.sleep(self.rng.uniform(0.5, 2.0))
        restart = time.monotonic()
        self.etcd.restart(j)
        self.faults.append(Fault("kill", f"etcd-{self.etcd.members[j].name}", start, time.monotonic(),
                                 stopped=stopped, restart=restart))
        self.log(f"killed etcd member {self.etcd.members[j].name}, restarted it")


def run(cfg: ClusterRunConfig, workdir: Path) -> ClusterRunResult:
    rng = random.Random(cfg.seed)
    keys = [f"nemesis/{i}" for i in range(cfg.keys)]

    def log(msg: str) -> None:
        if cfg.verbose:
            print(f"[{time.monotonic() - t_begin:7.1f} s] {msg}", flush=True)

    hist, control = workdir / "history", workdir / "control"
    hist.mkdir(parents=True)
    control.mkdir()
    cut = NetCut() if set(cfg.faults) & set(CUTS) else None
    # Every process in a cgroup of its own, so that cuts can name it.
    etcd = EtcdCluster(workdir / "etcd", prefix=None if cut is None else lambda m: cut.prefix(m.name))
    cc = CoordCluster(etcd, workdir, cfg.servers, "--waiter-grace", str(cfg.waiter_grace),
                      prefix=None if cut is None else lambda i: cut.prefix(f"cc{i}"))
    fence = FenceServer(workdir / "fence.jsonl")
    nemesis = _Nemesis(etcd, cc, cut, rng, log)
    children: list[subprocess.Popen[bytes]] = []
    errors = nemesis.errors
    quiesced: Snapshot | None = None
    final: Snapshot | None = None
    db_sizes: list[int] = []
    t_begin = time.monotonic()
    try:
        etcd.start()
        fence.start()
        cc.start()
        cc.settled()
        paths = [p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
        for i in range(cfg.clients):
            wcfg: dict[str, Any] = {
                "process": f"c{i}", "servers": cc.addresses, "fence_port": fence.port, "keys": keys,
                "ttl": cfg.ttl, "acquire_timeout": cfg.acquire_timeout, "hold": list(cfg.hold),
                "seed": rng.randrange(2**32), "history": str(hist / f"c{i}.jsonl"), "control": str(control)}
            with open(workdir / f"c{i}.log", "wb") as out:
                children.append(subprocess.Popen([sys.executable, str(WORKER), json.dumps(wcfg)],
                                                 stdout=out, stderr=subprocess.STDOUT, env=env))
        schedule = list(cfg.faults)
        rng.shuffle(schedule)
        while schedule or time.monotonic() - t_begin < cfg.duration:
            time.sleep(rng.uniform(*cfg.gap))
            nemesis.inject(schedule.pop() if schedule else rng.choice(cfg.faults))
        time.sleep(2.0)
        settle_until = time.monotonic() + cfg.settle_max
        while _releases(hist) < cfg.min_releases and time.monotonic() < settle_until:
            time.sleep(0.5)
        errors += [f"client c{i} exited early: {p.returncode}" for i, p in enumerate(children)
                   if p.poll() is not None]
        (control / "quiesce").touch()
        missing = wait_files([control / f"idle-c{i}" for i in range(cfg.clients)], cfg.acquire_timeout + 30.0)
        errors += [f"never idle: {p.name} (its stacks are in its log)" for p in missing]
        for p in missing:  # where is it stuck? (tests/fault/client_worker.py dumps its threads)
            children[int(p.name.removeprefix("idle-c"))].send_signal(signal.SIGUSR1)
        time.sleep(cfg.waiter_grace + cfg.ttl + 0.5)  # detached waiters withdrawn, strays settled
        quiesced = _snapshot(cc.addresses, keys)
        (control / "close").touch()
        for i, p in enumerate(children):
            try:
                if p.wait(30.0) != 0:
                    errors.append(f"client c{i} exited with {p.returncode}")
            except subprocess.TimeoutExpired:
                errors.append(f"client c{i} did not exit")
        # Sessions closed: after one more failover nothing may be held or queued.
        nemesis.inject("kill-leader")
        time.sleep(cfg.waiter_grace + 1.0)
        final = _snapshot(cc.addresses, keys)
        db_sizes = [etcd.db_size(i) for i in range(len(etcd.members))]
    finally:
        for p in children:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
        if cut is not None:
            cut.heal()
        cc.stop()
        etcd.stop()
        fence.close()
        if cut is not None:
            cut.close()
    ops, _ = load_ops(hist.glob("*.jsonl"))
    report = check(ops, load_fence_log(workdir / "fence.jsonl"), nemesis.faults, quiesced=quiesced, final=final,
                   server_targets={"leader"})
    return ClusterRunResult(report, nemesis.failovers, db_sizes, time.monotonic() - t_begin, workdir, errors)

