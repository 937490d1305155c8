"""Measure paytrack beside its floors in one run, and print the tables.

    python -m bench.run --clients 1000 --rate 1000                 # paytrack, Python floor, Node floor
    python -m bench.run --clients 5000 --rate 1000 --repeat 2      # A B C A B C, medians
    python -m bench.run --clients 1000 --rate 300 --instances 1,2,4  # one redis-server, 1/2/4 instances
    python -m bench.run --clients 1000 --rate 200 --instances 1,2,4 --rate-per-instance  # 200/s each

Targets: `paytrack` (server.py, memory storage, or Redis with several
instances), `python-floor` (bench/floor_server.py: aiohttp + python-socketio,
with python-socketio's AsyncRedisManager on Redis) and `node-floor`
(bench/node/: socket.io 4.x, installed with `npm ci` on first use). Every
target gets the same HTTP trigger and must send the same three events per
completion. What each figure means: bench/measure.py. Loopback only, bounded
in count and by `--time-limit`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from bench.measure import (
    DEFAULT_TARGETS,
    REDIS_TARGETS,
    Result,
    Scenario,
    add_paytrack_setting_option,
    median_results,
    paytrack_settings,
    run_scenario,
)
from bench.procs import TARGETS, raise_fd_limit
from bench.tables import comparison, instances_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="paytrack benchmark against its floors (loopback, bounded)")
    parser.add_argument("--clients", type=int, default=1000, help="websocket clients held open (N)")
    parser.add_argument("--rate", type=float, default=1000, help="completions per second in the fixed-rate phase")
    parser.add_argument("--rate-completions", type=int, default=4000, help="completions in the fixed-rate phase")
    parser.add_argument(
        "--rate-per-instance",
        action="store_true",
        help="--rate and --rate-completions are per instance (k instances get k times both), as when "
        "instances are added for load; without it they are spread over the instances",
    )
    parser.add_argument(
        "--saturation-completions", type=int, default=4000, help="completions in the saturation phase (0: skip it)"
    )
    parser.add_argument("--in-flight", type=int, default=64, help="requests outstanding in the saturation phase")
    parser.add_argument(
        "--instances",
        default="1",
        help="instance counts, comma-separated (e.g. 1,2,4); more than one instance, or a list, "
        "runs on one redis-server",
    )
    parser.add_argument("--redis", action="store_true", help="Redis even for one instance")
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        help="paytrack on a Redis Cluster of three primaries and three replicas (deploy/redis-cluster.sh); "
        "Redis CPU is every node's",
    )
    parser.add_argument(
        "--targets",
        help=f"comma-separated, of {', '.join(TARGETS)} (default: all three; paytrack and python-floor on Redis)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per target, alternating; medians are shown")
    parser.add_argument(
        "--clients-per-process", type=int, default=2500, help="websocket clients per load-generator process"
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=26.0,
        help="quiet window measuring idle CPU (longer than the 25 s ping interval)",
    )
    add_paytrack_setting_option(parser, "RESYNC_INTERVAL_SECONDS=10")
    parser.add_argument("--json", type=Path, help="also write every run's raw figures here")
    parser.add_argument("--time-limit", type=float, default=1800, help="seconds; the run stops itself after this")
    args = parser.parse_args(argv)
    args.instance_counts = [int(n) for n in args.instances.split(",")]
    args.paytrack_settings = paytrack_settings(parser, args.paytrack_setting)
    args.redis = args.redis or args.redis_cluster or len(args.instance_counts) > 1 or max(args.instance_counts) > 1
    if args.redis_cluster:
        args.paytrack_settings = {**args.paytrack_settings, "REDIS_CLUSTER": "true"}
    default = ["paytrack"] if args.redis_cluster else REDIS_TARGETS if args.redis else DEFAULT_TARGETS
    args.target_list = args.targets.split(",") if args.targets else default
    unknown = set(args.target_list) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s) {', '.join(sorted(unknown))}")
    if args.redis and "node-floor" in args.target_list:
        parser.error("the Node floor runs as one instance without Redis")
    if args.redis_cluster and args.target_list != ["paytrack"]:
        parser.error("on a Redis Cluster only paytrack runs (python-socketio's Redis manager has no cluster mode)")
    if not (
        1 <= args.clients <= 20000
        and 0 < args.rate_completions <= 100_000
        and 0 <= args.saturation_completions <= 100_000
        and 1 <= args.repeat <= 5
        and all(1 <= n <= 8 for n in args.instance_counts)
    ):
        parser.error("bounds: clients 1..20000, completions 1..100000 per phase, repeat 1..5, instances 1..8")
    per_process = args.clients_per_process + 200
    if per_process > raise_fd_limit() or args.clients + 1000 > raise_fd_limit():
        parser.error(f"{args.clients} clients need more file descriptors than the limit ({raise_fd_limit()})")
    return args


def scenario(args: argparse.Namespace, instances: int) -> Scenario:
    scale = instances if args.rate_per_instance else 1
    return Scenario(
        clients=args.clients,
        rate=args.rate * scale,
        rate_completions=args.rate_completions * scale,
        saturation_completions=args.saturation_completions,
        in_flight=args.in_flight,
        instances=instances,
        redis=args.redis,
        redis_cluster=args.redis_cluster,
        clients_per_process=args.clients_per_process,
        idle_seconds=args.idle_seconds,
        paytrack_settings=args.paytrack_settings,
    )


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def main_async(args: argparse.Namespace) -> dict[int, list[Result]]:
    by_count: dict[int, list[Result]] = {}
    for count in args.instance_counts:
        by_count[count] = await run_scenario(scenario(args, count), args.target_list, args.repeat, log=log)
    return by_count


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        by_count = asyncio.run(asyncio.wait_for(main_async(args), args.time_limit))
    except TimeoutError:
        log(f"bench: stopped after the {args.time_limit:.0f} s time limit")
        return 1
    for count, results in by_count.items():
        print(f"\n{scenario(args, count).label()}\n")
        print(comparison(median_results(results)))
        for r in results:
            for note in r.notes:
                print(f"- {r.target}: {note}")
    if len(by_count) > 1:
        print("\nSeveral instances on one Redis\n")
        print(instances_table({c: median_results(rs) for c, rs in by_count.items()}))
    if args.json:
        args.json.write_text(json.dumps({str(c): [r.as_dict() for r in rs] for c, rs in by_count.items()}, indent=1))
    complete = all(
        r.held == r.clients and r.missing == 0 and r.http_errors == 0 for rs in by_count.values() for r in rs
    )
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
