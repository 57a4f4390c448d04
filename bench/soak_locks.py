"""A long fault run (minutes): the suite's fault harness (tests/fault) with more time.

    PYTHONPATH=. python bench/soak_locks.py --minutes 5 [--clients 6 --keys 3 --ttl 1.5 --seed N]

Prints progress, then the report (operations, faults, violations, prober PING
percentiles); exits 1 on any violation. ``--broken-fence`` runs it against a fence that
admits every write, to see the checker catch it. To try another built checkout (its
server and client), run it with that tree on PYTHONPATH and from outside this checkout
(``python -m`` would find the current directory's package first).
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

# After PYTHONPATH (the coordcore under test), for the suite's tests.fault package.
sys.path.append(str(Path(__file__).resolve().parent.parent))
from tests.fault.harness import RunConfig, run  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--keys", type=int, default=3)
    p.add_argument("--ttl", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--broken-fence", action="store_true")
    p.add_argument("--workdir", type=Path, default=None, help="keep histories here (default: a temp dir)")
    args = p.parse_args()
    seed = random.randrange(2**32) if args.seed is None else args.seed
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="coordcore-soak-"))
    print(f"seed {seed}, histories in {workdir}", flush=True)
    result = run(RunConfig(duration=args.minutes * 60, clients=args.clients, keys=args.keys, ttl=args.ttl,
                           seed=seed, fence_broken=args.broken_fence, verbose=True), workdir)
    print(result.text())
    return 0 if result.report.ok and not result.harness_errors else 1


if __name__ == "__main__":
    sys.exit(main())
