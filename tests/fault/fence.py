"""A shared :class:`~coordcore.locks.fencing.FencedResource` behind a tiny 127.0.0.1 server.

Every client process writes through it, so all of them meet one fence, and it logs each
attempt in apply order (under its mutex, so the log order *is* the order the fence saw),
with a monotonic stamp and the verdict. Protocol: one JSON line per request
``{"key", "token", "process"}``, one JSON line back ``{"accepted": bool}``.

``broken=True`` accepts every write (still logging), to show the checker catches a fence
that does not do its job.
"""
from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import IO, Any

from coordcore.errors import NotLockHolder
from coordcore.locks.fencing import FencedResource

__all__ = ["FenceClient", "FenceServer"]


class _Handler(socketserver.StreamRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        for line in self.rfile:
            req = json.loads(line)
            accepted = self.server.owner.apply(str(req["key"]), int(req["token"]), str(req["process"]))
            self.wfile.write(json.dumps({"accepted": accepted}).encode() + b"\n")
            self.wfile.flush()


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FenceServer


class FenceServer:
    def __init__(self, log_path: Path, *, broken: bool = False) -> None:
        self.resource: FencedResource[str] = FencedResource()
        self.broken = broken
        self.log_path = log_path
        self._log: IO[str] = open(log_path, "w", buffering=1, encoding="utf-8")
        self._mutex = threading.Lock()
        self._seq = 0
        self._tcp = _TCPServer(("127.0.0.1", 0), _Handler)
        self._tcp.owner = self
        self.port: int = self._tcp.server_address[1]
        self._thread = threading.Thread(target=self._tcp.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fence-server", daemon=True)

    def start(self) -> FenceServer:
        self._thread.start()
        return self

    def apply(self, key: str, token: int, process: str) -> bool:
        with self._mutex:
            newest = self.resource.newest(key)
            try:
                self.resource.write(key, token, process)
                accepted = True
            except NotLockHolder:
                accepted = False
            if self.broken and not accepted:
                accepted = True  # the deliberately broken fence: admit it anyway
            self._seq += 1
            record: dict[str, Any] = {"seq": self._seq, "t": time.monotonic(), "key": key, "token": token,
                                      "accepted": accepted, "process": process, "newest_before": newest}
            self._log.write(json.dumps(record, separators=(",", ":")) + "\n")
            return accepted

    def close(self) -> None:
        self._tcp.shutdown()
        self._tcp.server_close()
        self._thread.join(5)
        with self._mutex:
            self._log.close()


class FenceClient:
    """One blocking connection to a :class:`FenceServer` (used by a client process)."""

    def __init__(self, port: int, process: str, timeout: float = 10.0) -> None:
        self.process = process
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rwb")

    def write(self, key: str, token: int) -> bool:
        self.file.write(json.dumps({"key": key, "token": token, "process": self.process}).encode() + b"\n")
        self.file.flush()
        line = self.file.readline()
        if not line:
            raise ConnectionError("fence server closed the connection")
        return bool(json.loads(line)["accepted"])

    def close(self) -> None:
        self.file.close()
        self.sock.close()
