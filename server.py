"""Entry point: `python server.py [--host H] [--port P]`.

Reads settings (environment and `.env`), builds the app with `create_app`,
and serves it until Ctrl-C or SIGTERM, both of which shut down cleanly
through the app's cleanup context.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys

from aiohttp import web

from app import create_app
from logs import configure_logging
from settings import SettingsError, load_settings


# The cyclic GC's generation thresholds (CPython's default is 700, 10, 10). Each request or update
# allocates far more than 700 objects, so with the defaults in-flight objects are promoted to the
# oldest generation all the time, and a full pass over every open connection's objects (about half a
# second at 5,000 connections) runs every few seconds under load. Larger thresholds make young
# collections rarer, so far less is promoted and full passes become rare (docs/PERFORMANCE.md).
GC_THRESHOLDS = (50_000, 20, 100)


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one: every websocket client holds a descriptor,
    and the usual soft default (1024) caps a server far below what it can serve."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="paytrack: real-time payment tracking server")
    parser.add_argument("--host", help="interface to bind (overrides HOST)")
    parser.add_argument("--port", type=int, help="port to bind (overrides PORT)")
    args = parser.parse_args(argv)

    overrides: dict[str, object] = {}
    if args.host:
        overrides["HOST"] = args.host
    if args.port is not None:
        overrides["PORT"] = args.port
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"paytrack: {exc}", file=sys.stderr)
        return 2

    raise_fd_limit()
    configure_logging(settings.LOG_LEVEL, json_lines=settings.is_production, instance_id=settings.INSTANCE_ID)
    app = create_app(settings)
    # Everything loaded so far lives as long as the process: keep it out of the collector's full
    # passes, which otherwise pause the loop for longer the more there is (docs/PERFORMANCE.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    web.run_app(
        app,
        host=settings.HOST,
        port=settings.PORT,
        print=lambda msg: print(msg, file=sys.stderr),
        shutdown_timeout=5.0,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
