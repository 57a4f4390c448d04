"""SHUTDOWN and CLIENT LIST/KILL on a live server: what they do, and who may (admin,
once users exist)."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hiredis
from tests.server.ccserver import Raw, ServerProc, serve  # noqa: F401 (serve is a fixture)
from tests.server.test_acl import _user

Serve = Callable[..., ServerProc]


def _err(reply: Any, code: str) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).split()[0] == code


def test_shutdown_stops_as_sigterm_does_and_the_state_survives(serve: Serve, tmp_path: Path) -> None:
    data = tmp_path / "shut"
    srv = serve(data=data)
    with Raw(srv.port) as raw:
        handle = raw.command("SESSION.OPEN", "60")
        token = raw.command("LOCK.TRY", "shut/k", handle)
        assert _err(raw.command("SHUTDOWN", "ABORT"), "BADARG")  # refused, and nothing stops
        assert raw.command("PING") == b"PONG"
        raw.send(b"SHUTDOWN NOSAVE\r\n")
        assert raw.closed_by_server(20)
    assert srv.proc is not None and srv.proc.wait(20) == 0
    log = srv.log()
    assert "SHUTDOWN requested" in log and "lock service closed" in log and "event=stopped" in log, log
    again = serve(data=data)
    with Raw(again.port) as raw:
        info = raw.command("LOCK.INFO", "shut/k")
        fields = dict(zip(info[::2], info[1::2]))
        assert fields[b"holder_count"] == 1 and raw.command("LOCK.TRY", "shut/k2", handle) > token


def test_redis_cli_shutdown(serve: Serve) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        return  # covered by the raw test above; test_redis_tools says why redis-cli is missing
    srv = serve()
    subprocess.run([cli, "-p", str(srv.port), "SHUTDOWN", "SAVE"], capture_output=True, timeout=30)
    assert srv.proc is not None and srv.proc.wait(20) == 0


def test_only_admins_list_kill_and_shut_down_once_users_exist(serve: Serve, tmp_path: Path) -> None:
    acl = tmp_path / "acl.toml"
    acl.write_text(_user("admin", "adminpw") + _user("bob", "bobpw", commands=["locks"]))
    srv = serve("--acl-file", str(acl))
    with Raw(srv.port) as bob, Raw(srv.port) as admin:
        assert _err(bob.command("SHUTDOWN"), "NOAUTH")
        assert bob.command("AUTH", "bob", "bobpw") == b"OK" and admin.command("AUTH", "admin", "adminpw") == b"OK"
        bob_id = bob.command("CLIENT", "ID")
        assert b"user=bob" in bob.command("CLIENT", "INFO")  # its own line: everyone's
        for request in (("CLIENT", "LIST"), ("CLIENT", "KILL", "ID", str(bob_id)), ("SHUTDOWN",)):
            assert _err(bob.command(*request), "NOPERM"), request
        assert bob.command("PING") == b"PONG"
        lines = admin.command("CLIENT", "LIST").decode().splitlines()
        assert any(f"id={bob_id} " in line and "user=bob" in line for line in lines), lines
        assert admin.command("CLIENT", "KILL", "USER", "bob") == 1
        assert bob.closed_by_server(10)
        admin.send(b"SHUTDOWN\r\n")
        assert admin.closed_by_server(20)
    assert srv.proc is not None and srv.proc.wait(20) == 0
