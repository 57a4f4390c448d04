"""``coordcore audit``: keygen, history, export, verify (offline, on a data directory).

Exit status: 0 success (verify: everything checks), 1 verify found a problem, 2 an error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


__all__ = ["add_parser"]


def _audit_dir(data_dir: Path) -> Path:
    """DATA_DIR/audit, or the audit directory itself."""
    return data_dir if (data_dir / "journal.log").exists() else data_dir / "audit"


def _time_ms(text: str) -> int:
    """Milliseconds since the epoch, or an ISO 8601 time (UTC unless it says)."""
    if text.isdigit():
        return int(text)
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time (ms since the epoch or ISO 8601): {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return int(t.timestamp() * 1000)


def _keygen(args: argparse.Namespace) -> int:
    from coordcore.audit.checkpoint import write_keypair

    pub = write_keypair(args.key)
    print(f"private key: {args.key} (give it to `coordcore serve --audit-key`)")
    print(f"public key:  {pub} (give it to `coordcore audit verify --public-key`)")
    return 0


def _history(args: argparse.Namespace) -> int:
    from coordcore.audit.history import query

    after, left = 0, args.limit
    while left > 0:
        events, after = query(_audit_dir(args.data_dir), args.prefix.encode(), args.since, args.until,
                              after=after, limit=min(left, 1000), archives=args.archive)
        for ev in events:
            print(json.dumps(ev.to_json()))
        left -= len(events)
        if not after:
            break
    return 0


def _export(args: argparse.Namespace) -> int:
    from coordcore.audit.history import export

    out = open(args.output, "w") if args.output else sys.stdout
    try:
        for line in export(_audit_dir(args.data_dir), args.since, archives=args.archive):
            out.write(line + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _verify(args: argparse.Namespace) -> int:
    from coordcore.audit.checkpoint import Keyring, load_public_key
    from coordcore.audit.verify import read_lines, verify_lines

    public = Keyring(load_public_key(p) for p in [args.public_key, *args.trusted_key])
    if args.source.is_dir():
        from coordcore.audit.history import export

        report = verify_lines(export(_audit_dir(args.source), archives=args.archive), public)
    else:
        with open(args.source, "rb") as f:
            report = verify_lines(read_lines(f), public)
    for p in report.problems:
        print(f"FAIL {p}")
    if report.more_problems:
        print(f"FAIL ... and {report.more_problems} more problems")
    what = "replayed: revisions, states and events match" if report.replayed else \
        "not replayed (the export does not start at the journal's first record)"
    print(f"{'ok' if report.ok else 'FAILED'}: {report.records} records, {report.checkpoints} checkpoints; {what}")
    return 0 if report.ok else 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``coordcore audit ...`` on the top-level subparsers."""
    p = sub.add_parser("audit", help="the audit trail: keygen, history, export, verify",
                       description="Read, export and verify a server's tamper-evident audit trail "
                                   "(DATA_DIR/audit), and make its signing key.")
    s = p.add_subparsers(dest="audit_command", required=True)

    def archives(q: argparse.ArgumentParser) -> None:
        q.add_argument("--archive", type=Path, action="append", default=[], metavar="DIR",
                       help="a directory holding archived journal segments (repeatable)")

    q = s.add_parser("keygen", help="write a new Ed25519 key pair (KEY and KEY.pub)",
                     description="Write a new Ed25519 private key (for serve --audit-key) and its public "
                                 "key beside it, KEY.pub (for audit verify).")
    q.add_argument("key", type=Path, metavar="KEY", help="where the private key goes (refuses to overwrite)")
    q.set_defaults(func=_keygen)

    q = s.add_parser("history", help="the events on keys under a prefix in a time range (JSON lines)",
                     description="Print the coordination events (opened, granted, waited, released, "
                                 "expired) on keys under a prefix in a time range, one JSON object a line.")
    q.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="the server's data directory")
    q.add_argument("prefix", nargs="?", default="", help="key prefix (default: all, with session events)")
    q.add_argument("--since", type=_time_ms, default=0, help="from this time (ms or ISO 8601)")
    q.add_argument("--until", type=_time_ms, default=2**63 - 1, help="to this time (ms or ISO 8601)")
    q.add_argument("--limit", type=int, default=10_000, help="most events printed (default %(default)s)")
    archives(q)
    q.set_defaults(func=_history)

    q = s.add_parser("export", help="records with events and proofs, as JSON lines",
                     description="Export the audited records with their events, inclusion proofs and "
                                 "the signed checkpoints, as JSON lines (what audit verify reads).")
    q.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="the server's data directory")
    q.add_argument("--since", type=int, default=0, help="from this record index (default: the first)")
    q.add_argument("-o", "--output", type=Path, default=None, help="write here (default: stdout)")
    archives(q)
    q.set_defaults(func=_export)

    q = s.add_parser("verify", help="check an export or a data directory against a public key",
                     description="Check every proof and checkpoint signature of an export (or a data "
                                 "directory) and replay its records; any edited, dropped, reordered or "
                                 "inserted record is reported with its position.")
    q.add_argument("source", type=Path, metavar="EXPORT_OR_DATA_DIR", help="an export file or a data directory")
    q.add_argument("--public-key", type=Path, required=True, help="the checkpoint signer's public key (PEM)")
    q.add_argument("--trusted-key", type=Path, action="append", default=[], metavar="PUBKEY",
                   help="an older public key (PEM) whose checkpoints are also accepted, after a key "
                        "rotation (repeatable); a checkpoint of any other key fails")
    archives(q)
    q.set_defaults(func=_verify)

