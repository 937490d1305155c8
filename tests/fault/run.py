"""Run the fault-injection scenario at any size and print the figures of issues 11 and 31.

    .venv/bin/python -m tests.fault.run --payments 500
    .venv/bin/python -m tests.fault.run --payments 3000 --keep
    .venv/bin/python -m tests.fault.run --payments 500 --cluster

Everything runs on this machine's loopback: one redis-server, two server.py
processes, the CamPay fake and every client in this process. A fifth of the
payments are CamPay payment links (half paid by card), unknown to CamPay until
their payer starts paying. The storm lasts
payments/25 seconds (16 s at least, two minutes at most) unless --duration
says otherwise; the whole run is bounded (each phase has a timeout).
Exit status: 0 when no violation was found, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

from tests.fault.checks import evaluate
from tests.fault.plan import Scenario
from tests.fault.scenario import run_scenario


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payments", type=int, default=500)
    parser.add_argument("--duration", type=float, help="storm length in seconds (default: payments/25, 16 to 120)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--examples", type=int, default=5, help="examples printed per violation category")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs, Redis files)")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="on a Redis Cluster (3+3), whose fault is a failover that loses acknowledged writes (issue 33)",
    )
    args = parser.parse_args(argv)

    scenario = Scenario.scaled(args.payments, seed=args.seed)
    if args.duration:
        scenario = dataclasses.replace(scenario, duration=args.duration)
    workdir = Path(tempfile.mkdtemp(prefix="paytrack-fault-"))
    print(
        f"fault injection: {scenario.payments} payments over {scenario.duration:.0f} s; work dir {workdir}", flush=True
    )
    try:
        result = asyncio.run(
            run_scenario(scenario, workdir, progress=lambda line: print(line, flush=True), cluster=args.cluster)
        )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = evaluate(result)
    print(report.text(args.examples))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
