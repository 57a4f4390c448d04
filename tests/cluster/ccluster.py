"""Helpers of the cluster tests: real ``coordcore serve --etcd`` processes on loopback,
one coordcore cluster (its own key prefix) on the module's etcd cluster."""
from __future__ import annotations

import signal
import socket
import time
import uuid
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

from coordcore.client._wire import new_reader, pack
from coordcore.cluster.testing import EtcdCluster
from tests.server.ccserver import ServerProc

#: The coordcore servers' etcd lease: a dead leader is replaced about this long after.
ETCD_TTL = 2.0


def command(port: int, *args: Any, timeout: float = 10.0, readonly: bool = True) -> Any:
    """One command on a fresh connection (after ``READONLY``, unless not ``readonly``: a
    follower then answers reads from its own state); an error reply is returned as its
    exception."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        reader = new_reader()  # error replies as coordcore's exception classes
        sock.sendall((pack(["READONLY"]) if readonly else b"") + pack(args))
        replies: list[Any] = []
        while len(replies) < 1 + readonly:
            while (reply := reader.gets()) is False:
                data = sock.recv(1 << 16)
                if not data:
                    raise ConnectionError("closed by server")
                reader.feed(data)
            replies.append(reply)
        return replies[-1]


def info(port: int) -> dict[str, str]:
    text = command(port, "INFO").decode()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


class CoordCluster:
    """``n`` coordcore servers of one cluster (name unique per instance) on ``etcd``."""

    def __init__(self, etcd: EtcdCluster, base: Path, n: int = 2, *extra: str,
                 prefix: Callable[[int], Sequence[str]] | None = None) -> None:
        """``prefix(i)``: a command server ``i`` runs under (a test may place it in a cgroup)."""
        self.name = f"t{uuid.uuid4().hex[:10]}"
        self.etcd = etcd
        self.servers = [
            ServerProc(base / f"cc{i}", "--etcd", ",".join(etcd.endpoints), "--cluster", self.name,
                       "--etcd-ttl", str(ETCD_TTL), "--log-level", "info", *extra, worker_id=None,
                       prefix=prefix(i) if prefix is not None else ())
            for i in range(n)]

    def start(self) -> CoordCluster:
        for s in self.servers:
            s.start()
        return self

    def stop(self) -> None:
        for s in self.servers:
            s.kill()

    def __enter__(self) -> CoordCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.servers]

    def alive(self, i: int) -> bool:
        proc = self.servers[i].proc
        return proc is not None and proc.poll() is None

    def leader(self, timeout: float = 20.0, exclude: int | None = None) -> int:
        """The index of the server that serves as leader (INFO says so), waiting for one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(len(self.servers)):
                if i == exclude or not self.alive(i):
                    continue
                try:
                    if cluster_info(self.servers[i].port)["role"] == "leader":
                        return i
                except (OSError, KeyError):
                    pass
            time.sleep(0.02)
        logs = "\n".join(s.log()[-3000:] for s in self.servers)
        raise AssertionError(f"no leader within {timeout}s\n{logs}")

    def settled(self, timeout: float = 20.0) -> int:
        """The leader's index, once every other live server names it as leader."""
        lead = self.leader(timeout)
        want = f"127.0.0.1:{self.servers[lead].port}"
        deadline = time.monotonic() + timeout
        for i in range(len(self.servers)):
            while i != lead and self.alive(i) and cluster_info(self.servers[i].port)["leader"] != want:
                assert time.monotonic() < deadline, f"server {i} does not know the leader"
                time.sleep(0.02)
        return lead

    def kill(self, i: int) -> float:
        """``kill -9`` server ``i``; the monotonic time it was reaped."""
        self.servers[i].stop(signal.SIGKILL)
        return time.monotonic()

    def restart(self, i: int) -> None:
        self.servers[i].start()


def cluster_info(port: int, timeout: float = 10.0) -> dict[str, str]:
    """The ``# Cluster`` section of INFO."""
    text = command(port, "INFO", timeout=timeout).decode()
    section = text.split("# Cluster", 1)[1].split("\r\n\r\n", 1)[0]
    return dict(line.split(":", 1) for line in section.splitlines() if ":" in line)
