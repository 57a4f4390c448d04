"""The coordcore server: configuration, lifecycle, connections, ID worker processes.

One *main* process owns the lock state machine (the durable lock log in
``<data_dir>/locks``) and serves every command on ``host:port``. With
``id_workers=N`` it also starts N-1 *ID worker* processes on the next ports
(``port+1`` ...), each with its own worker ID (``worker_id+i``) and its own ID state
file; they serve only the connection and ``ID.*`` commands. They share no state with
the main process and need none: an ID's uniqueness comes from its worker ID, and the
lock state machine stays single (one process, one log, one writer). ``ID.WORKERS``
lists every ID endpoint; :meth:`coordcore.client.Client.ids` spreads over them.

>>> cfg = ServerConfig(port=0, data_dir=Path("/tmp/x"))
>>> cfg.host, cfg.max_connections > 0
('127.0.0.1', True)
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import ipaddress
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from coordcore.errors import BadArgument, CoordcoreError, WorkerIdUnavailable
from coordcore.server import commands
from coordcore.server.acl import DEFAULT, load_acl
from coordcore.server.budget import Budget
from coordcore.server.core import CommandTable
from coordcore.server.log import StructLog, configure
from coordcore.server.protocol import Connection, TlsAccept, cert_names

__all__ = ["Server", "ServerConfig", "run_server"]

VERSION = "0.1.0"


@dataclasses.dataclass
class ServerConfig:
    """Everything ``coordcore serve`` can be told (see ``coordcore serve --help``)."""

    host: str = "127.0.0.1"
    port: int = 7379
    data_dir: Path = Path("coordcore-data")
    #: Snowflake worker ID; None: from COORDCORE_WORKER_ID, else 0 (with a warning).
    worker_id: int | None = None
    datacenter_id: int | None = None
    requirepass: str | None = None
    #: Users and their permissions (TOML, see coordcore.server.acl); reloaded on SIGHUP.
    acl_file: Path | None = None
    #: Keep an audit trail in <data_dir>/audit, checkpoints signed with this Ed25519 key
    #: (PEM, ``coordcore audit keygen``), one every audit_every records.
    audit_key: Path | None = None
    audit_every: int = 10_000
    #: Seal the audit journal into a segment past this many bytes (0: never), and hand
    #: sealed segments to a directory or a command (``command PATH``).
    audit_segment_bytes: int = 0
    audit_archive_dir: Path | None = None
    audit_archive_command: str | None = None
    #: Older audit public keys whose checkpoints are still accepted (a rotated --audit-key).
    audit_trusted_keys: tuple[Path, ...] = ()
    #: Listen on a non-loopback address without authentication anyway (warned at start).
    insecure: bool = False
    #: TLS on every port: certificate chain and key (PEM); a CA makes client
    #: certificates required (mutual TLS, the certificate's names mapped to a user).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    max_connections: int = 10_000
    max_request_bytes: int = 1 << 20
    max_args: int = 1024
    max_output_bytes: int = 64 << 20
    write_high_water: int = 256 << 10
    max_id_range: int = 1 << 16
    #: Commands in flight (awaiting their commit) per connection before reading pauses.
    max_inflight: int = 1024
    #: Processes serving IDs (the main one included): ports port .. port+id_workers-1.
    id_workers: int = 1
    #: Serve only connection and ID commands (what the extra ID worker processes do).
    id_only: bool = False
    #: fsync the lock log (off only for tests and caches).
    fsync: bool = True
    backlog: int = 1024
    #: Seconds a shutdown waits for parked requests before cancelling them.
    shutdown_grace: float = 2.0
    #: Seconds a waiter recovered from the lock log (its client's connection died with
    #: the previous process) waits for its client to retry and re-attach.
    waiter_grace: float = 5.0
    #: Live sessions, and holds + waits of one session (LIMIT past either).
    max_sessions: int = 1_000_000
    max_locks_per_session: int = 100_000
    #: Most items (keys, contenders) one reply lists; more are paged (LOCKS.SCAN, COUNT).
    max_reply_items: int = 10_000
    #: Start even though the lock log is gone from a data dir that has served before
    #: (the revision starts above the revision mark, if one is left).
    allow_empty_lock_log: bool = False
    #: Seconds an incomplete request may sit unfinished before its connection is
    #: closed (0: never). Idle connections between requests are not affected.
    idle_timeout: float = 30.0
    #: Budget of bytes buffered for all connections (unparsed input, unsent output):
    #: over it, connections holding more than budget.FLOOR stop reading.
    max_buffered_bytes: int = 256 << 20
    #: Cluster mode: etcd endpoints (host:port); empty: single node.
    etcd: tuple[str, ...] = ()
    #: Cluster name: every etcd key of the cluster is under /coordcore/<name>.
    cluster: str = "coordcore"
    #: host:port clients are redirected to while this server leads (default host:port).
    advertise: str | None = None
    #: Seconds of this server's etcd lease: a dead leader is replaced about this long after.
    etcd_ttl: float = 5.0
    #: Seconds one etcd request may take.
    etcd_timeout: float = 2.0
    log_format: str = "kv"
    log_level: str = "info"
    #: Port of the HTTP endpoint (Prometheus /metrics, the status page at /, /status.json)
    #: on ``host``; None: off (0: any free port).
    metrics_port: int | None = None
    #: OpenTelemetry spans of traced commands and of the batches that carry them (the
    #: ``Server``'s ``tracer_provider``, else the global one; needs ``coordcore[otel]``).
    otel: bool = False

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise BadArgument(f"port must be in [0, 65535], got {self.port}")
        if self.id_workers < 1:
            raise BadArgument(f"id_workers must be >= 1, got {self.id_workers}")
        if self.id_workers > 1 and self.port and self.port + self.id_workers - 1 > 65535:
            raise BadArgument("id_workers ports would run past 65535")
        for name in ("max_connections", "max_request_bytes", "max_args", "max_output_bytes", "max_sessions",
                     "max_locks_per_session", "max_reply_items",
                     "write_high_water", "max_id_range", "max_inflight", "backlog", "max_buffered_bytes"):
            if getattr(self, name) < 1:
                raise BadArgument(f"{name} must be >= 1")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise BadArgument(f"metrics port must be in [0, 65535], got {self.metrics_port}")
        if self.max_args < 2:
            raise BadArgument("max_args must be >= 2")
        if not self.idle_timeout >= 0:
            raise BadArgument(f"idle_timeout must be >= 0 seconds (0: off), got {self.idle_timeout}")
        if self.etcd and (self.id_workers > 1 or self.id_only):
            raise BadArgument("cluster mode (--etcd) serves IDs in the server itself: no --id-workers/--id-only")
        if self.etcd and self.worker_id is not None:
            raise BadArgument("cluster mode (--etcd) leases worker IDs in etcd: no --worker-id")
        if self.requirepass is not None and self.acl_file is not None:
            raise BadArgument("--requirepass is the one-user shorthand of --acl-file: give one of them")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise BadArgument("TLS needs both --tls-cert and --tls-key")
        if self.tls_ca is not None and self.tls_cert is None:
            raise BadArgument("--tls-ca (client certificates) needs --tls-cert and --tls-key")


#: File descriptors kept back from connections: listeners, the lock log and its
#: snapshots, ID state files, log files, the loop's own (epoll, signal pipe), ID worker
#: pipes, and room to accept a connection only to answer -MAXCONN and close it.
FD_RESERVE = 64


def fit_connections_to_fd_limit(config: ServerConfig, log: StructLog) -> None:
    """Lower ``config.max_connections`` below the open-files limit (raising the soft
    limit toward the hard one first, as Redis does), so a connection over the limit is
    refused with ``-MAXCONN`` instead of failing in accept() unseen."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = config.max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    fit = soft - FD_RESERVE
    if fit < 1:
        raise BadArgument(f"the open-files limit ({soft}) leaves no room for connections: "
                          f"raise it (ulimit -n) above {FD_RESERVE}")
    log.warning("max connections lowered to fit the open-files limit", requested=config.max_connections,
                max_connections=fit, nofile=soft, reserve=FD_RESERVE)
    config.max_connections = fit


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # "", a host name, "0.0.0.0"-like wildcards: assume reachable


