"""Real etcd members on loopback, for tests, benchmarks and ``./dev cluster``.

It lives in the package, not under ``tests/``, because three users need the same thing:
the cluster tests, the bench scripts and the "try it in one command" cluster (issue 11,
item 8). Nothing in the serving path imports it.

Each member binds its own loopback address (127.0.0.11, .12, .13 by default), so a test
can later cut exactly one pair of members with an iptables rule. Ports are picked at
random per cluster from 20000-32767: below Linux's ephemeral range, so no outgoing
connection of another process can be holding one, and random so that clusters of tests
running side by side do not collide (a port found taken is skipped).

Every process is started by this object, stopped by its PID only, and dies with the
process that started it (``PR_SET_PDEATHSIG``) so a killed test run leaves no member
behind::

    with EtcdCluster(tmp_path) as cluster:
        cluster.endpoints          # ["127.0.0.11:23417", ...]
        cluster.kill(cluster.leader_index())
        cluster.restart(0)
"""
from __future__ import annotations

import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["EtcdCluster", "Member", "etcd_binary", "spawn"]

_PR_SET_PDEATHSIG = 1


def etcd_binary() -> str | None:
    """The etcd server binary on PATH (Debian's ``etcd-server``), or None."""
    return shutil.which("etcd")


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. The signal fires when the *thread* that
    # forked exits, so start clusters from a long-lived thread (tests' main thread).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(argv: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` so that it dies with this process (``PR_SET_PDEATHSIG``).

    Through util-linux's ``setpriv --pdeathsig`` where it exists: a Python ``preexec_fn``
    makes the child run Python between fork and exec, and with gRPC threads alive in this
    process (an in-process etcd client) the child sometimes died there, before its exec.
    The setting survives ``exec``, and setpriv execs the program in the same process."""
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return subprocess.Popen([setpriv, "--pdeathsig", "KILL", *argv], **popen)
    return subprocess.Popen(list(argv), preexec_fn=_die_with_parent, **popen)


def _free_port(host: str, taken: set[int], rng: random.Random) -> int:
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError(f"no free port found on {host}")


@dataclass
class Member:
    """One etcd member: its addresses, data directory, log file and process."""

    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    paused: bool = False

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client URL, as :class:`coordcore.cluster.Etcd` takes it."""
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """A cluster of ``size`` etcd members under ``base_dir`` (see the module docs).

    ``heartbeat_ms`` and ``election_ms`` are etcd's own settings (defaults 100 and
    1000); the shortest lease etcd grants is about 1.5 x ``election_ms``.
    """

    def __init__(self, base_dir: str | os.PathLike[str], size: int = 3, *,
                 hosts: Sequence[str] | None = None, heartbeat_ms: int = 100,
                 election_ms: int = 1000, extra_args: Sequence[str] = (),
                 prefix: Callable[[Member], Sequence[str]] | None = None) -> None:
        binary = etcd_binary()
        if binary is None:
            raise FileNotFoundError("etcd is not installed (Debian: apt-get install etcd-server)")
        self.binary = binary
        hosts = list(hosts) if hosts is not None else [f"127.0.0.{11 + i}" for i in range(size)]
        if len(hosts) != size:
            raise ValueError(f"{size} members need {size} hosts, got {hosts!r}")
        self.base_dir = Path(base_dir)
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.extra_args = list(extra_args)
        #: A command each member's etcd runs under (a test may place it in a cgroup).
        self.prefix: Callable[[Member], Sequence[str]] = prefix or (lambda m: ())
        rng = random.Random()
        taken: set[int] = set()
        self.members = []
        for i, host in enumerate(hosts):
            name = f"m{i}"
            self.members.append(Member(
                name=name, host=host, client_port=_free_port(host, taken, rng),
                peer_port=_free_port(host, taken, rng), data_dir=self.base_dir / name,
                log_path=self.base_dir / f"{name}.log"))
        # A token unique to this cluster: members of another test's cluster never join it.
        self.token = f"coordcore-{os.getpid()}-{rng.getrandbits(32):08x}"

    # --- life cycle ----------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        """Start every member and wait until all of them answer healthy."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:
            for i in range(len(self.members)):
                self._spawn(i)
            self.wait_healthy(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, i: int) -> None:
        m = self.members[i]
        if m.running:
            raise RuntimeError(f"member {m.name} is already running")
        initial = ",".join(f"{o.name}={o.peer_url}" for o in self.members)
        args = [
            self.binary, "--name", m.name, "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", initial, "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", str(self.heartbeat_ms), "--election-timeout", str(self.election_ms),
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
            *self.extra_args,
        ]
        log = open(m.log_path, "ab")
        try:
            m.proc = spawn([*self.prefix(m), *args], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        m.paused = False

    def stop(self) -> None:
        """Stop every member this object started (by PID), also paused ones."""
        for m in self.members:
            self._stop_member(m, sig=signal.SIGTERM)

    def _stop_member(self, m: Member, sig: signal.Signals) -> None:
        proc = m.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            if m.paused:
                proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        m.proc = None
        m.paused = False

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- faults --------------------------------------------------------------------

    def kill(self, i: int) -> None:
        """``kill -9`` member ``i`` (a crash: nothing flushed that etcd had not fsynced)."""
        self._stop_member(self.members[i], sig=signal.SIGKILL)

    def pause(self, i: int) -> None:
        """SIGSTOP member ``i``: its sockets stay open and silent (a stalled VM)."""
        m = self.members[i]
        if not m.running or m.proc is None:
            raise RuntimeError(f"member {m.name} is not running")
        m.proc.send_signal(signal.SIGSTOP)
        m.paused = True

    def resume(self, i: int) -> None:
        m = self.members[i]
        if m.proc is not None and m.paused:
            m.proc.send_signal(signal.SIGCONT)
        m.paused = False

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start member ``i`` again on its data directory (kill it first if it runs)."""
        if self.members[i].running:
            self.kill(i)
        self._spawn(i)
        self.wait_healthy([i], timeout=timeout)

    # --- observation ---------------------------------------------------------------

    def _post(self, i: int, path: str, timeout: float = 1.0) -> dict[str, object]:
        req = urllib.request.Request(self.members[i].client_url + path, data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            result: dict[str, object] = json.loads(resp.read())
            return result

    def healthy(self, i: int) -> bool:
        """Member ``i`` is running and answers /health with a leader and a quorum."""
        if not self.members[i].running or self.members[i].paused:
            return False
        try:
            with urllib.request.urlopen(self.members[i].client_url + "/health", timeout=1.0) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def wait_healthy(self, indices: Sequence[int] | None = None, timeout: float = 30.0) -> None:
        indices = range(len(self.members)) if indices is None else indices
        deadline = time.monotonic() + timeout
        for i in indices:
            while not self.healthy(i):
                m = self.members[i]
                if not m.running:
                    raise RuntimeError(f"etcd member {m.name} exited: {self.log_tail(i)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"etcd member {m.name} not healthy after {timeout}s: {self.log_tail(i)}")
                time.sleep(0.1)

    def leader_index(self, timeout: float = 10.0) -> int:
        """The index of etcd's current Raft leader, as a running member reports it."""
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.members):
                if not m.running or m.paused:
                    continue
                try:
                    status = self._post(i, "/v3/maintenance/status")
                except (OSError, ValueError):
                    continue
                leader = str(status.get("leader", "0"))
                for j in range(len(self.members)):
                    if self.members[j].running and self._member_id(j) == leader:
                        return j
            if time.monotonic() > deadline:
                raise TimeoutError("no etcd leader found")
            time.sleep(0.1)

    def _member_id(self, i: int) -> str | None:
        try:
            header = self._post(i, "/v3/maintenance/status").get("header")
        except (OSError, ValueError):
            return None
        return str(header.get("member_id")) if isinstance(header, dict) else None

    def log_tail(self, i: int, lines: int = 20) -> str:
        try:
            text = self.members[i].log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def db_size(self, i: int) -> int:
        """Member ``i``'s backend database size in bytes (what the quota limits)."""
        return int(str(self._post(i, "/v3/maintenance/status").get("dbSize", 0)))
