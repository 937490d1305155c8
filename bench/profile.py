"""Where a target's CPU goes under load: py-spy attached to the server during the fixed-rate phase.

    python -m bench.profile --clients 1000 --rate 1000 --completions 8000
    python -m bench.profile --targets paytrack,python-floor   # the floor's profile beside it
    python -m bench.profile --redis --rate 300                # storage and pub/sub on a redis-server
    python -m bench.profile --instances 4 --rate 200          # the first of 4 instances on one redis-server

py-spy (PyPI, a sampling profiler that reads the process from outside, so the
server runs unmodified) records with `--function` (samples grouped by
function, not line). It pauses the server for each sample, which keeps every
stack whole (`--nonblocking` tore about a fifth of them) at the cost of a
little CPU, so the CPU per completion of a profiled run is not a
measurement. Idle samples are left out, so a share is of the samples where the
server was working: py-spy leaves out most of them itself, and those it
misses while the process is paused (the loop waiting in `select`, the
thread pool's worker waiting for a job; measured with `--idle`, they
are the idle samples, and without them the busy counts match) are dropped
here by their top frame.
"Own" is the share where the function itself was on top of the stack,
"total" the share where it was anywhere on the stack. Needs ptrace rights
over the server (root, or kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import Result, Scenario, add_paytrack_setting_option, measure, paytrack_settings
from bench.procs import PAYTRACK, PYTHON_FLOOR, ROOT, Server, raise_fd_limit

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# A sample whose top frame is one of these is a thread waiting, not working.
IDLE_TOP = re.compile(
    r"^(EpollSelector\.select \(selectors\.py\)|_worker \(stdlib/concurrent/futures/thread\.py\)|"
    r"_worker \(concurrent/futures/thread\.py\))$"
)
# Under every sample: the entry point and the event loop's own run loop. Left out of the "total" view.
PLUMBING = re.compile(
    r"^(<module>|main|run_app|BaseEventLoop\.(run_forever|run_until_complete|_run_once)|"
    r"Runner\.run|run|Handle\._run) \("
)


@dataclass
class Profile:
    target: str
    samples: int = 0
    idle_dropped: int = 0
    own: Counter[str] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)

    def top(self, n: int, by: str = "own") -> list[tuple[str, float, float | None]]:
        """(function, own share, total share), hottest first. By total, the entry point and the event
        loop's run loop (under every sample) are left out: they say nothing."""
        if not self.samples:
            return []
        if by == "own":
            names = [name for name, _ in self.own.most_common(n)]
        else:
            names = [name for name, _ in self.total.most_common() if not PLUMBING.match(name)][:n]
        # A saved profile may lack a function's total (older runs kept the top 60 only): None, not 0.
        return [
            (name, self.own[name] / self.samples, self.total[name] / self.samples if name in self.total else None)
            for name in names
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "samples": self.samples,
            "idle_dropped": self.idle_dropped,
            "own": dict(self.own.most_common()),
            "total": dict(self.total.most_common()),
        }


def short_name(frame: str) -> str:
    """`handle (/x/site-packages/aiohttp/web_protocol.py:4)` -> `handle (aiohttp/web_protocol.py)`."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("/lib/"):
                path = "stdlib/" + path.split("/", 1)[1]
            break
    else:
        with contextlib.suppress(ValueError):
            path = str(Path(path).resolve().relative_to(ROOT))
    return f"{match.group('func')} ({path})"


def parse_collapsed(text: str, target: str) -> Profile:
    """py-spy's raw (collapsed) output: `frame;frame;...;frame count` per line, outermost first."""
    profile = Profile(target)
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short_name(f) for f in stack.split(";") if f]
        if (frames and frames[0].startswith("process ")) or (frames and frames[0].startswith("thread ")):
            frames = frames[1:]
        if not frames:
            continue
        if IDLE_TOP.match(frames[-1]):
            profile.idle_dropped += n
            continue
        profile.samples += n
        profile.own[frames[-1]] += n
        for name in set(frames):
            profile.total[name] += n
    return profile


def pyspy_binary() -> str:
    candidate = Path(sys.executable).parent / "py-spy"
    found = str(candidate) if candidate.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("py-spy is not installed (pip install --require-hashes -r requirements-dev.lock)")
    return found


