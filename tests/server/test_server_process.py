"""`coordcore serve` as a real subprocess on loopback, driven by redis-py and redis-cli."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from tests.server.ccserver import Raw, ServerProc, serve  # noqa: F401 (serve is a fixture)

from coordcore.ids import decode

Serve = Callable[..., ServerProc]


def test_redis_py_resp2_and_resp3(serve: Serve) -> None:
    srv = serve()
    for protocol in (2, 3):
        r = redis.Redis(port=srv.port, protocol=protocol)
        assert r.ping() is True
        a = r.execute_command("ID.NEXT")
        b = r.execute_command("ID.NEXT")
        assert isinstance(a, int) and b > a
        assert decode(a).worker == 1
        runs = r.execute_command("ID.RANGE", 5000)
        assert sum(c for _, c in runs) == 5000 and runs[0][0] > b
        d = r.execute_command("ID.DECODE", a)
        fields = d if isinstance(d, dict) else dict(zip(d[::2], d[1::2]))
        assert fields[b"worker"] == 1 and fields[b"id"] == a
        with pytest.raises(redis.ResponseError, match="^BADARG"):
            r.execute_command("ID.RANGE", -1)
        with pytest.raises(redis.ResponseError, match="UNKNOWN"):
            r.execute_command("NO.SUCH")
        info = r.info()
        assert info["role"] == "main" and info["worker_id"] == 1
        pipe = r.pipeline(transaction=False)
        for _ in range(100):
            pipe.execute_command("ID.NEXT")
        ids = pipe.execute()
        assert ids == sorted(ids) and len(set(ids)) == 100
        r.close()


def test_redis_cli(serve: Serve) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        why = "redis-cli is not installed (Debian: apt-get install redis-tools; ./dev test installs it as root)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why + "; redis-py covers the rest")
    srv = serve()

    def run(*args: str) -> str:
        out = subprocess.run([cli, "-h", "127.0.0.1", "-p", str(srv.port), *args], capture_output=True,
                             timeout=30, check=True)
        return out.stdout.decode().strip()

    assert run("PING") == "PONG"
    first = int(run("ID.NEXT"))
    assert decode(first).worker == 1
    assert "worker" in run("ID.DECODE", str(first))
    assert run("ID.RANGE", "3").split() == [str(first + 1), "3"] or int(run("ID.NEXT")) > first
    assert run("NOPE").startswith("UNKNOWN") or "UNKNOWN" in run("NOPE")
    assert "coordcore_version" in run("INFO")


def test_sigterm_and_sigint_exit_cleanly(serve: Serve) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        srv = serve()
        raw = Raw(srv.port)
        assert raw.command("PING") == b"PONG"
        assert srv.stop(sig) == 0
        assert "event=stopped" in srv.log()
        assert raw.closed_by_server()
        raw.close()


def test_ids_survive_restart_and_stay_increasing(serve: Serve, tmp_path: Any) -> None:
    data = tmp_path / "ids-restart"
    srv = serve(data=data)
    with Raw(srv.port) as raw:
        before = raw.command("ID.NEXT")
    assert srv.stop() == 0
    srv2 = serve(data=data)
    with Raw(srv2.port) as raw:
        after = raw.command("ID.NEXT")
    assert after > before


def test_id_worker_processes(serve: Serve) -> None:
    srv = serve("--id-workers", "3")
    raw = Raw(srv.port)
    endpoints = [e.decode() for e in raw.command("ID.WORKERS")]
    assert len(endpoints) == 3 and endpoints[0] == f"127.0.0.1:{srv.port}"
    seen: set[int] = set()
    workers = set()
    for ep in endpoints:
        conn = Raw(int(ep.rsplit(":", 1)[1]))
        runs = conn.command("ID.RANGE", 8192)
        ids = [i for first, count in runs for i in range(first, first + count)]
        assert len(ids) == 8192 and not seen.intersection(ids)
        seen.update(ids)
        workers.add(decode(ids[0]).worker)
        info = conn.command("INFO").decode()
        conn.close()
        if ep != endpoints[0]:
            assert "role:ids" in info
            # ID-only processes hold no lock state and say so.
            other = Raw(int(ep.rsplit(":", 1)[1]))
            err = other.command("SESSION.OPEN", 10)
            assert str(err).startswith("UNKNOWN")
            other.close()
    assert workers == {1, 2, 3}
    children = [int(line.split("pid=")[1].split()[0]) for line in srv.log().splitlines()
                if "id worker started" in line]
    assert len(children) == 2
    raw.close()
    assert srv.stop() == 0
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_id_workers_stop_when_the_main_process_is_killed(serve: Serve) -> None:
    srv = serve("--id-workers", "2")
    (child,) = [int(line.split("pid=")[1].split()[0]) for line in srv.log().splitlines()
                if "id worker started" in line]
    srv.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the ID worker outlived its killed parent")