def has_auth(config: ServerConfig) -> bool:
    return config.requirepass is not None or config.acl_file is not None or config.tls_ca is not None


def refusal(config: ServerConfig) -> str | None:
    """Why a server with ``config`` must not start (None: it may).

    >>> refusal(ServerConfig(host="0.0.0.0")).startswith("refusing")
    True
    >>> refusal(ServerConfig(host="0.0.0.0", insecure=True)) is None
    True
    """
    if has_auth(config) or config.insecure or is_loopback(config.host):
        return None
    return (f"refusing to listen on {config.host or 'every address'} without authentication: set "
            f"--requirepass (or $COORDCORE_REQUIREPASS) or --acl-file, listen on 127.0.0.1, or give "
            f"--insecure to run open anyway")


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context (TLS 1.2 and later), or None without ``tls_cert``."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_ca is not None:
            context.load_verify_locations(config.tls_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise BadArgument(f"TLS setup failed: {exc}") from None
    return context


def startup_warnings(config: ServerConfig) -> list[str]:
    """What a server started with ``config`` warns about at start.

    >>> startup_warnings(ServerConfig(host="127.0.0.1"))
    []
    >>> startup_warnings(ServerConfig(host="0.0.0.0", insecure=True))[0].startswith("INSECURE")
    True
    """
    if not has_auth(config) and not is_loopback(config.host):
        return [f"INSECURE: listening on {config.host or 'every address'} with no password: anyone who "
                f"can reach this port can take, release and watch every lock and read every key; "
                f"set --requirepass (or $COORDCORE_REQUIREPASS), or listen on 127.0.0.1"]
    return []


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


def _resolve_worker_id(config: ServerConfig, log: StructLog) -> tuple[int, int]:
    worker = config.worker_id
    if worker is None:
        env = os.environ.get("COORDCORE_WORKER_ID")
        if env is not None:
            try:
                worker = int(env)
            except ValueError:
                raise WorkerIdUnavailable(f"COORDCORE_WORKER_ID is not an integer: {env!r}") from None
        else:
            worker = 0
            log.warning("no worker id configured, using 0: give each server its own "
                        "(--worker-id or COORDCORE_WORKER_ID)")
    dc = config.datacenter_id
    if dc is None:
        dc = int(os.environ.get("COORDCORE_DATACENTER_ID", "0") or 0)
    return worker, dc


class Server:
    """A coordcore server on the running event loop.

    ``await server.start()`` binds and serves; ``await server.close()`` stops
    accepting, finishes in-flight requests (cancelling parked waits after
    ``shutdown_grace``), closes the lock service (flush and fsync) and the connections.
    """

    def __init__(self, config: ServerConfig, *, log: StructLog | None = None, tracer_provider: Any = None) -> None:
        config.validate()
        self.config = config
        #: The spans of traced commands (None: config.otel is off).
        self.tracer: Any = None
        self._tracer_provider = tracer_provider
        self.version = VERSION
        self.log = log if log is not None else configure(config.log_format, config.log_level)
        self.connections: set[Connection] = set()
        self.connections_total = 0
        self.commands_total = 0
        self.started = time.monotonic()
        self.role = "ids" if config.id_only else "main"
        self.port = config.port
        self.ids: Any = None
        #: The lock service (None: an ID worker, or not started yet).
        self.locks: Any = None
        #: The one command table: every entry carries its flags (coordcore.server.core).
        self.commands: CommandTable = {}
        self.command_names: list[bytes] = []
        #: The password check of AUTH; it slows failures down per client address, and
        #: rate-limits their log lines.
        self.acl = load_acl(config.acl_file) if config.acl_file is not None else None
        self.auth = commands.Auth(config.requirepass, commands.AuthGuard(self.log), self.acl)
        #: Bytes buffered for all connections, and their incomplete requests.
        self.budget = Budget(config.max_buffered_bytes, self.log)
        #: The lock service's native lane for hot lock commands (None: no lock service).
        self.lane: Any = None
        #: Closes the lock service (set once it is served).
        self._close_locks: Callable[[], Awaitable[None]] | None = None
        #: Cluster mode (config.etcd): this server's session, worker ID and leadership.
        self.cluster: Any = None
        self._next_conn_id = 0
        self._tasks: set[asyncio.Future[Any]] = set()
        self._listener: asyncio.AbstractServer | None = None
        self._children: list[tuple[subprocess.Popen[bytes], str]] = []
        self._info_providers: list[Callable[[], list[str]]] = []
        self._closed = asyncio.Event()
        self._closing = False
        self._trim = _malloc_trim()
        self._sweeper: asyncio.Task[None] | None = None
        #: The metrics port's HTTP server (None: off), and the table commands it counts.
        self.http: Any = None
        self._command_counts: Any = None
        #: What a SHUTDOWN calls (run_server's stop event; None: close in place).
        self.on_stop: Callable[[], None] | None = None

    @property
    def partial(self) -> dict[Any, float]:
        """Connections with an incomplete request at the head of their input, and since."""
        return self.budget.partial

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        from coordcore.ids import Snowflake  # the lead's module (see coordcore.ids)

        cfg = self.config
        refused = refusal(cfg)
        if refused is not None:
            raise BadArgument(refused)
        for warning in startup_warnings(cfg):
            self.log.warning(warning, host=cfg.host)
        fit_connections_to_fd_limit(cfg, self.log)
        if cfg.etcd:
            from coordcore.server.cluster import ClusterNode

            self.cluster = ClusterNode(self)
            await self.cluster.start()
            self.ids = self.cluster.ids
            worker, dc = self.cluster.worker_id, cfg.datacenter_id or 0
        else:
            worker, dc = _resolve_worker_id(cfg, self.log)
            ids_dir = cfg.data_dir / "ids"
            ids_dir.mkdir(parents=True, exist_ok=True)
            self.ids = Snowflake(worker, datacenter_id=dc, state_file=ids_dir / f"worker-{dc}-{worker}.state")
        self.worker_id, self.datacenter_id = worker, dc
        if cfg.otel:
            from coordcore.server.tracing import ServerTracer

            self.tracer = ServerTracer.from_option(self._tracer_provider or True)
        self.commands = self.base_commands()
        if self.cluster is not None:
            # Lock commands answer MOVED until this server leads (see cluster.py).
            self.commands.update(self.cluster.lock_commands())
            self._info_providers.append(self.cluster.info_lines)
        elif not cfg.id_only:
            from coordcore.server import lockcmds

            self.serve_locks(await lockcmds.open_service(cfg, self.log))
        if cfg.metrics_port is not None:
            self._start_metrics_table()
        # TRACEPARENT is a prefix the read loop resolves, kept out of the table (see protocol.py).
        self.command_names = sorted([*self.commands, b"TRACEPARENT"])
        loop = asyncio.get_running_loop()
        self.budget.clock = loop.time
        self._sweeper = loop.create_task(self._sweep())
        context = tls_context(cfg)
        factory: Callable[[], asyncio.Protocol] = (lambda: Connection(self)) if context is None else \
            (lambda: TlsAccept(self, context, self.login_by_cert))
        self._listener = await loop.create_server(factory, cfg.host, cfg.port, backlog=cfg.backlog,
                                                  reuse_address=True)
        sock = self._listener.sockets[0]
        self.port = sock.getsockname()[1]
        self.log.info("listening", host=cfg.host, port=self.port, role=self.role, worker_id=worker,
                      datacenter_id=dc, data_dir=str(cfg.data_dir), pid=os.getpid(),
                      auth="acl" if cfg.acl_file is not None else cfg.requirepass is not None,
                      tls=cfg.tls_cert is not None)
        if cfg.metrics_port is not None:
            await self._start_http(cfg.metrics_port)
        if cfg.id_workers > 1 and not cfg.id_only:
            await self._start_id_workers(worker)
        if self.cluster is not None:
            self.cluster.run(f"{cfg.host}:{self.port}")

    def _start_metrics_table(self) -> None:
        from coordcore.server import metrics

        metrics.require_prometheus()  # before binding anything: a clear error if missing
        self._command_counts = metrics.CommandCounts()
        self.commands = self._command_counts.wrap(self.commands)

    async def _start_http(self, port: int) -> None:
        """Serve /metrics, / and /status.json on the RESP port's host (see http.py)."""
        from coordcore.server import metrics, status
        from coordcore.server.http import HttpServer, Response, Route

        registry = metrics.registry_for(self, self._command_counts)
        prom = metrics.require_prometheus()

        def get_metrics(query: dict[str, str]) -> Response:
            return Response(200, prom.CONTENT_TYPE_LATEST, prom.generate_latest(registry))

        def get_status(query: dict[str, str]) -> Response:
            return Response(200, "application/json", status.dumps(status.status_json(self, query)))

        page = status.page_html()
        csp = ("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
               "style-src 'unsafe-inline'; connect-src 'self'")

        def get_page(query: dict[str, str]) -> Response:
            return Response(200, "text/html; charset=utf-8", page, (csp,))

        routes: dict[str, Route] = {"/metrics": get_metrics, "/status.json": get_status, "/": get_page}
        self.http = HttpServer(routes, log=self.log, authorize=self._http_authorize if has_auth(self.config) else None)
        await self.http.start(self.config.host, port)
        self.log.info("metrics listening", host=self.config.host, port=self.http.port,
                      paths="/metrics,/status.json,/")

    async def _http_authorize(self, peer: str, user: str, password: str) -> bool:
        """A metrics request's credentials: a user (or the requirepass) allowed INFO.
        Failures wait the AUTH guard's delay, shared with failed AUTH commands."""
        from coordcore.server.acl import User

        class _Login:
            peer_host = peer
            who: User | None = None

            def login(self, u: User) -> None:
                self.who = u

        shim = _Login()
        try:
            ok = self.auth.check(shim, user.encode(), password.encode())  # type: ignore[arg-type]
            if not isinstance(ok, bool):
                ok = await ok
        except CoordcoreError:
            ok = False
        if ok and shim.who is not None and shim.who.denied([b"INFO"]) is None:
            return True
        await asyncio.sleep(self.auth.guard.delay(peer))
        self.log.warning("metrics auth failed", audit="auth", peer=peer, user=user[:64])
        return False

    async def _start_id_workers(self, worker: int) -> None:
        cfg = self.config
        for i in range(1, cfg.id_workers):
            port = cfg.port + i if cfg.port else 0
            argv = [sys.executable, "-m", "coordcore.server", "--id-only",
                    "--host", cfg.host, "--port", str(port), "--worker-id", str(worker + i),
                    "--datacenter-id", str(self.datacenter_id), "--data-dir", str(cfg.data_dir),
                    "--log-format", cfg.log_format, "--log-level", cfg.log_level, "--announce-port"]
            if cfg.insecure:
                argv.append("--insecure")
            for flag, path in (("--acl-file", cfg.acl_file), ("--tls-cert", cfg.tls_cert),
                               ("--tls-key", cfg.tls_key), ("--tls-ca", cfg.tls_ca)):
                if path is not None:
                    argv += [flag, str(path)]
            env = dict(os.environ)
            if cfg.requirepass is not None:  # (the environment: never on a command line)
                env["COORDCORE_REQUIREPASS"] = cfg.requirepass
            # stdin is a pipe the child watches: when this process dies, even by SIGKILL,
            # the pipe closes and the child stops (no orphaned ID workers).
            child = subprocess.Popen([*argv, "--exit-with-stdin"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
            assert child.stdout is not None
            line = await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline)
            if not line.startswith(b"PORT "):
                child.kill()
                child.wait()
                raise RuntimeError(f"ID worker {worker + i} failed to start")
            endpoint = f"{cfg.host}:{int(line.split()[1])}"
            self._children.append((child, endpoint))
            self.log.info("id worker started", worker_id=worker + i, endpoint=endpoint, pid=child.pid)

    def base_commands(self) -> CommandTable:
        """The connection, introspection and ID commands (``self.ids`` must be set)."""
        control = commands.Control(names=lambda: self.command_names, settings=self.settings,
                                   clients=lambda: self.connections, stop=self.request_stop)
        table = commands.core_commands(self.auth, version=self.version, info=self.info_lines, control=control)
        table.update(commands.id_commands(self.ids, max_range=self.config.max_id_range,
                                          endpoints=self.id_endpoints))
        return table

    def serve_locks(self, svc: Any) -> None:
        """Serve the lock service ``svc``: its commands join the table, its native lane
        takes the hot ones."""
        # Imported here: ID worker processes never load the lock layer.
        from coordcore.server.lockcmds import LockCommands

        self.locks = svc
        served = LockCommands(svc, log=self.log, max_reply_items=self.config.max_reply_items,
                              tracer=self.tracer.tracer if self.tracer is not None else None)
        self.lane = served.lane
        self.commands.update(served.commands())
        from coordcore.server.status import top_commands

        self.commands.update(top_commands(svc))
        self._close_locks = served.close
        if self.log.logger.isEnabledFor(logging.DEBUG):
            served.log_batches()  # only at debug: no cost otherwise

    def login_by_cert(self, conn: Connection, cert: dict[str, Any]) -> None:
        """A verified client certificate (``--tls-ca``) logs its connection in: as the
        ACL user it names (CN or SAN; else the connection must AUTH), or as the default
        user without an ACL file."""
        if self.acl is None:
            if self.config.requirepass is None:
                conn.login(DEFAULT)
            return
        user = self.acl.for_cert(cert_names(cert))
        if user is not None:
            conn.login(user)
            self.log.info("TLS client certificate login", audit="tls", conn=conn.id, peer=conn.peer,
                          user=user.name)

    def reload_acl(self) -> None:
        """Read the ACL file again (SIGHUP): connections of removed users are closed,
        the others get their user's new rights. A bad file keeps the old ACL."""
        path = self.config.acl_file
        for child, _ in self._children:  # the ID workers read the same file
            if child.poll() is None:
                child.send_signal(signal.SIGHUP)
        if path is None:
            self.log.warning("SIGHUP without --acl-file: nothing to reload", audit="acl")
            return
        try:
            acl = load_acl(path)
        except CoordcoreError as exc:
            self.log.error("ACL reload failed, keeping the previous ACL", audit="acl", path=str(path),
                           error=str(exc))
            return
        self.acl = acl
        self.auth.set_acl(acl)
        closed = 0
        for conn in list(self.connections):
            if not conn.authenticated:
                continue
            user = acl.users.get(conn.user.name)
            if user is None:
                self.log.warning("user removed, closing its connection", audit="acl", conn=conn.id,
                                 peer=conn.peer, user=conn.user.name)
                conn.abort()
                closed += 1
            else:
                conn.login(user)
                if not user.unlimited:
                    from coordcore.server.lockcmds import end_denied_watches
                    ended = end_denied_watches(conn, user.denied)
                    if ended:
                        self.log.warning("watches ended: no longer permitted", audit="acl", conn=conn.id,
                                         peer=conn.peer, user=user.name, watches=ended)
        self.log.warning("ACL reloaded", audit="acl", path=str(path), users=len(acl.users), closed=closed)

    def settings(self) -> dict[str, str]:
        """CONFIG GET's view: every setting under its ``serve --config`` key (never the
        password), and the Redis names tools ask for (port, bind, maxclients, save...)."""
        out: dict[str, str] = {}
        for field in dataclasses.fields(self.config):
            if field.name in ("requirepass",):
                continue
            value = getattr(self.config, field.name)
            if isinstance(value, bool):
                text = "yes" if value else "no"
            elif isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = "" if value is None else str(value)
            out[field.name.replace("_", "-")] = text
        out["requirepass"] = "(set)" if self.config.requirepass is not None else ""
        out.update({"port": str(self.port), "bind": self.config.host, "dir": str(self.config.data_dir),
                    "maxclients": str(self.config.max_connections), "timeout": "0", "databases": "1",
                    "save": "", "appendonly": "yes" if not self.config.id_only else "no",
                    "appendfsync": "always" if self.config.fsync else "no",
                    "proto-max-bulk-len": str(self.config.max_request_bytes)})
        return out

    def request_stop(self) -> None:
        """SHUTDOWN: stop as SIGTERM does (run_server's stop), else close in place."""
        self.log.warning("SHUTDOWN requested by a client, stopping")
        if self.on_stop is not None:
            self.on_stop()
        else:
            self.track(asyncio.ensure_future(self.close()))

    def id_endpoints(self) -> list[str]:
        return [f"{self.config.host}:{self.port}"] + [ep for _, ep in self._children]

    async def close(self) -> None:
        """Graceful stop: see the class docstring. Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.log.info("shutting down", connections=len(self.connections), parked=len(self._tasks))
        if self._listener is not None:
            self._listener.close()
        if self.http is not None:
            await self.http.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            # A blocking wait may never end: it is answered now (-UNAVAILABLE).
            conn.shutdown()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.config.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=self.config.shutdown_grace)
        if self.cluster is not None:
            await self.cluster.close()
        elif self._close_locks is not None:
            await self._close_locks()
        for conn in list(self.connections):
            conn.close()
        for child, _ in self._children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
            if child.stdin is not None:
                child.stdin.close()
        for child, _ in self._children:
            try:
                await asyncio.get_running_loop().run_in_executor(None, child.wait, 10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.wait_closed(), 1.0)
        close_ids = getattr(self.ids, "close", None)
        if close_ids is not None:
            close_ids()
        self.log.info("stopped", commands=self.commands_total, connections=self.connections_total)
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # --- used by connections (coordcore.server.core.ServerView) -----------------------

    def admit(self, conn: Connection) -> int | None:
        self._next_conn_id += 1
        if self._closing or len(self.connections) >= self.config.max_connections:
            self.log.warning("connection refused", peer=conn.peer, reason="closing" if self._closing
                             else "max connections", connections=len(self.connections))
            return None
        self.connections.add(conn)
        self.connections_total += 1
        return self._next_conn_id

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)

    def track(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the sweep: timers of every connection, a few times a second ------------------

    #: Seconds between sweeps.
    SWEEP = 0.25

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.SWEEP)
            try:
                self.sweep()
            except Exception:  # pragma: no cover - defensive: the sweep must go on
                self.log.exception("sweep failed")

    def sweep(self) -> None:
        """Close connections whose incomplete request sat past ``idle_timeout``;
        recount the buffer budget (output buffers shrink unseen as clients read) and let
        paused connections read again once under 3/4 of it; hand freed memory back."""
        self.auth.guard.flush_logs()
        self.budget.sweep(self.connections, self.config.idle_timeout)
        # glibc keeps freed memory in its arenas; big buffers freed (a burst, clients
        # gone) are given back so the server's footprint returns to its working size.
        if self.budget.take_released(8 << 20) and self._trim is not None:
            self._trim(0)

    def info_lines(self, section: str | None = None) -> list[str]:
        """What ``INFO [section]`` answers, line by line (Redis's format: ``# Name``
        headers, ``field:value`` lines, a blank line after each section). ``all`` and
        ``everything`` are every section; no section is the same here."""
        sections = self.info_sections()
        if section not in (None, "all", "everything", "default"):
            sections = {name: lines for name, lines in sections.items() if name.lower() == section}
        out: list[str] = []
        for name, lines in sections.items():
            out += [f"# {name}", *lines, ""]
        return out

    def info_sections(self) -> dict[str, list[str]]:
        """INFO's sections in order: name -> ``field:value`` lines."""
        cfg = self.config
        out: dict[str, list[str]] = {
            "Server": [f"coordcore_version:{self.version}", f"process_id:{os.getpid()}", f"tcp_port:{self.port}",
                       f"metrics_port:{self.http.port if self.http is not None else ''}",
                       f"uptime_in_seconds:{int(time.monotonic() - self.started)}", f"role:{self.role}",
                       f"data_dir:{cfg.data_dir}"],
            "Clients": [f"connected_clients:{len(self.connections)}", f"maxclients:{cfg.max_connections}",
                        f"buffered_bytes:{self.budget.buffered}", f"paused_clients:{len(self.budget.paused)}",
                        f"blocked_requests:{len(self._tasks)}"],
        }
        svc = self.locks
        if svc is not None:
            g = svc.gauges()
            st = svc.stats
            ended = svc.sessions_ended
            out["Sessions"] = [f"sessions:{g['sessions']}", f"sessions_opened:{g['sessions_opened']}",
                               f"sessions_expired:{ended.get('expired', 0)}",
                               f"sessions_closed:{ended.get('closed', 0)}", f"max_sessions:{cfg.max_sessions}"]
            out["Locks"] = [f"revision:{svc.revision}", f"keys_held:{g['keys']}", f"waiters:{g['waiters']}",
                            f"pools:{len(svc.pools.names())}"]
            from coordcore.server.lockcmds import pools_info  # (lazy: an ID-only server never loads it)

            out["Pools"] = pools_info(svc)
            times = svc.sync_times
            log = [f"durability:{'fsync' if cfg.fsync else 'unsafe-no-fsync'}", f"batches:{st.batches}",
                   f"batch_commands:{st.commands}", f"ticks:{st.ticks}", f"fsyncs:{st.fsyncs}",
                   f"log_written_bytes:{st.bytes}", f"snapshots:{st.snapshots}",
                   f"commands_per_batch:{st.commands / (st.batches - st.ticks) if st.batches > st.ticks else 0:.2f}"]
            if times is not None and times.count:
                log += [f"fsync_mean_ms:{times.sum / times.count * 1e3:.3f}",
                        f"fsync_slowest_ms:{times.slowest * 1e3:.3f}"]
            torn = svc.torn_tail
            log.append(f"torn_tail_cut_bytes:{torn.bytes_cut if torn is not None else 0}")
            out["Log"] = log
        ids = [f"worker_id:{self.worker_id}", f"datacenter_id:{self.datacenter_id}",
               f"id_endpoints:{','.join(self.id_endpoints())}"]
        counters = getattr(self.ids, "_counters", None)
        if counters is not None:
            ids += [f"ids_issued:{counters[0]}", f"sequence_waits:{counters[1]}",
                    f"clock_regressions:{counters[2]}"]
        out["IDs"] = ids
        out["Stats"] = [f"total_connections_received:{self.connections_total}",
                        f"total_commands_processed:{self.commands_total}"]
        # Providers (the cluster node) add sections in the same text form; a section
        # this server already has is not repeated.
        for provider in self._info_providers:
            name: str | None = None
            for line in provider():
                if line.startswith("# "):
                    name = line[2:].strip()
                    if name in out:
                        name = None
                    else:
                        out[name] = []
                elif line and name is not None:
                    out[name].append(line)
        return out


def run_server(config: ServerConfig, *, announce_port: bool = False, exit_with_stdin: bool = False) -> int:
    """Run a server until SIGTERM or SIGINT; return the exit status (0 on a clean stop)."""
    import uvloop

    log = configure(config.log_format, config.log_level)
    # The lock log's fsync runs in a thread that needs the GIL back to report its
    # commit; with the default 5 ms switch interval a busy event loop can hold that
    # report (and every reply waiting on it) for up to 5 ms. 0.5 ms bounds it.
    sys.setswitchinterval(float(os.environ.get("COORDCORE_SWITCH_INTERVAL", "0.0005")))
    provider: Any = None
    if config.otel:
        from coordcore.server.tracing import sdk_provider

        provider = sdk_provider()  # before anything starts: a clear error if the SDK is missing

    async def main() -> None:
        server = Server(config, log=log, tracer_provider=provider)
        stop = asyncio.Event()
        server.on_stop = stop.set
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, server.reload_acl)
        # A start can wait long (cluster mode: for etcd to answer); a stop request then
        # ends it instead of waiting for it.
        starting = asyncio.ensure_future(server.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await server.close()
            return
        stopping.cancel()
        starting.result()  # a failed start raises here
        if exit_with_stdin:
            def on_stdin() -> None:
                try:
                    data = os.read(0, 4096)
                except OSError:
                    data = b""
                if not data:
                    loop.remove_reader(0)
                    log.info("parent gone (stdin closed), stopping")
                    stop.set()

            loop.add_reader(0, on_stdin)
        if announce_port:
            sys.stdout.write(f"PORT {server.port}\n")
            sys.stdout.flush()
        await stop.wait()
        await server.close()

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    finally:
        if provider is not None:
            provider.shutdown()  # export the spans still buffered
    return 0
