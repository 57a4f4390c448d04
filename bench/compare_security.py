"""What users, permissions and TLS cost, in one run: `./dev bench security`.

1. ACL: durable lock cycles (the C load generator, 32 clients x 1000 keys) against a
   server with an ACL file of 100 users, each limited to its own key prefixes (the
   load's user is one of them, limited to ``bench/``), beside the same server with no
   users. Every connection AUTHs first; every lock command is checked against its
   user's prefixes. Rounds alternate between the two servers.
2. TLS: redis-benchmark PING (-c 50, -P 1 and -P 16), plaintext and ``--tls``, against
   ``coordcore serve --tls-cert/--tls-key`` and against redis-server's own TLS port, in
   the same run: the TLS/plaintext ratio of each, and coordcore over Redis under TLS.

Figures are medians over alternating rounds, with the spread (min-max) beside them:
the machine is shared and has 2 cores, so only same-run ratios mean anything; the ACL
case also reports the server's CPU per cycle, which a busy machine disturbs less.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _loadgen  # noqa: E402
import _peers  # noqa: E402
from _report import Report  # noqa: E402

from coordcore.server.acl import hash_password  # noqa: E402

QUICK = os.environ.get("COORDCORE_BENCH_QUICK") == "1"
ROUNDS = 1 if QUICK else 3
USERS = 100
PASSWORD = "bench-password"


def acl_file(directory: Path) -> Path:
    """100 users with their own prefixes; ``bench`` (the load's user) may lock ``bench/``.
    One hash line for all (scrypt is the cost of AUTH, paid once per connection)."""
    line = hash_password(PASSWORD)
    parts = []
    for i in range(USERS - 1):
        parts.append(f'[users.team{i}]\npassword = "{line}"\nlock = ["team{i}/", "shared/team{i}/"]\n'
                     f'read = ["team{i}/"]\nwatch = ["team{i}/"]\ncommands = ["locks", "ids"]\n')
    parts.append(f'[users.bench]\npassword = "{line}"\nlock = ["bench/"]\nread = ["bench/"]\n'
                 f'commands = ["locks"]\n')
    path = directory / "acl.toml"
    path.write_text("\n".join(parts))
    return path


def spread(values: list[float]) -> str:
    return f"median of {len(values)}, {min(values):,.0f}..{max(values):,.0f}"


def alternate(cases: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Run each case once per round, in turn, for ROUNDS rounds: {case: figures}."""
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, fn in cases.items():
            out[name].append(fn())
    return out


def bench_acl(report: Report) -> None:
    seconds = 1.5 if QUICK else 4.0
    plain, plain_port, _ = _peers.start_coordcore()
    acl_dir = _peers.tmpdir("acl")
    with_acl, acl_port, _ = _peers.start_coordcore("--acl-file", str(acl_file(acl_dir)))

    cpu: dict[int, list[float]] = {acl_port: [], plain_port: []}

    def cycles(proc: subprocess.Popen[bytes], port: int, auth: tuple[str, str] | None) -> float:
        cpu0 = _peers.cpu_seconds_of(proc.pid)
        stats = _loadgen.run(port, "coordcore", clients=32, keys=1000, seconds=seconds, warmup=1.0, auth=auth)
        cpu[port].append((_peers.cpu_seconds_of(proc.pid) - cpu0) / stats.all_cycles * 1e9)
        return stats.cycles_per_s

    runs = alternate({"acl": lambda: cycles(with_acl, acl_port, ("bench", PASSWORD)),
                      "none": lambda: cycles(plain, plain_port, None)})
    report.row(f"lock cycles 32 x 1000 keys, ACL of {USERS} users", "cycles/s",
               statistics.median(runs["acl"]), "no ACL", statistics.median(runs["none"]),
               spread_ours=spread(runs["acl"]), spread_peer=spread(runs["none"]))
    # Server CPU per cycle moves less than throughput when the machine is shared.
    report.row("  server CPU per cycle, ACL vs none", "ns", statistics.median(cpu[acl_port]), "no ACL",
               statistics.median(cpu[plain_port]), higher_is_better=False,
               spread_ours=spread(cpu[acl_port]), spread_peer=spread(cpu[plain_port]))
    for proc in (plain, with_acl):
        _peers.stop(proc)


def make_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 (openssl): (ca, cert, key)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=bench-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "san.ext", "-out", "server.crt")
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


def ping_rps(port: int, *, pipeline: int, tls_ca: Path | None) -> float:
    requests = (50_000 if QUICK else 200_000) * (4 if pipeline > 1 else 1)
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", "50", "-n", str(requests),
            "-P", str(pipeline), "--csv"]
    if tls_ca is not None:
        argv += ["--tls", "--cacert", str(tls_ca)]
    out = subprocess.run([*argv, "PING"], capture_output=True, text=True, timeout=600, check=True).stdout
    line = [ln for ln in out.strip().splitlines() if ln.startswith('"') and not ln.startswith('"test"')][-1]
    return float(line.split(",")[1].strip('"'))


def bench_tls(report: Report) -> None:
    ca, cert, key = make_pki(_peers.tmpdir("pki"))
    cc_plain, cc_plain_port, _ = _peers.start_coordcore()
    cc_tls, cc_tls_port, _ = _peers.start_coordcore("--tls-cert", str(cert), "--tls-key", str(key))
    redis, redis_port = _peers.start_redis()
    redis_tls_port = _peers.free_port()
    data = _peers.tmpdir("redis-tls")
    redis_tls = _peers.start(
        ["redis-server", "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(redis_tls_port),
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--save", "", "--dir", str(data), "--daemonize", "no"],
        port=redis_tls_port, what="redis-server (TLS)")
    for pipeline in (1, 16):
        runs = alternate({
            "cc": lambda: ping_rps(cc_plain_port, pipeline=pipeline, tls_ca=None),
            "cc_tls": lambda: ping_rps(cc_tls_port, pipeline=pipeline, tls_ca=ca),
            "redis": lambda: ping_rps(redis_port, pipeline=pipeline, tls_ca=None),
            "redis_tls": lambda: ping_rps(redis_tls_port, pipeline=pipeline, tls_ca=ca),
        })
        med = {name: statistics.median(v) for name, v in runs.items()}
        flags = f"-c 50 -P {pipeline}"
        report.row(f"coordcore PING over TLS, {flags}", "req/s", med["cc_tls"], "coordcore plaintext",
                   med["cc"], spread_ours=spread(runs["cc_tls"]), spread_peer=spread(runs["cc"]))
        report.row(f"redis PING over TLS, {flags}", "req/s", med["redis_tls"], "redis plaintext",
                   med["redis"], spread_ours=spread(runs["redis_tls"]), spread_peer=spread(runs["redis"]))
        report.row(f"PING over TLS, coordcore vs redis, {flags}", "req/s", med["cc_tls"], "redis TLS",
                   med["redis_tls"])
    for proc in (cc_plain, cc_tls, redis, redis_tls):
        _peers.stop(proc)


def main() -> None:
    report = Report("security", {})
    report.versions.update(_peers.versions())
    try:
        print("-- ACL: lock cycles with 100 users vs none")
        bench_acl(report)
        print("-- TLS: redis-benchmark PING, plaintext vs TLS, coordcore and redis-server")
        bench_tls(report)
    finally:
        _peers.stop_all()
    report.finish()


if __name__ == "__main__":
    main()
