"""Test helpers: real `coordcore serve` subprocesses and in-process servers on loopback.

Test modules import what they use from here (``from tests.server.ccserver import ...``;
the ``serve`` fixture too: pytest finds fixtures imported into a test module).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import hiredis
import pytest

from coordcore.server import Server, ServerConfig
from coordcore.server.log import configure


class ServerProc:
    """A `python -m coordcore.server` child on 127.0.0.1 with its log in a file."""

    def __init__(self, data_dir: Path, *extra: str, port: int = 0, worker_id: int | None = 1,
                 env: dict[str, str] | None = None, preexec_fn: Callable[[], object] | None = None,
                 prefix: Sequence[str] = ()) -> None:
        """``prefix``: a command the server runs under (e.g. in a cgroup of its own)."""
        self.data_dir = data_dir
        self.preexec_fn = preexec_fn
        self.prefix = list(prefix)
        self.extra = list(extra)
        self.port = port
        self.worker_id = worker_id
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    def start(self, timeout: float = 30.0) -> ServerProc:
        # worker_id None: none given (cluster mode leases one in etcd).
        ids = [] if self.worker_id is None else ["--worker-id", str(self.worker_id)]
        argv = [*self.prefix, sys.executable, "-m", "coordcore.server", "--port", str(self.port), "--data-dir",
                str(self.data_dir), *ids, "--announce-port", *self.extra]
        env = dict(os.environ)
        env.pop("COORDCORE_REQUIREPASS", None)
        env.update(self.env or {})
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=env, preexec_fn=self.preexec_fn)
        log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                break
            if self.proc.poll() is not None:
                break
        if not line.startswith(b"PORT "):
            self.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{self.log()}")
        self.port = int(line.split()[1])
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            raise AssertionError(f"server ignored signal {sig} for {timeout}s\n{self.log()}") from None
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        return rc

    def kill(self) -> None:
        """Stop it for good: SIGTERM (so it stops its ID workers), then SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Raw:
    """A raw blocking RESP socket for byte-level protocol tests."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = hiredis.Reader()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, *args: Any) -> Any:
        self.send(hiredis.pack_command(args))
        return self.read()

    def read(self) -> Any:
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("closed by server")
            self.reader.feed(data)

    def read_n(self, n: int) -> list[Any]:
        return [self.read() for _ in range(n)]

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True when the server closed the connection (EOF or reset) within timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    return True
                self.reader.feed(data)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.asynccontextmanager
async def inprocess_server(data_dir: Path, **overrides: Any) -> AsyncIterator[Server]:
    """A Server on the running loop (any free port), closed afterwards. Without
    ``locks=True`` it is ID-only (no lock service): enough for protocol tests."""
    locks = overrides.pop("locks", False)
    cfg = ServerConfig(port=0, data_dir=data_dir, worker_id=overrides.pop("worker_id", 2), fsync=False,
                       id_only=not locks, **overrides)
    server = Server(cfg, log=configure("kv", "warning", name="coordcore.server.test"))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def aio_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_reply(reader: asyncio.StreamReader, parser: hiredis.Reader) -> Any:
    while True:
        reply = parser.gets()
        if reply is not False:
            return reply
        data = await reader.read(1 << 16)
        if not data:
            raise ConnectionError("closed by server")
        parser.feed(data)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServerProc]]:
    """``serve(*args, data=None, **kw)`` starts a server subprocess; all are stopped after
    the test and their logs printed (pytest shows them when the test fails)."""
    started: list[ServerProc] = []

    def start(*args: str, data: Path | None = None, **kw: Any) -> ServerProc:
        proc = ServerProc(data or tmp_path / f"data{len(started)}", *args, **kw).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        print(f"--- server log {proc.log_path} ---\n{proc.log()[-20000:]}")
