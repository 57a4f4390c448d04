"""Network cuts between single processes on loopback, for the nemesis.

Every process of a test listens on 127.0.0.x, and the kernel gives every loopback
connection the source address 127.0.0.1, so an iptables rule cannot tell who sends by
address. It can by cgroup: each process is started inside a cgroup (v2) of its own
(:meth:`NetCut.prefix`, a command prefix, so every socket it ever makes belongs to the
group), and a cut is a rule that drops the group's outgoing TCP packets
to an address and port. Dropping one side's packets stops the connection both ways (no
data, no ACKs get through), as a real partition does; healing deletes the rules and
TCP recovers by retransmission.

Needs root, iptables with the cgroup match and a writable cgroup v2 hierarchy;
:func:`unavailable` says what is missing. Rules and groups carry the run's name and
are removed by :meth:`NetCut.close`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

__all__ = ["NetCut", "unavailable"]


def _cgroup2_root() -> Path | None:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
    return None


def unavailable() -> str | None:
    """Why cuts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network cuts need root (iptables, cgroups)"
    if shutil.which("iptables") is None:
        return "iptables is not installed (Debian: apt-get install iptables)"
    root = _cgroup2_root()
    if root is None or not os.access(root, os.W_OK):
        return "no writable cgroup v2 hierarchy"
    probe = subprocess.run(["iptables", "-m", "cgroup", "--help"], capture_output=True, text=True)
    if probe.returncode != 0 or "--path" not in probe.stdout:
        return "iptables has no cgroup match"
    return None


class NetCut:
    """Groups of processes and the cuts between them (see the module docs)."""

    def __init__(self) -> None:
        why = unavailable()
        if why is not None:
            raise RuntimeError(why)
        root = _cgroup2_root()
        assert root is not None
        self._root = root
        self.name = f"coordcore-cut-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        (root / self.name).mkdir()
        self._rules: list[list[str]] = []

    def prefix(self, group: str) -> list[str]:
        """A command prefix that runs the rest of the command line in ``group`` (made if
        new): a shell that moves itself into the group, then execs the command. (Not a
        ``preexec_fn``: Python code between fork and exec in a process with gRPC
        threads can die there.)"""
        path = self._root / self.name / group
        path.mkdir(exist_ok=True)
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(path / "cgroup.procs")]

    def cut(self, group: str, host: str, port: int) -> None:
        """Drop what ``group``'s processes send to ``host:port`` (TCP)."""
        rule = ["OUTPUT", "-m", "cgroup", "--path", f"{self.name}/{group}", "-p", "tcp", "-d", host,
                "--dport", str(port), "-j", "DROP"]
        subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)
        self._rules.append(rule)

    def heal(self) -> None:
        """Remove every cut."""
        while self._rules:
            subprocess.run(["iptables", "-D", *self._rules.pop()], check=False, capture_output=True)

    @property
    def cuts(self) -> int:
        return len(self._rules)

    def close(self) -> None:
        """Heal, then remove the groups (their processes must have exited: a group that
        still has one is left, and said so)."""
        self.heal()
        base = self._root / self.name
        left = []
        for group in sorted(p for p in base.iterdir() if p.is_dir()):
            try:
                group.rmdir()
            except OSError:
                left.append(group.name)
        if left:
            raise RuntimeError(f"cgroups still in use: {left} under {base}")
        base.rmdir()
