"""Client and AsyncClient without lock state: commands, errors, pipelines, ID buffers,
reconnects, auth, ID worker spreading."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.server.ccserver import ServerProc, inprocess_server, serve  # noqa: F401 (serve is a fixture)

from coordcore import AsyncClient, Client
from coordcore.errors import AuthFailed, AuthRequired, BadArgument, ConnectionLost, UnknownCommand
from coordcore.ids import decode

Serve = Callable[..., ServerProc]


def test_async_client_commands(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path) as server, AsyncClient(port=server.port) as client:
            assert await client.ping()
            a, b = await client.next_id(), await client.next_id()
            assert b > a and decode(a).worker == 2
            runs = await client.id_range(5000)
            ids = list(runs)
            assert len(ids) == 5000 == len(runs) and ids[0] > b and ids == sorted(ids)
            with pytest.raises(BadArgument):
                await client.id_range(0)
            with pytest.raises(UnknownCommand):
                await client.execute("NOPE")
            # Many tasks share the one connection; replies match their requests.
            results = await asyncio.gather(*(client.execute("ECHO", str(i)) for i in range(500)))
            assert results == [str(i).encode() for i in range(500)]
            pipe = client.pipeline()
            for i in range(100):
                pipe.command("ECHO", i)
            pipe.command("ID.RANGE", -5)
            replies = await pipe.execute(raise_on_error=False)
            assert replies[:100] == [str(i).encode() for i in range(100)]
            assert isinstance(replies[100], BadArgument)
            info = await client.info()
            assert info["worker_id"] == "2"

    run(main(), timeout=30)


def test_async_id_buffer(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path) as server, AsyncClient(port=server.port) as client:
            buf = client.ids(batch=1000)
            ids = [await buf.next_id() for _ in range(5500)]
            assert ids == sorted(ids) and len(set(ids)) == 5500
            await buf.close()
            with pytest.raises(BadArgument):
                client.ids(batch=0)

    run(main(), timeout=30)


def test_async_reconnects_after_connection_loss(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path) as server:
            client = AsyncClient(port=server.port, retries=2, retry_delay=0.01)
            assert await client.ping()
            for conn in list(server.connections):
                conn.abort()
            await asyncio.sleep(0.05)
            assert await client.ping()  # reconnected and retried
        # Server gone: commands fail with ConnectionLost after the retries.
        with pytest.raises(ConnectionLost):
            await client.execute("PING")
        with pytest.raises(ConnectionLost):
            await client.execute("PING", retry=False)
        await client.close()

    run(main(), timeout=30)


def test_async_auth(run: Callable[..., Any], tmp_path: Path) -> None:
    async def main() -> None:
        async with inprocess_server(tmp_path, requirepass="pw") as server:
            async with AsyncClient(port=server.port, password="pw") as client:
                assert await client.ping()
            with pytest.raises(AuthFailed):
                async with AsyncClient(port=server.port, password="bad") as client:
                    pass
            with pytest.raises(AuthRequired):
                async with AsyncClient(port=server.port) as client:
                    pass

    run(main(), timeout=30)


def test_sync_client(serve: Serve) -> None:
    srv = serve(env={"COORDCORE_REQUIREPASS": "pw"})
    with pytest.raises(AuthRequired):
        Client(port=srv.port).ping()
    with Client(port=srv.port, password="pw") as client:
        assert client.ping()
        a = client.next_id()
        assert decode(a).worker == 1
        assert len(client.id_range(4097)) == 4097
        with pytest.raises(BadArgument):
            client.execute("ID.RANGE", "x")
        assert client.ping()  # an error reply leaves the connection usable
        pipe = client.pipeline()
        for i in range(50):
            pipe.command("ECHO", i)
        assert pipe.execute() == [str(i).encode() for i in range(50)]
        # Threads share the client without sharing connections.
        out: list[int] = []

        def worker() -> None:
            ids = client.ids(batch=512)
            got = [ids.next_id() for _ in range(3000)]
            assert got == sorted(got)
            out.extend(got)
            ids.close()

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(out) == 12000 == len(set(out))


def test_sync_reconnects_across_server_restart(serve: Serve, tmp_path: Path) -> None:
    data = tmp_path / "restart"
    srv = serve(data=data)
    port = srv.port
    with Client(port=port, retries=6, retry_delay=0.1) as client:
        first = client.next_id()
        assert srv.stop() == 0
        serve(data=data, port=port)
        assert client.next_id() > first


def test_ids_spread_over_id_workers(serve: Serve) -> None:
    srv = serve("--id-workers", "2")
    with Client(port=srv.port) as client:
        assert len(client.id_workers()) == 2
        buf = client.ids(batch=4096)
        ids = [buf.next_id() for _ in range(4096 * 4)]
        buf.close()
    assert len(set(ids)) == len(ids)
    assert {decode(i).worker for i in ids} == {1, 2}


def test_a_cancelled_first_caller_does_not_cancel_the_connect_under_the_others(
        run: Callable[..., Any], tmp_path: Path) -> None:
    """Found by the fault suite: the first command to connect awaited the connect
    unshielded, so cancelling it (a keep-alive stopped by Session.close) made every other
    command waiting on that connect raise CancelledError."""
    async def main() -> None:
        async with inprocess_server(tmp_path) as server, AsyncClient(port=server.port) as client:
            client._main = None  # as after a lost connection: the next command reconnects
            first = asyncio.ensure_future(client.ping())
            while client._connecting is None:  # the first caller has started the connect
                await asyncio.sleep(0)
            second = asyncio.ensure_future(client.ping())
            await asyncio.sleep(0)  # the second waits on the same connect
            assert client._connecting is not None
            first.cancel()
            assert await second is True
            assert await client.ping() is True

    run(main(), timeout=30)
