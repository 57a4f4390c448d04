"""``./dev cluster``: a whole cluster on loopback in one command, to try cluster mode.

Starts 3 etcd members (:class:`~coordcore.cluster.testing.EtcdCluster`, on 127.0.0.11-13)
and 3 ``coordcore serve --etcd`` servers on 127.0.0.1, with all their data and logs under
one directory, prints where they listen and how to talk to them, and on Ctrl-C (SIGINT)
or SIGTERM stops every process it started, by PID, servers first::

    python -m coordcore.cluster.up [--dir DIR] [--servers 3] [--base-port 7380]

Every child dies with this process too (``PR_SET_PDEATHSIG``), so a ``kill -9`` of it
leaves nothing behind.
"""
from __future__ import annotations

import argparse
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hiredis

from coordcore.cluster.testing import EtcdCluster, etcd_binary, spawn

__all__ = ["main"]

CLUSTER = "demo"
ETCD_TTL = "2"


class _Server:
    def __init__(self, data_dir: Path, port: int, etcd: list[str]) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir.with_suffix(".log")
        argv = [sys.executable, "-m", "coordcore.server", "--host", "127.0.0.1", "--port", str(port),
                "--data-dir", str(data_dir), "--etcd", ",".join(etcd), "--cluster", CLUSTER,
                "--etcd-ttl", ETCD_TTL, "--announce-port"]
        with open(self.log_path, "ab") as log:
            self.proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        self.port = 0

    def wait_port(self, timeout: float) -> int:
        """The port the server listens on, once it says so (``--announce-port``)."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line.startswith(b"PORT "):
            raise RuntimeError(f"server in {self.data_dir} did not start (see {self.log_path})")
        self.port = int(line.split()[1])
        return self.port

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _role(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            reader = hiredis.Reader()  # the cluster layer uses no client: one INFO by hand
            sock.sendall(b"*2\r\n$4\r\nINFO\r\n$7\r\ncluster\r\n")
            while (reply := reader.gets()) is False:
                data = sock.recv(1 << 16)
                if not data:
                    return ""
                reader.feed(data)
    except OSError:
        return ""
    text = reply.decode() if isinstance(reply, bytes) else ""
    section = text.partition("# Cluster")[2]  # the server section has a role line too
    for line in section.splitlines():
        if line.startswith("role:"):
            return line[5:]
    return ""


def _wait_leader(servers: list[_Server], timeout: float) -> _Server:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in servers:
            if _role(s.port) == "leader":
                return s
        time.sleep(0.1)
    raise RuntimeError("no coordcore server became leader (see the server logs)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="where data and logs go (default: a new temporary directory)")
    parser.add_argument("--servers", type=int, default=3, choices=range(1, 10), metavar="N",
                        help="coordcore servers (default 3)")
    parser.add_argument("--base-port", type=int, default=7380,
                        help="first server's port, the next ones count up (0: any free ports)")
    args = parser.parse_args(argv)
    if etcd_binary() is None:
        print("./dev cluster: etcd is not installed (Debian: apt-get install etcd-server etcd-client)",
              file=sys.stderr)
        return 1
    base = args.dir or Path(tempfile.mkdtemp(prefix="coordcore-cluster-"))
    base.mkdir(parents=True, exist_ok=True)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    etcd = EtcdCluster(base / "etcd")
    servers: list[_Server] = []
    try:
        etcd.start()
        for i in range(args.servers):
            port = args.base_port + i if args.base_port else 0
            servers.append(_Server(base / f"coordcore{i}", port, etcd.endpoints))
        for s in servers:
            s.wait_port(60)
        leader = _wait_leader(servers, 30)
        addrs = [f"127.0.0.1:{s.port}" for s in servers]
        out = [f"coordcore cluster {CLUSTER!r} is up; data and logs in {base}"]
        out += [f"  etcd    {m.endpoint:<22} pid {m.proc.pid if m.proc else '-'}" for m in etcd.members]
        out += [f"  server  {a:<22} pid {s.proc.pid}{'  (leader)' if s is leader else ''}"
                for a, s in zip(addrs, servers)]
        follower = next((s for s in servers if s is not leader), leader)
        out += ["Try:",
                f"  redis-cli -p {leader.port} SESSION.OPEN 30     # a credential, for LOCK.ACQUIRE job <credential>",
                f"  redis-cli -p {follower.port} LOCK.INFO job      # followers answer reads; writes get -MOVED",
                f"  python -c 'from coordcore import Client; c = Client({addrs!r}); print(c.acquire(\"job\", ttl=30))'",
                "Ctrl-C stops them all."]
        print("\n".join(out), flush=True)
        reported: set[int] = set()
        while not stop:
            time.sleep(0.2)
            for i, s in enumerate(servers):
                if s.proc.poll() is not None and i not in reported:
                    reported.add(i)
                    print(f"server {addrs[i]} exited ({s.proc.returncode}); see {s.log_path}", flush=True)
    except RuntimeError as exc:
        print(f"./dev cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        for s in servers:
            s.stop()
        etcd.stop()
    print(f"stopped; data left in {base}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
