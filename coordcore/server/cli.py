"""Command-line options of ``coordcore serve`` (also ``python -m coordcore.server``)."""
from __future__ import annotations

import argparse
import difflib
import errno
import os
import socket
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from coordcore.errors import BadArgument, CoordcoreError
from coordcore.server.server import ServerConfig, run_server

__all__ = ["add_arguments", "apply_config_file", "config_from_args", "main", "parse", "settings_keys"]


#: The prefix of every start-up error, and its exit status (argparse's, for bad flags).
PREFIX = "coordcore serve: error:"
EXIT_START = 2

#: Flags that are not settings: no key in a --config file.
_NOT_SETTINGS = frozenset({"config", "announce_port", "exit_with_stdin", "help"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServerConfig()
    a = parser.add_argument
    a("--config", type=Path, default=None, metavar="FILE.toml",
      help="read settings from a TOML file: one key per flag, named as the flag without its dashes "
           "(max-connections = 100); flags on the command line override it")
    a("--host", default=d.host, help="address to listen on (default %(default)s)")
    a("--port", type=int, default=d.port, help="TCP port, 0 for any free one (default %(default)s)")
    a("--data-dir", type=Path, default=d.data_dir, help="lock log and ID state (default ./%(default)s)")
    a("--worker-id", type=int, default=None,
      help="Snowflake worker ID (default: $COORDCORE_WORKER_ID, else 0)")
    a("--datacenter-id", type=int, default=None, help="Snowflake datacenter ID (default: $COORDCORE_DATACENTER_ID, else 0)")
    a("--requirepass", default=None,
      help="shared secret clients must give with AUTH (default: $COORDCORE_REQUIREPASS, else none)")
    a("--acl-file", type=Path, default=None,
      help="users, password hashes and per-prefix permissions (TOML; reloaded on SIGHUP)")
    a("--audit-key", type=Path, default=None,
      help="keep a tamper-evident audit trail in DATA_DIR/audit, checkpoints signed with this "
           "Ed25519 private key (PEM; `coordcore audit keygen`); in a cluster give every server the "
           "same key: the leader signs, the others check")
    a("--audit-every", type=int, default=d.audit_every,
      help="records between two signed audit checkpoints (default %(default)s)")
    a("--audit-segment-bytes", type=int, default=d.audit_segment_bytes,
      help="seal the audit journal into a segment at the first checkpoint past this size (0: never)")
    a("--audit-archive-dir", type=Path, default=None,
      help="move sealed audit segments into this directory")
    a("--audit-archive-command", default=None, metavar="CMD",
      help="run `CMD PATH` for each sealed audit segment; it is removed when CMD exits 0")
    a("--audit-trusted-key", type=Path, action="append", default=[], metavar="PUBKEY",
      help="an older audit public key (PEM) whose checkpoints are still accepted after --audit-key was "
           "rotated (repeatable); checkpoints of any other key are refused")
    a("--insecure", action="store_true",
      help="allow listening on a non-loopback address without authentication")
    a("--tls-cert", type=Path, default=None, help="serve TLS (1.2+) with this certificate chain (PEM)")
    a("--tls-key", type=Path, default=None, help="the TLS private key (PEM)")
    a("--tls-ca", type=Path, default=None,
      help="require client certificates signed by this CA (PEM); a certificate's CN/SAN names its user")
    a("--max-connections", type=int, default=d.max_connections,
      help="client connections served at once; more are refused with -MAXCONN (default %(default)s)")
    a("--max-request-bytes", type=int, default=d.max_request_bytes,
      help="largest request; past it -TOOBIG and a close (default %(default)s)")
    a("--max-args", type=int, default=d.max_args, help="arguments per request (default %(default)s)")
    a("--max-id-range", type=int, default=d.max_id_range, help="largest ID.RANGE n (default %(default)s)")
    a("--max-inflight", type=int, default=d.max_inflight,
      help="commands awaiting their commit per connection before reading pauses (default %(default)s)")
    a("--id-workers", type=int, default=d.id_workers,
      help="processes serving IDs, on ports port..port+N-1 with worker IDs worker..worker+N-1 "
           "(default %(default)s)")
    a("--id-only", action="store_true", help="serve connection and ID.* commands only (no lock state)")
    a("--unsafe-no-fsync", action="store_true",
      help="do not fsync the lock log: acknowledged grants can be lost on a crash (tests, caches)")
    a("--max-sessions", type=int, default=d.max_sessions, help="live sessions (default %(default)s)")
    a("--max-locks-per-session", type=int, default=d.max_locks_per_session,
      help="holds and waits of one session (default %(default)s)")
    a("--max-reply-items", type=int, default=d.max_reply_items,
      help="keys or contenders one reply lists; more are paged (default %(default)s)")
    a("--waiter-grace", type=float, default=d.waiter_grace,
      help="seconds a waiter recovered at start waits for its client to re-attach (default %(default)s)")
    a("--allow-empty-lock-log", action="store_true",
      help="start even if the lock log is missing from a data dir that has served before (ID state "
           "or a revision mark found); new fencing tokens start above the revision mark")
    a("--idle-timeout", type=float, default=d.idle_timeout,
      help="seconds an incomplete request may sit unfinished before the connection is closed; "
           "0: never (default %(default)s)")
    a("--max-buffered-bytes", type=int, default=d.max_buffered_bytes,
      help="bytes buffered for all connections before the largest stop reading (default %(default)s)")
    a("--max-output-bytes", type=int, default=d.max_output_bytes,
      help="unsent reply bytes one connection may hold before it is closed (default %(default)s)")
    a("--etcd", default=None, metavar="HOST:PORT[,HOST:PORT...]",
      help="cluster mode: the etcd cluster that holds the lock log, the election and the worker IDs")
    a("--cluster", default=d.cluster, help="cluster name; its etcd keys live under /coordcore/NAME (default %(default)s)")
    a("--advertise", default=None, metavar="HOST:PORT",
      help="where clients reach this server when it leads (default: --host:--port)")
    a("--etcd-ttl", type=float, default=d.etcd_ttl,
      help="seconds of this server's etcd lease; a dead leader is replaced after about this (default %(default)s)")
    a("--metrics-port", type=int, default=None, metavar="PORT",
      help="serve Prometheus /metrics, the status page (/) and /status.json over HTTP on --host:PORT "
           "(needs coordcore[metrics]; the same users as the RESP port; default: off)")
    a("--otel", action="store_true",
      help="OpenTelemetry spans of traced commands (sent with a TRACEPARENT prefix) and of the batches that carry "
           "them, exported as the OTEL_* environment variables say (needs coordcore[otel], opentelemetry-sdk "
           "and an exporter; default: off)")
    a("--log-format", choices=("kv", "json"), default=d.log_format,
      help="log lines as key=value pairs or JSON, on stderr (default %(default)s)")
    a("--log-level", choices=("debug", "info", "warning", "error"), default=d.log_level,
      help="least severe level logged (default %(default)s)")
    a("--announce-port", action="store_true", help=argparse.SUPPRESS)
    a("--exit-with-stdin", action="store_true", help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host, port=args.port, data_dir=args.data_dir, worker_id=args.worker_id,
        datacenter_id=args.datacenter_id,
        requirepass=args.requirepass if args.requirepass is not None else os.environ.get("COORDCORE_REQUIREPASS"),
        acl_file=args.acl_file, audit_key=_audit_key(args), audit_every=args.audit_every,
        audit_segment_bytes=args.audit_segment_bytes, audit_archive_dir=args.audit_archive_dir,
        audit_archive_command=args.audit_archive_command,
        audit_trusted_keys=tuple(args.audit_trusted_key),
        insecure=args.insecure, tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        max_connections=args.max_connections, max_request_bytes=args.max_request_bytes,
        max_args=args.max_args, max_id_range=args.max_id_range, max_inflight=args.max_inflight, id_workers=args.id_workers,
        id_only=args.id_only, fsync=not args.unsafe_no_fsync, waiter_grace=args.waiter_grace,
        max_sessions=args.max_sessions, max_locks_per_session=args.max_locks_per_session,
        allow_empty_lock_log=args.allow_empty_lock_log,
        max_reply_items=args.max_reply_items, idle_timeout=args.idle_timeout,
        max_buffered_bytes=args.max_buffered_bytes, max_output_bytes=args.max_output_bytes,
        log_format=args.log_format,
        log_level=args.log_level,
        etcd=tuple(_etcd_endpoints(args.etcd)), cluster=args.cluster, advertise=args.advertise,
        etcd_ttl=args.etcd_ttl, metrics_port=args.metrics_port, otel=args.otel)


def _audit_key(args: argparse.Namespace) -> Path | None:
    if args.audit_every < 1 or args.audit_segment_bytes < 0:
        raise BadArgument("--audit-every must be >= 1 and --audit-segment-bytes >= 0")
    if args.audit_archive_dir is not None and args.audit_archive_command is not None:
        raise BadArgument("give --audit-archive-dir or --audit-archive-command, not both")
    return args.audit_key  # type: ignore[no-any-return]


def _etcd_endpoints(value: str | None) -> list[str]:
    """``--etcd`` as host:port endpoints (an ``http://`` prefix is allowed, as etcdctl's).

    >>> _etcd_endpoints("http://127.0.0.11:2379,127.0.0.12:2379")
    ['127.0.0.11:2379', '127.0.0.12:2379']
    """
    if not value:
        return []
    return [part.strip().removeprefix("http://") for part in value.split(",") if part.strip()]


def settings_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The --config file's keys (each flag's long name without its dashes) -> the flag."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest in _NOT_SETTINGS or not action.option_strings:
            continue
        keys[action.option_strings[-1].removeprefix("--")] = action
    return keys


def _setting(key: str, value: object, action: argparse.Action) -> object:
    """A --config value, checked as its flag would check it."""
    def bad(want: str) -> BadArgument:
        return BadArgument(f"key {key!r} takes {want}, got {value!r}")

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if action.dest == "etcd" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)  # etcd = ["127.0.0.1:2379", ...] as well as one string
    if isinstance(action, argparse._AppendAction):  # a repeatable flag: one string or a list of them
        values = [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
        if len(values) != (len(value) if isinstance(value, list) else 1):
            raise bad("a string or a list of strings")
        return [Path(v) if action.type is Path else v for v in values]
    kind = action.type
    if kind is int:
        if type(value) is not int:
            raise bad("an integer")
    elif kind is float:
        if type(value) not in (int, float):
            raise bad("a number")
        value = float(value)  # type: ignore[arg-type]
    elif not isinstance(value, str):
        raise bad("a string")
    elif kind is Path:
        value = Path(value)
    if action.choices is not None and value not in action.choices:
        raise bad("one of " + ", ".join(map(str, action.choices)))
    return value


def apply_config_file(parser: argparse.ArgumentParser, path: Path) -> None:
    """Make a --config file's settings the parser's defaults, so that flags given on the
    command line override them. Unknown keys and wrong types are refused."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise BadArgument(f"--config {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadArgument(f"--config {path}: not valid TOML: {exc}") from None
    keys = settings_keys(parser)
    defaults: dict[str, object] = {}
    for key, value in data.items():
        action = keys.get(key)
        if action is None:
            near = difflib.get_close_matches(key, keys, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (keys: {', '.join(sorted(keys))})"
            raise BadArgument(f"--config {path}: unknown key {key!r}{hint}")
        try:
            defaults[action.dest] = _setting(key, value, action)
        except BadArgument as exc:
            raise BadArgument(f"--config {path}: {exc}") from None
    parser.set_defaults(**defaults)


def check_port_free(host: str, port: int) -> None:
    """Fail before anything is created (the data directory...) when the port is taken.
    (The server binds again for real: a port taken in between still fails, later.)"""
    if port == 0:
        return
    try:
        probe = socket.create_server((host, port))  # SO_REUSEADDR, as the server binds
    except socket.gaierror as exc:
        raise BadArgument(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    except OSError as exc:
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise BadArgument(f"cannot listen on {host}:{port}: {why}") from None
    probe.close()


def run(args: argparse.Namespace) -> int:
    """Start and run the server; any start-up error is one line ``coordcore serve:
    error: ...`` on stderr and exit status 2 (argparse's for bad flags), no traceback."""
    try:
        config = config_from_args(args)
        config.validate()
        check_port_free(config.host, config.port)
        return run_server(config, announce_port=args.announce_port, exit_with_stdin=args.exit_with_stdin)
    except (OSError, CoordcoreError) as exc:  # a port in use, a bad option: say so, no traceback
        print(f"{PREFIX} {exc}", file=sys.stderr)
        return EXIT_START


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` with a --config file's settings as the defaults; a bad file exits
    as a bad flag does (argparse's error: the prefix and status 2)."""
    first, _ = parser.parse_known_args(argv)
    path = getattr(first, "config", None)
    if path is not None:
        try:
            apply_config_file(parser, path)
        except BadArgument as exc:
            parser.error(str(exc))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coordcore serve", description="Run the coordcore server.")
    add_arguments(parser)
    return run(parse(parser, argv))
