"""The ``coordcore`` command.

``coordcore id`` issues IDs and decodes them; ``coordcore locks repair`` cuts damage off
a lock log explicitly; other subcommands (``serve``) register themselves in
:func:`build_parser`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from coordcore._version import __version__
from coordcore.errors import CoordcoreError
from coordcore.ids import LAYOUTS, Snowflake, decode


def _id_command(args: argparse.Namespace) -> int:
    if args.decode is not None:
        for raw in args.decode:
            try:
                value = int(raw, 0)
            except ValueError:
                raise CoordcoreError(f"not an integer ID: {raw!r}") from None
            d = decode(value, layout=args.layout)
            row = {"id": d.id, "timestamp_ms": d.timestamp_ms, "time": d.datetime.isoformat(),
                   "datacenter": d.datacenter, "worker": d.worker, "sequence": d.sequence}
            print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()))
        return 0
    with Snowflake(args.worker_id, datacenter_id=args.datacenter_id, layout=args.layout,
                   clock=args.clock, state_file=args.state_file) as gen:
        ids = gen.next_ids(args.count)
        for value in ids.tolist():
            print(value)
        if not args.quiet and len(ids):
            d = gen.decode(int(ids[-1]))
            print(f"# {len(ids)} IDs from worker {d.worker}, datacenter {d.datacenter}, layout "
                  f"{gen.layout.name}; the last decodes to {d.datetime.isoformat()} sequence {d.sequence}",
                  file=sys.stderr)
    return 0


def _locks_repair_command(args: argparse.Namespace) -> int:
    from coordcore.locks.recovery import repair

    result = repair(args.log_dir, apply=args.apply)
    for line in result.lines():
        print(line)
    if not result.needed:
        return 0
    if args.apply:
        print(f"repaired: the log opens again; damaged files kept as: "
              f"{', '.join(result.log.backups) or 'none'}")
        return 0
    print("dry run: nothing changed; run again with --apply to do this")
    return 1


def _passwd_command(args: argparse.Namespace) -> int:
    import getpass

    from coordcore.server.acl import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("coordcore passwd: the passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("coordcore passwd: empty password", file=sys.stderr)
        return 2
    print(f'password = "{hash_password(password)}"')
    return 0


def _add_audit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from coordcore.audit import cli as audit_cli

    audit_cli.add_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coordcore", description="coordcore: Snowflake IDs, consistent "
                                     "hashing, fenced locks and leases. Run a subcommand with --help for its options.")
    parser.add_argument("--version", action="version", version=f"coordcore {__version__}",
                        help="print coordcore's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("id", help="issue Snowflake IDs, or decode them",
                       description="Issue Snowflake IDs (one per line), or decode IDs into their fields.")
    p.add_argument("-n", "--count", type=int, default=5, help="how many IDs to issue (default 5)")
    p.add_argument("--worker-id", type=int, default=int(os.environ.get("COORDCORE_WORKER_ID") or 0),
                   help="worker ID (default: $COORDCORE_WORKER_ID, else 0)")
    p.add_argument("--datacenter-id", type=int, default=None,
                   help="datacenter ID, for layouts that have datacenter bits (default 0)")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="twitter",
                   help="bit layout of the IDs (default %(default)s)")
    p.add_argument("--clock", choices=("wait", "raise", "logical"), default="wait",
                   help="when the clock goes back: wait for it, raise, or run on a logical clock ahead "
                        "(default %(default)s)")
    p.add_argument("--state-file", default=None,
                   help="persist a timestamp high-water mark here, so a restart never repeats IDs")
    p.add_argument("--decode", nargs="+", metavar="ID", help="decode these IDs instead of issuing")
    p.add_argument("--json", action="store_true", help="decode as JSON lines")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the IDs (no summary on stderr)")
    p.set_defaults(func=_id_command)

    p = sub.add_parser("locks", help="maintain a lock log (repair)", description="Maintain a lock log.")
    locks_sub = p.add_subparsers(dest="locks_command", required=True)
    p = locks_sub.add_parser(
        "repair", help="cut damage off a lock log that refuses to open (a dry run unless --apply)",
        description="Find the damage that keeps a lock log from opening and say exactly what cutting "
                    "it off drops (records, index range, bytes). A dry run unless --apply; applying "
                    "keeps every changed file as *.damaged and makes the next open raise the revision "
                    "above every fencing token issued before. Stop the server first. Exit status: 0 "
                    "nothing to repair or repaired, 1 a dry run found something, 2 an error.")
    p.add_argument("log_dir", type=Path, metavar="LOG_DIR", help="the lock log directory (DATA_DIR/locks)")
    p.add_argument("--apply", action="store_true", help="make the repair (default: only report it)")
    p.set_defaults(func=_locks_repair_command)

    p = sub.add_parser("passwd", help="print a password hash line for an ACL file",
                       description="Read a password (twice, from the terminal; or one line from stdin "
                                   "when it is not a terminal) and print its salted scrypt hash for "
                                   "the password field of an ACL file's [users.NAME] table.")
    p.set_defaults(func=_passwd_command)

    from coordcore.server import status_cli

    p = sub.add_parser("status", help="print a running server's INFO as a table",
                       description="Connect to a running coordcore server and print its INFO, one table "
                                   "per section.")
    status_cli.add_arguments(p, top=False)
    p.set_defaults(func=status_cli.run_status)
    p = sub.add_parser("top", help="a running server's INFO, busiest keys and longest waits, refreshed",
                       description="Like status, refreshed every few seconds, with the busiest keys and the "
                                   "longest waits (LOCKS.TOP, a bounded scan). Ctrl-C stops it.")
    status_cli.add_arguments(p, top=True)
    p.set_defaults(func=status_cli.run_top)

    _add_audit(sub)

    from coordcore.server import cli as serve_cli

    p = sub.add_parser("serve", help="run the coordcore server (RESP on 127.0.0.1:7379)",
                       description="Run the coordcore server: IDs, sessions, fenced locks, semaphores, "
                                   "elections and watches over RESP (redis-cli and Redis clients work).")
    serve_cli.add_arguments(p)
    p.set_defaults(func=serve_cli.run)
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    raise KeyError(name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.command == "serve" and first.config is not None:
        # The file's settings become serve's defaults: flags given still override them.
        from coordcore.server import cli as serve_cli

        serve = _subparser(parser, "serve")
        try:
            serve_cli.apply_config_file(serve, first.config)
        except CoordcoreError as exc:
            serve.error(str(exc))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (CoordcoreError, OSError) as exc:  # LogCorrupted is both; a missing directory
        print(f"coordcore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
