"""TLS against a real ``coordcore serve`` (issue 12): redis-cli --tls, redis-py ssl=True
and our clients reach it; without a valid client certificate a --tls-ca server refuses;
plaintext to the TLS port is refused cleanly; a certificate's CN names its ACL user."""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from coordcore import AsyncClient, Client
from coordcore.server.acl import hash_password
from tests.server.ccserver import ServerProc, serve  # noqa: F401 (serve is a fixture)

Serve = Callable[..., ServerProc]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-days", "2", "-subj", f"/CN={name}", cwd=d)


def _signed(d: Path, ca: str, name: str, cn: str, san: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={cn}", cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test CA")
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "rogue")
    _signed(d, "ca", "server", "localhost", "DNS:localhost,IP:127.0.0.1")
    _signed(d, "ca", "alice", "alice", "DNS:alice.example")
    _signed(d, "rogue", "mallory", "alice", "DNS:alice.example")
    return d


def _tls_args(pki: Path, *, mutual: bool) -> list[str]:
    args = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"), "--unsafe-no-fsync"]
    return args + (["--tls-ca", str(pki / "ca.pem")] if mutual else [])


def _client_context(pki: Path, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert is not None:
        ctx.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
    return ctx


def test_redis_cli_redis_py_and_our_clients_over_tls(serve: Serve, pki: Path) -> None:
    srv = serve(*_tls_args(pki, mutual=False), "--id-workers", "2")
    out = subprocess.run(["redis-cli", "--tls", "--cacert", str(pki / "ca.pem"), "-h", "127.0.0.1", "-p",
                          str(srv.port), "PING"], capture_output=True, text=True, timeout=20)
    assert out.stdout.strip() == "PONG", out
    import redis

    r = redis.Redis(host="127.0.0.1", port=srv.port, ssl=True, ssl_ca_certs=str(pki / "ca.pem"))
    assert r.execute_command("ID.NEXT") > 0
    workers = [w.decode() for w in r.execute_command("ID.WORKERS")]
    r.close()
    assert len(workers) == 2
    # The ID worker port speaks TLS too.
    host, port = workers[1].rsplit(":", 1)
    with Client(host, int(port), ssl=_client_context(pki)) as c:
        assert c.next_id() > 0
    with Client(f"rediss://127.0.0.1:{srv.port}", ssl=_client_context(pki)) as c:
        with c.lock("jobs/1") as grant:
            assert grant.token > 0

    async def main() -> None:
        async with AsyncClient("127.0.0.1", srv.port, ssl=_client_context(pki)) as ac:
            assert await ac.next_id() > 0

    import asyncio

    asyncio.run(main())


def test_plaintext_to_a_tls_port_is_refused_cleanly(serve: Serve, pki: Path) -> None:
    srv = serve(*_tls_args(pki, mutual=False))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
        assert b"PONG" not in data
    # The server goes on serving, and says what happened.
    out = subprocess.run(["redis-cli", "--tls", "--cacert", str(pki / "ca.pem"), "-p", str(srv.port), "PING"],
                         capture_output=True, text=True, timeout=20)
    assert out.stdout.strip() == "PONG"
    assert "TLS handshake failed" in srv.log() and "audit=tls" in srv.log()


def test_mutual_tls_refuses_clients_without_a_valid_certificate(serve: Serve, pki: Path, tmp_path: Path) -> None:
    acl = tmp_path / "acl.toml"
    acl.write_text(f'[users.alice]\npassword = "{hash_password("pw", n=16)}"\nlock = ["jobs/"]\n'
                   f'cert_names = ["alice.example"]\ncommands = ["locks", "ids"]\n')
    srv = serve(*_tls_args(pki, mutual=True), "--acl-file", str(acl))
    for cert in (None, "mallory"):  # no certificate; one from another CA with the same names
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with Client("127.0.0.1", srv.port, ssl=_client_context(pki, cert), connect_timeout=5,
                        retries=0) as c:
                c.next_id()
    # alice's certificate logs her in: no password needed, her rights apply.
    with Client("127.0.0.1", srv.port, ssl=_client_context(pki, "alice")) as c:
        assert c.execute("ACL", "WHOAMI") in (b"alice", "alice")
        with c.lock("jobs/1") as grant:
            assert grant.token > 0
    out = subprocess.run(["redis-cli", "--tls", "--cacert", str(pki / "ca.pem"), "--cert", str(pki / "alice.pem"),
                          "--key", str(pki / "alice.key"), "-p", str(srv.port), "ACL", "WHOAMI"],
                         capture_output=True, text=True, timeout=20)
    assert out.stdout.strip() == "alice", out
    assert "TLS handshake failed" in srv.log()


def test_every_handshake_completes_on_the_main_and_id_worker_ports(serve: Serve, pki: Path) -> None:
    """A ClientHello that arrives before the TLS layer took the socket over is not lost
    (with loop.start_tls under uvloop most handshakes stalled until the client gave up)."""
    srv = serve(*_tls_args(pki, mutual=False), "--id-workers", "2")
    with Client("127.0.0.1", srv.port, ssl=_client_context(pki)) as c:
        workers = c.execute("ID.WORKERS")
    ports = [int((w.decode() if isinstance(w, bytes) else w).rsplit(":", 1)[1]) for w in workers]
    assert len(ports) == 2 and srv.port in ports
    for _ in range(25):
        for port in ports:
            with Client("127.0.0.1", port, ssl=_client_context(pki), connect_timeout=3, retries=0) as c:
                assert c.next_id() > 0
