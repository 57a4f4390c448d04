"""Start and stop the server peers of the benchmarks on loopback, with temp data dirs.

Each peer is a Debian package installed here with apt-get (after apt-get update) when
missing; a peer that cannot be installed or started is an error, never a skip. Every
process started is recorded and stopped by its PID.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_started: list[subprocess.Popen[bytes]] = []
_dirs: list[Path] = []
_apt_updated = False


def ensure_packages(binaries: dict[str, str]) -> None:
    """``{binary: debian_package}``: apt-get install the packages whose binary is missing."""
    global _apt_updated
    missing = sorted({pkg for binary, pkg in binaries.items() if shutil.which(binary) is None
                      and not Path(binary).exists()})
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"  installing {' '.join(missing)} with apt-get ...", flush=True)
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        _apt_updated = True
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    for binary, pkg in binaries.items():
        if shutil.which(binary) is None and not Path(binary).exists():
            raise SystemExit(f"benchmark peer {binary!r} still missing after installing {pkg}")


def free_port(span: int = 1) -> int:
    """A free loopback port P (with ``span`` > 1: P .. P+span-1 all free, for a server
    that also listens on the next ports)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + span - 1 > 65535:
            continue
        try:
            for extra in range(1, span):
                with socket.socket() as t:
                    t.bind(("127.0.0.1", port + extra))
        except OSError:
            continue
        return port
    raise SystemExit(f"no {span} consecutive free ports on 127.0.0.1")


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what or proc.args} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {port} within {timeout}s")


def start(argv: list[str], *, port: int, what: str, cwd: str | None = None, env: dict[str, str] | None = None,
          log: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "ab") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    _started.append(proc)
    wait_port(port, proc, what=what)
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in _started:
        _started.remove(proc)


def stop_all() -> None:
    """Stop every process started here (by PID) and remove their temp data dirs."""
    for proc in list(_started):
        stop(proc)
    for d in _dirs:
        shutil.rmtree(d, ignore_errors=True)
    _dirs.clear()


def tmpdir(name: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"ccbench-{name}-"))
    _dirs.append(d)
    return d


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds of a process (and its waited-for children: none here)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# --- the peers -------------------------------------------------------------------------


def start_coordcore(*args: str, port: int | None = None) -> tuple[subprocess.Popen[bytes], int, Path]:
    workers = int(args[args.index("--id-workers") + 1]) if "--id-workers" in args else 1
    port = port or free_port(workers)
    data = tmpdir("coordcore")
    argv = [sys.executable, "-m", "coordcore.server", "--port", str(port), "--data-dir", str(data),
            "--worker-id", "1", "--log-level", "warning", *args]
    proc = start(argv, port=port, what="coordcore serve", log=data / "server.log")
    for extra in range(1, workers):  # the ID worker processes start after the main port
        wait_port(port + extra, proc, what="coordcore ID worker")
    return proc, port, data


def start_redis(*, aof: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    ensure_packages({"redis-server": "redis-server", "redis-benchmark": "redis-tools"})
    port = free_port()
    data = tmpdir("redis")
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--dir", str(data),
            "--daemonize", "no", "--protected-mode", "no"]
    if aof:
        argv += ["--appendonly", "yes", "--appendfsync", "always"]
    return start(argv, port=port, what="redis-server"), port


def start_etcd() -> tuple[subprocess.Popen[bytes], int]:
    ensure_packages({"etcd": "etcd-server", "etcdctl": "etcd-client"})
    port, peer = free_port(), free_port()
    data = tmpdir("etcd")
    argv = ["etcd", "--name", "bench", "--data-dir", str(data / "data"),
            "--listen-client-urls", f"http://127.0.0.1:{port}",
            "--advertise-client-urls", f"http://127.0.0.1:{port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"bench=http://127.0.0.1:{peer}", "--log-level", "error"]
    env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
    return start(argv, port=port, what="etcd", env=env, log=data / "etcd.log"), port


def start_zookeeper() -> tuple[subprocess.Popen[bytes], int]:
    jar = "/usr/share/java/zookeeper.jar"
    ensure_packages({jar: "zookeeper", "java": "default-jre-headless"})
    port = free_port()
    data = tmpdir("zk")
    (data / "conf").mkdir()
    (data / "conf" / "zoo.cfg").write_text(
        f"tickTime=2000\ndataDir={data}/data\nclientPort={port}\nclientPortAddress=127.0.0.1\n"
        "admin.enableServer=false\nmaxClientCnxns=0\n4lw.commands.whitelist=*\n")
    (data / "conf" / "log4j.properties").write_text("log4j.rootLogger=ERROR, CONSOLE\n"
                                                     "log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender\n"
                                                     "log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout\n")
    cp = ":".join([str(data / "conf"), jar, *map(str, Path("/usr/share/java").glob("*.jar"))])
    argv = ["java", "-Xmx512m", "-cp", cp, "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            str(data / "conf" / "zoo.cfg")]
    return start(argv, port=port, what="zookeeper", log=data / "zk.log"), port


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, argv in {"redis-server": ["redis-server", "--version"], "etcd": ["etcd", "--version"]}.items():
        if shutil.which(argv[0]):
            out[name] = subprocess.run(argv, capture_output=True, text=True).stdout.split("\n")[0].strip()
    return out
