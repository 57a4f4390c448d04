"""A long cluster fault run (minutes): tests/cluster/nemesis.py with more time.

    PYTHONPATH=. python bench/soak_cluster.py --minutes 10 [--clients 6 --keys 3 --seed N]

Needs root (iptables, cgroups) and etcd. Prints each fault as it is injected, then the
report (operations, faults, violations, failover times, etcd's database size per member
at the end); exits 1 on any violation or harness error.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

# After PYTHONPATH (the coordcore under test), for the suite's tests package.
sys.path.append(str(Path(__file__).resolve().parent.parent))
from tests.cluster.nemesis import FAULTS, ClusterRunConfig, run  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--keys", type=int, default=3)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}")
    p.add_argument("--workdir", type=Path, default=None, help="keep histories and logs here (default: a temp dir)")
    args = p.parse_args()
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = set(faults) - set(FAULTS)
    if unknown:
        p.error(f"unknown faults {sorted(unknown)}")
    seed = random.randrange(2**32) if args.seed is None else args.seed
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="coordcore-cluster-soak-"))
    print(f"seed {seed}, histories and logs in {workdir}", flush=True)
    result = run(ClusterRunConfig(faults=faults, duration=args.minutes * 60, clients=args.clients,
                                  keys=args.keys, seed=seed, verbose=True), workdir)
    print(result.text())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
