"""The public API is typed: mypy --strict passes and every .pyi stub matches its module."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coordcore import _native

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict_on_the_package() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", _native.COMPILED)
def test_stub_matches_native_module(name: str) -> None:
    result = subprocess.run([sys.executable, "-m", "mypy.stubtest", f"coordcore._native.{name}"],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stubs_and_marker_ship_beside_the_modules() -> None:
    package = ROOT / "coordcore"
    assert (package / "py.typed").exists()
    for name in _native.COMPILED:
        assert (package / "_native" / f"{name}.pyi").exists(), name


# A user's script: one function fences writes with the Grant of any of the three ways
# to take a lock (embedded, blocking client, asyncio client), and hands a client's
# grant to the embedded service's release. mypy --strict must accept it as written.
USER_SCRIPT = '''
import asyncio

import coordcore
from coordcore import AsyncClient, Client, Grant, Leader, LockService, SessionLike
from coordcore.client import AsyncSession, Election, Session


def fence(grant: Grant) -> tuple[bytes, int]:
    return grant.key, grant.token


def describe(session: SessionLike) -> str:
    session.on_lost(lambda reason: print(session.id, reason))()
    return f"{session.id} ttl={session.ttl} expired={session.expired}"


def still_mine(session: SessionLike, grant: Grant) -> bool:
    return session.holds(grant)


def leader_value(leader: Leader | None) -> bytes:
    return b"" if leader is None else leader.value


def blocking(port: int) -> list[Grant]:
    with Client(port=port) as client:
        session: Session = client.session(ttl=5)
        describe(session)
        with client.lock("jobs/42", session=session, reentrant=True) as held:
            fence(held)
            still_mine(session, held)
        reason: str | None = session.done.result() if session.done.done() else None
        election: Election = client.election("leader")
        leader_value(election.leader())
        grant = client.acquire(b"jobs/43", timeout=1.0)
        return [held, grant]


async def embedded_and_async(port: int) -> None:
    async with LockService.in_memory() as svc:
        session = await svc.open_session(ttl=5)
        describe(session)
        async with svc.lock("jobs/42", session) as held:
            fence(held)
        leader_value(svc.leader("leader"))
        grants: list[coordcore.Grant] = [held]
        async with AsyncClient(port=port) as client:
            asession: AsyncSession = await client.session(ttl=5)
            describe(asession)
            async with client.lock("jobs/42") as remote:
                grants.append(remote)
            leader_value(await client.election("leader").leader())
        for grant in grants:
            fence(grant)
            await svc.release(grant)  # the one Grant type: the service takes any grant


asyncio.run(embedded_and_async(7379))
'''


def test_mypy_strict_accepts_one_grant_type_across_service_and_clients(tmp_path: Path) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT)
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                             "--cache-dir", str(tmp_path / "cache"), str(script)],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# What a user's own project sees: run from its directory (not this tree's), with no
# PYTHONPATH, mypy must find the installed coordcore (an editable install from
# ./dev setup, or the wheel: wheels/build runs this test in the wheel's venv) and
# type-check against it, so the one wrong line below is its one error.
USER_PROJECT = """
from coordcore import Snowflake

ids = Snowflake(1)
good: int = ids.next_id()
wrong: str = ids.next_id()
"""


def test_mypy_strict_finds_the_installed_package_from_a_users_directory(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(USER_PROJECT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                             "--cache-dir", str(tmp_path / "cache"), "app.py"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    out = result.stdout + result.stderr
    assert "Cannot find implementation or library stub" not in out, \
        "mypy cannot see the installed coordcore (an import-hook editable install? ./dev setup installs " \
        "it with editable_mode=compat):\n" + out
    assert out.count("error:") == 1 and 'app.py:6: error: Incompatible types in assignment (expression has ' \
        'type "int", variable has type "str")' in out, out
