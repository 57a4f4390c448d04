"""``coordcore status`` and ``coordcore top``: a running server's INFO as a table.

``status`` prints every INFO section once; ``top`` redraws it every ``--interval``
seconds with the busiest keys and the longest waits (``LOCKS.TOP``, a bounded read of
at most ``--scan`` keys) until interrupted.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Any, TextIO

import hiredis

from coordcore.errors import CoordcoreError, Unavailable

__all__ = ["add_arguments", "format_info", "parse_info", "run_status", "run_top"]


class _Conn:
    """One RESP connection (hiredis parses the replies)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise Unavailable(f"cannot reach {host}:{port}: {exc}") from None
        self.reader = hiredis.Reader()

    def call(self, *args: str | bytes | int) -> Any:
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        self.sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        while True:
            reply = self.reader.gets()
            if reply is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise CoordcoreError(str(reply))
                return reply
            data = self.sock.recv(1 << 16)
            if not data:
                raise Unavailable("the server closed the connection")
            self.reader.feed(data)

    def close(self) -> None:
        self.sock.close()


def parse_info(text: str) -> dict[str, dict[str, str]]:
    """INFO's text as ``{section: {field: value}}``.

    >>> parse_info("# Server\\r\\nrole:main\\r\\n\\r\\n# Locks\\r\\nrevision:4\\r\\n")
    {'Server': {'role': 'main'}, 'Locks': {'revision': '4'}}
    """
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("# "):
            current = out.setdefault(line[2:].strip(), {})
        elif ":" in line and current is not None:
            name, _, value = line.partition(":")
            current[name] = value
    return out


def format_info(info: dict[str, dict[str, str]]) -> str:
    """Sections side by side as aligned ``field  value`` rows under their names."""
    lines: list[str] = []
    for section, fields in info.items():
        lines.append(section)
        width = max((len(k) for k in fields), default=0)
        lines += [f"  {k.replace('_', ' '):<{width}}  {v}" for k, v in fields.items()]
        lines.append("")
    return "\n".join(lines)


def _format_top(reply: list[Any]) -> str:
    """LOCKS.TOP's reply as two tables; a wait in ms that is unknown (a waiter restored
    from a snapshot) shows as "-"."""
    head = ("holders", "waiters", "waited (revisions)", "waited (ms)")

    def rows(title: str, entries: list[Any]) -> list[str]:
        out = [title]
        if not entries:
            return out + ["  (none)"]
        width = max(len(e[0]) for e in entries)
        out.append(f"  {'key':<{width}}  " + "  ".join(head))
        for key, *figures in entries:
            text = key.decode("utf-8", "backslashreplace")
            cells = ["-" if v is None else str(v) for v in figures]
            out.append(f"  {text:<{width}}  " + "  ".join(f"{c:>{len(h)}}" for c, h in zip(cells, head)))
        return out

    _, busiest, longest = reply
    return "\n".join(rows("Busiest keys", busiest) + [""] + rows("Longest waits", longest)) + "\n"


def _connect(args: argparse.Namespace) -> _Conn:
    conn = _Conn(args.host, args.port, args.timeout)
    password = args.password if args.password is not None else os.environ.get("COORDCORE_PASSWORD")
    if password is not None:
        conn.call("AUTH", args.user, password)
    return conn


def run_status(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    conn = _connect(args)
    try:
        out.write(format_info(parse_info(conn.call("INFO").decode())))
    finally:
        conn.close()
    return 0


def run_top(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    conn = _connect(args)
    try:
        rounds = 0
        while True:
            info = parse_info(conn.call("INFO").decode())
            top = conn.call("LOCKS.TOP", "COUNT", args.count, "SCAN", args.scan) if "Locks" in info else None
            screen = format_info({k: v for k, v in info.items() if k in ("Server", "Sessions", "Locks", "Log",
                                                                         "Cluster")})
            if top is not None:
                screen += "\n" + _format_top(top)
            if out.isatty():
                out.write("\x1b[H\x1b[2J")
            out.write(screen + "\n")
            out.flush()
            rounds += 1
            if args.iterations and rounds >= args.iterations:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        conn.close()


def add_arguments(parser: argparse.ArgumentParser, *, top: bool) -> None:
    a = parser.add_argument
    a("--host", default="127.0.0.1", help="the server's address (default %(default)s)")
    a("--port", type=int, default=7379, help="the server's RESP port (default %(default)s)")
    a("--user", default="default", help="the ACL user to AUTH as (default %(default)s)")
    a("--password", default=None, help="AUTH password (default: $COORDCORE_PASSWORD, else none)")
    a("--timeout", type=float, default=5.0, help="seconds to wait for the server")
    if top:
        a("--interval", type=float, default=1.0, help="seconds between refreshes")
        a("--count", type=int, default=10, help="keys per list (at most 100)")
        a("--scan", type=int, default=10_000, help="most keys looked at per refresh")
        a("--iterations", type=int, default=0, help="stop after this many refreshes (0: never)")