def recorder(into: dict[str, Profile], rate: int = 250) -> Any:
    """A `during_rate` hook for `measure`: py-spy on the first instance while the fixed-rate phase runs."""

    @contextlib.asynccontextmanager
    async def hook(result: Result, servers: list[Server]) -> AsyncIterator[None]:
        out = Path(tempfile.mkdtemp(prefix="bench-pyspy-")) / "profile.txt"
        proc = await asyncio.create_subprocess_exec(
            pyspy_binary(),
            "record",
            "--pid",
            str(servers[0].pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--function",
            "-o",
            str(out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(1.0)  # attached before the first update
        try:
            yield None
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            if not out.exists():
                raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-800:]}")
            into[result.target] = parse_collapsed(out.read_text(), result.target)
            shutil.rmtree(out.parent, ignore_errors=True)

    return hook


def table(profile: Profile, n: int = 15, by: str = "own") -> str:
    lines = [
        f"{profile.samples} samples of {profile.target} (py-spy; {profile.idle_dropped} idle ones left out), "
        f"top {n} by {'own' if by == 'own' else 'total (entry point and event loop left out)'} "
        "share:",
        "",
        "| # | function | own | total |",
        "|---|---|---|---|",
    ]
    for i, (name, own, total) in enumerate(profile.top(n, by), 1):
        lines.append(f"| {i} | `{name}` | {own:.1%} | {'n/a' if total is None else f'{total:.1%}'} |")
    return "\n".join(lines)


async def profile_targets(sc: Scenario, targets: list[str]) -> tuple[dict[str, Profile], list[Result]]:
    profiles: dict[str, Profile] = {}
    results = []
    for target in targets:
        print(f"bench: profiling {target} ({sc.label()}) ...", file=sys.stderr, flush=True)
        results.append(await measure(target, sc, during_rate=recorder(profiles)))
    return profiles, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="py-spy profile of a target under load (loopback, bounded)")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--completions", type=int, default=10000)
    parser.add_argument("--targets", default=PAYTRACK, help=f"comma-separated: {PAYTRACK}, {PYTHON_FLOOR}")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--redis", action="store_true", help="one instance on a redis-server (as bench.run --redis)")
    parser.add_argument(
        "--redis-cluster", action="store_true", help="on a Redis Cluster of 3+3 nodes (as bench.run --redis-cluster)"
    )
    parser.add_argument(
        "--instances", type=int, default=1, help="instances on one redis-server (the first one is profiled)"
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=0.5,
        help="quiet window before the fixed rate (bench.run's is 26 s: every socket pinged once)",
    )
    add_paytrack_setting_option(parser, "EVENT_LOOP=asyncio (py-spy sees the loop's frames)")
    args = parser.parse_args(argv)
    settings = paytrack_settings(parser, args.paytrack_setting)
    if args.redis_cluster:
        settings = {**settings, "REDIS_CLUSTER": "true"}
    if not (1 <= args.clients <= 10000 and 1 <= args.completions <= 50000 and 1 <= args.instances <= 8):
        parser.error("bounds: clients 1..10000, completions 1..50000, instances 1..8")
    raise_fd_limit()
    sc = Scenario(
        clients=args.clients,
        rate=args.rate,
        rate_completions=args.completions,
        saturation_completions=0,
        idle_seconds=args.idle_seconds,
        paytrack_settings=settings,
        redis=args.redis or args.redis_cluster or args.instances > 1,
        redis_cluster=args.redis_cluster,
        instances=args.instances,
    )
    targets = args.targets.split(",")
    if unknown := [t for t in targets if t not in (PAYTRACK, PYTHON_FLOOR)]:
        parser.error(f"cannot profile {', '.join(unknown)}: py-spy reads Python processes ({PAYTRACK}, {PYTHON_FLOOR})")
    profiles, results = asyncio.run(profile_targets(sc, targets))
    for result in results:
        print(
            f"\n{result.target}: {result.achieved_rate:.0f} completions/s achieved, "
            f"{result.cpu_us_per_completion:.0f} µs CPU per completion (with py-spy attached)\n"
        )
        print(table(profiles[result.target], args.top, "own"))
        print()
        print(table(profiles[result.target], args.top, "total"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
