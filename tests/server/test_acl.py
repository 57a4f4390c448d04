"""Users and permissions against a real ``coordcore serve`` (issue 12): sessions belong
to the user who opened them, key prefixes and command groups hold on the table path and
on the native lane alike, SIGHUP reloads the ACL, and an open non-loopback bind is refused.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordcore.server.acl import hash_password, parse_acl
from tests.server.ccserver import Raw, ServerProc, serve  # noqa: F401 (serve is a fixture)

Serve = Callable[..., ServerProc]


def _user(name: str, password: str, *, lock: list[str] | None = None, read: list[str] | None = None,
          watch: list[str] | None = None, commands: list[str] | None = None) -> str:
    lines = [f"[users.{name}]", f'password = "{hash_password(password, n=16)}"']
    for field, value in (("lock", lock), ("read", read), ("watch", watch), ("commands", commands)):
        if value is not None:
            lines.append(f"{field} = {value!r}".replace("'", '"'))
    return "\n".join(lines) + "\n"


BASE_ACL = (_user("admin", "adminpw") + _user("alice", "alicepw", lock=["jobs/*"], read=["jobs/"],
                                                watch=["jobs/"], commands=["ids", "locks"])
            + _user("bob", "bobpw", lock=["jobs/*"], read=["jobs/"], watch=["jobs/"], commands=["locks"]))


def _login(port: int, user: str, password: str) -> Raw:
    raw = Raw(port)
    assert raw.command("AUTH", user, password) == b"OK"
    return raw


def _is_error(reply: Any, code: str) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith(code + " ")


@pytest.fixture
def acl_server(serve: Serve, tmp_path: Path) -> ServerProc:
    path = tmp_path / "acl.toml"
    path.write_text(BASE_ACL)
    return serve("--acl-file", str(path), "--unsafe-no-fsync")


def test_auth_whoami_and_hello(acl_server: ServerProc) -> None:
    port = acl_server.port
    with Raw(port) as raw:
        assert _is_error(raw.command("PING"), "NOAUTH")
        assert _is_error(raw.command("AUTH", "alice", "wrong"), "WRONGPASS")
        assert _is_error(raw.command("AUTH", "alicepw"), "WRONGPASS")  # the default user is not in the file
        assert raw.command("AUTH", "alice", "alicepw") == b"OK"
        assert raw.command("ACL", "WHOAMI") == b"alice"
        assert _is_error(raw.command("INFO"), "NOPERM")
        assert raw.command("ID.NEXT") > 0
    with Raw(port) as raw:
        hello = raw.command("HELLO", "3", "AUTH", "bob", "bobpw")
        assert b"coordcore" in hello.values() if isinstance(hello, dict) else b"coordcore" in hello
        assert raw.command("ACL", "WHOAMI") == b"bob"
        # bob has no ids group: the native ID.NEXT is refused too.
        reply = raw.command("ID.NEXT")
        assert _is_error(reply, "NOPERM") and "ID.NEXT" in str(reply)
    log = acl_server.log()
    assert "alicepw" not in log and "wrong" not in log.replace("wrong number", "")
    assert "audit=auth" in log


def test_a_session_belongs_to_the_user_who_opened_it(acl_server: ServerProc) -> None:
    port = acl_server.port
    with _login(port, "alice", "alicepw") as alice, _login(port, "bob", "bobpw") as bob, \
            _login(port, "admin", "adminpw") as admin:
        cred = alice.command("SESSION.OPEN", 30)
        token = alice.command("LOCK.ACQUIRE", "jobs/1", cred)  # the hot lane
        assert token > 0
        revision = admin.command("LOCKS.REVISION")
        # bob may lock jobs/*, but not with alice's session, on either path.
        for args in (("LOCK.RELEASE", "jobs/1", cred), ("LOCK.RELEASE", "jobs/1", cred, "TOKEN", token),
                     ("LOCK.ACQUIRE", "jobs/2", cred), ("LOCK.ACQUIRE", "jobs/2", cred, "TIMEOUT", 100),
                     ("SEM.ACQUIRE", "jobs/s", cred, 1), ("SEM.RELEASE", "jobs/s", cred),
                     ("LOCK.TRY", "jobs/3", cred), ("SESSION.KEEPALIVE", cred), ("SESSION.CLOSE", cred),
                     ("LOCK.CANCEL", "jobs/1", cred, "TICKET", token)):
            reply = bob.command(*args)
            assert _is_error(reply, "NOSESSION"), (args, reply)
        # Nor may the all-powerful admin: ownership is not a permission.
        assert _is_error(admin.command("LOCK.RELEASE", "jobs/1", cred), "NOSESSION")
        assert admin.command("LOCKS.REVISION") == revision
        assert alice.command("LOCK.RELEASE", "jobs/1", cred) == b"OK"
        # A session of the admin is refused to alice likewise.
        other = admin.command("SESSION.OPEN", 30)
        assert _is_error(alice.command("LOCK.ACQUIRE", "jobs/9", other), "NOSESSION")
    # The binding survives a restart (it is in the log).
    acl_server.stop()
    acl_server.start()
    with _login(acl_server.port, "alice", "alicepw") as alice, _login(acl_server.port, "bob", "bobpw") as bob:
        assert _is_error(bob.command("LOCK.ACQUIRE", "jobs/1", cred), "NOSESSION")
        assert alice.command("LOCK.ACQUIRE", "jobs/1", cred) > 0


def test_a_user_limited_to_jobs_cannot_touch_billing(acl_server: ServerProc) -> None:
    port = acl_server.port
    with _login(port, "alice", "alicepw") as alice, _login(port, "admin", "adminpw") as admin:
        cred = alice.command("SESSION.OPEN", 30)
        revision = admin.command("LOCKS.REVISION")
        for args in (("LOCK.ACQUIRE", "billing/1", cred), ("lock.acquire", "billing/1", cred, "TIMEOUT", 50),
                     ("LOCK.TRY", "billing/1", cred), ("SEM.ACQUIRE", "billing/1", cred, 2),
                     ("LOCK.RELEASE", "billing/1", cred), ("SEM.RELEASE", "billing/1", cred),
                     ("ELECT.CAMPAIGN", "billing/lead", cred, "me"), ("WATCH", "billing/"), ("WATCH", ""),
                     ("LOCK.INFO", "billing/1"), ("LOCKS.KEYS",), ("LOCKS.KEYS", "billing/"),
                     ("LOCKS.SCAN", 0), ("LOCKS.SCAN", 0, "MATCH", "bill"), ("SESSION.INFO", 1), ("INFO",)):
            reply = alice.command(*args)
            assert _is_error(reply, "NOPERM"), (args, reply)
        assert "billing/1" in str(alice.command("LOCK.TRY", "billing/1", cred))
        assert admin.command("LOCKS.REVISION") == revision
        assert admin.command("LOCKS.KEYS") == []
        # What alice may do still works, on the hot path too.
        assert alice.command("LOCK.ACQUIRE", "jobs/1", cred) > 0
        assert alice.command("LOCK.RELEASE", "jobs/1", cred) == b"OK"
        assert alice.command("WATCH", "jobs/") == b"OK"
        assert alice.command("UNWATCH") == b"OK"
    assert "audit=noperm" in acl_server.log()


def test_sighup_reloads_removed_user_cut_off_bad_file_kept(acl_server: ServerProc, tmp_path: Path) -> None:
    port = acl_server.port
    path = tmp_path / "acl.toml"
    with _login(port, "alice", "alicepw") as alice, _login(port, "bob", "bobpw") as bob:
        cred = alice.command("SESSION.OPEN", 30)
        assert alice.command("LOCK.ACQUIRE", "jobs/1", cred) > 0  # the lane caches alice's handle
        # alice loses jobs/ (keeps other/), bob is removed.
        path.write_text(_user("admin", "adminpw") + _user("alice", "alicepw", lock=["other/"], read=["other/"],
                                                          watch=["other/"], commands=["locks"]))
        os.kill(acl_server.pid, signal.SIGHUP)
        assert bob.closed_by_server(5.0)
        deadline = time.monotonic() + 5
        while "ACL reloaded" not in acl_server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _is_error(alice.command("LOCK.RELEASE", "jobs/1", cred), "NOPERM")  # hot shape
        assert _is_error(alice.command("LOCK.ACQUIRE", "jobs/2", cred), "NOPERM")
        assert alice.command("LOCK.ACQUIRE", "other/1", cred) > 0
        with Raw(port) as again:
            assert _is_error(again.command("AUTH", "bob", "bobpw"), "WRONGPASS")
        # A bad file keeps the ACL in force, and says why.
        path.write_text("[users.alice\n")
        os.kill(acl_server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "ACL reload failed" not in acl_server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "ACL reload failed" in acl_server.log()
        assert alice.command("LOCK.ACQUIRE", "other/2", cred) > 0
        assert alice.command("ACL", "WHOAMI") == b"alice"


def test_sighup_ends_the_watches_a_user_may_no_longer_hold(acl_server: ServerProc, tmp_path: Path) -> None:
    port = acl_server.port
    with _login(port, "alice", "alicepw") as alice, _login(port, "admin", "adminpw") as admin:
        assert alice.command("HELLO", 3)[b"proto"] == 3
        assert alice.command("WATCH", "jobs/") == b"OK"
        cred = admin.command("SESSION.OPEN", 30)
        admin.command("LOCK.ACQUIRE", "jobs/1", cred)
        assert alice.read()[0] == b"watch"  # the watch streams before the reload
        (tmp_path / "acl.toml").write_text(
            _user("admin", "adminpw") + _user("alice", "alicepw", lock=["other/"], read=["other/"],
                                              watch=["other/"], commands=["locks"]))
        os.kill(acl_server.pid, signal.SIGHUP)
        push = alice.read()
        assert push[0] == b"watch-error" and push[1].startswith(b"NOPERM ")
        assert b"jobs/" in push[1]
        admin.command("LOCK.ACQUIRE", "jobs/2", cred)
        assert alice.command("PING") == b"PONG"  # nothing more streams: the next frame is PING's reply
        assert _is_error(alice.command("WATCH", "jobs/"), "NOPERM")
        assert alice.command("WATCH", "other/") == b"OK"  # still connected, with the new rights
        assert "watches ended: no longer permitted" in acl_server.log()


def test_open_non_loopback_bind_is_refused_unless_insecure(tmp_path: Path) -> None:
    proc = ServerProc(tmp_path / "d", "--host", "0.0.0.0")
    with pytest.raises(RuntimeError):
        proc.start(timeout=15)
    assert "refusing to listen on 0.0.0.0 without authentication" in proc.log()
    ok = ServerProc(tmp_path / "e", "--host", "0.0.0.0", "--insecure", "--unsafe-no-fsync").start()
    try:
        assert "INSECURE" in ok.log()
    finally:
        ok.stop()
    pw = ServerProc(tmp_path / "f", "--host", "0.0.0.0", "--unsafe-no-fsync",
                    env={"COORDCORE_REQUIREPASS": "s3cret-pw"}).start()
    try:
        with Raw(pw.port) as raw:
            assert _is_error(raw.command("AUTH", "nope"), "WRONGPASS")
            assert raw.command("AUTH", "s3cret-pw") == b"OK"
            assert raw.command("ACL", "WHOAMI") == b"default"
            assert "s3cret-pw" not in str(raw.command("INFO"))
        with open(f"/proc/{pw.pid}/cmdline", "rb") as f:
            assert b"s3cret-pw" not in f.read()
    finally:
        pw.stop()
    assert "s3cret-pw" not in pw.log()


# --- random users, prefixes and commands against a model of the ACL -------------------

PREFIXES = ["", "a/", "a/b", "b/", "jobs/"]
KEYS = ["a/1", "a/b1", "b/1", "jobs/1", "c", "a/"]
GROUPS = ["ids", "locks", "admin"]
N_USERS = 6


def _random_acl(seed: int) -> str:
    import random

    rng = random.Random(seed)
    text = _user("admin", "adminpw")
    for i in range(N_USERS):
        pick = lambda: rng.sample(PREFIXES, rng.randint(0, 2)) or []  # noqa: E731
        text += _user(f"u{i}", f"pw{i}", lock=pick(), read=pick(), watch=pick(),
                      commands=rng.sample(GROUPS, rng.randint(0, 3)))
    return text


class _Users:
    def __init__(self, proc: ServerProc, text: str) -> None:
        self.proc = proc
        self.acl = parse_acl(text)
        self.conns = {name: _login(proc.port, name, "adminpw" if name == "admin" else f"pw{name[1:]}")
                      for name in self.acl.users}
        self.admin = self.conns["admin"]
        self.creds = {name: self.admin.command("SESSION.OPEN", 60) for name in self.acl.users}
        for name, conn in self.conns.items():
            if "locks" in self.acl.users[name].groups:
                self.creds[name] = conn.command("SESSION.OPEN", 60)


@pytest.fixture(scope="module")
def random_users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Users]:
    tmp = tmp_path_factory.mktemp("aclmodel")
    text = _random_acl(12)
    (tmp / "acl.toml").write_text(text)
    proc = ServerProc(tmp / "data", "--acl-file", str(tmp / "acl.toml"), "--unsafe-no-fsync").start()
    users = _Users(proc, text)
    yield users
    for conn in users.conns.values():
        conn.close()
    proc.stop()


def _model_allows(users: _Users, name: str, cmd: str, target: str) -> bool:
    """The ACL's meaning, written apart from the server's: group, then prefix."""
    user = users.acl.users[name]
    group = {"ID.NEXT": "ids", "ID.RANGE": "ids", "INFO": "admin"}.get(cmd.upper(), "locks")
    if group not in user.groups:
        return False
    kind = {"LOCK.INFO": "read", "SEM.INFO": "read", "ELECT.LEADER": "read", "LOCKS.KEYS": "read",
            "LOCKS.SCAN": "read", "SESSION.INFO": "read", "WATCH": "watch"}.get(cmd.upper(), "lock")
    if cmd.upper() in ("ID.NEXT", "ID.RANGE", "INFO", "SESSION.OPEN", "LOCKS.REVISION"):
        return True
    if cmd.upper() == "SESSION.INFO":
        target = ""
    prefixes = {"lock": user.lock, "read": user.read, "watch": user.watch}[kind]
    return any(target.encode().startswith(p) for p in prefixes)


def _request(users: _Users, name: str, cmd: str, target: str) -> list[Any]:
    cred = users.creds[name]
    return {
        "LOCK.ACQUIRE": [cmd, target, cred, "TIMEOUT", 20],
        "LOCK.RELEASE": [cmd, target, cred],
        "LOCK.TRY": [cmd, target, cred],
        "SEM.ACQUIRE": [cmd, target, cred, 1, "TIMEOUT", 20],
        "SEM.RELEASE": [cmd, target, cred],
        "ELECT.CAMPAIGN": [cmd, target, cred, "v", "TIMEOUT", 20],
        "LOCK.INFO": [cmd, target], "SEM.INFO": [cmd, target], "ELECT.LEADER": [cmd, target],
        "LOCKS.KEYS": [cmd, target], "LOCKS.SCAN": [cmd, 0, "MATCH", target], "WATCH": [cmd, target],
        "SESSION.INFO": [cmd, 1], "SESSION.OPEN": [cmd, 5], "LOCKS.REVISION": [cmd],
        "ID.NEXT": [cmd], "ID.RANGE": [cmd, 3], "INFO": [cmd],
    }[cmd.upper()]


COMMANDS = ["LOCK.ACQUIRE", "LOCK.RELEASE", "LOCK.TRY", "SEM.ACQUIRE", "SEM.RELEASE", "ELECT.CAMPAIGN",
            "LOCK.INFO", "SEM.INFO", "ELECT.LEADER", "LOCKS.KEYS", "LOCKS.SCAN", "WATCH", "SESSION.INFO",
            "SESSION.OPEN", "LOCKS.REVISION", "ID.NEXT", "ID.RANGE", "INFO"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from([f"u{i}" for i in range(N_USERS)]), st.sampled_from(COMMANDS),
                                st.sampled_from(KEYS + PREFIXES), st.booleans()), min_size=1, max_size=12))
def test_random_users_and_commands_obey_the_acl_model(random_users: _Users,
                                                      steps: list[tuple[str, str, str, bool]]) -> None:
    users = random_users
    for name, cmd, target, lower in steps:
        conn = users.conns[name]
        spelled = cmd.lower() if lower else cmd  # the native lane matches either case
        allowed = _model_allows(users, name, cmd, target)
        revision = users.admin.command("LOCKS.REVISION")
        reply = conn.command(*_request(users, name, spelled, target))
        if allowed:
            assert not _is_error(reply, "NOPERM"), (name, cmd, target, reply)
            if cmd == "WATCH" and reply == b"OK":
                assert conn.command("UNWATCH") == b"OK"
        else:
            assert _is_error(reply, "NOPERM"), (name, cmd, target, reply)
            assert users.admin.command("LOCKS.REVISION") == revision, (name, cmd, target)


def test_an_unknown_user_costs_a_password_check_like_a_known_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """No user enumeration by timing: AUTH of a user who does not exist runs the same
    scrypt check (against a decoy hash of the default cost) as a wrong password does."""
    import asyncio

    from coordcore.server import commands
    from coordcore.server.acl import SCRYPT_N

    checked: list[str] = []
    real = commands.verify_password

    def counting(line: str, password: bytes) -> bool:
        checked.append(line.split("$")[1])  # the scrypt N of the line checked
        return real(line, password)

    monkeypatch.setattr(commands, "verify_password", counting)
    acl = parse_acl(f'[users.alice]\npassword = "{hash_password("alicepw")}"\n')
    auth = commands.Auth(None, commands.AuthGuard(None), acl)
    conn: Any = None  # a failed check never logs the connection in
    assert asyncio.run(auth._check_acl(conn, b"alice", b"wrong")) is False
    assert asyncio.run(auth._check_acl(conn, b"mallory", b"wrong")) is False
    assert asyncio.run(auth._check_acl(conn, b"\xff\xfe", b"wrong")) is False
    assert checked == [str(SCRYPT_N)] * 3
