"""Entry point: `python server.py [--host H] [--port P] [--check]`.

Refuses to start on python-engineio or python-socketio versions the server
was not tested with (realtime/library_versions.py). Reads settings
(environment and `.env`), builds the app with `create_app`, and serves it
until Ctrl-C or SIGTERM. Either stops the process within
SHUTDOWN_TIMEOUT_SECONDS: new connections are refused at once, Socket.IO
connections are closed so their clients reconnect to another instance,
in-flight requests may finish, then pools close through the app's cleanup
context; a process still running at the bound exits anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import resource
import signal
import sys
import threading
from collections.abc import Callable

from aiohttp import web

from app import REQUESTS_SHARE, SOCKETS_SHARE, create_app
from core.collector import CollectorKeeper, FreezePolicy
from core.settings import Settings, SettingsError, load_settings
from observability.logs import AccessLogger, configure_logging
from realtime.library_versions import refusal, untested_versions
from realtime.server import SIO, close_connections

log = logging.getLogger("paytrack")

EPILOG = """\
Every other setting comes from the environment or a .env file in the working
directory (environment wins; an empty value means unset). All of them, with
their defaults, are in the settings table of README.md and in .env.example.
`--check` prints every problem at once (exit 2), or the effective settings.
"""


# The cyclic GC's generation thresholds (CPython's default is 700, 10, 10). Each request or update
# allocates far more than 700 objects, so with the defaults in-flight objects are promoted to the
# oldest generation all the time, and a full pass over every open connection's objects (about half a
# second at 5,000 connections) runs every few seconds under load. Larger thresholds make young
# collections rarer, so far less is promoted and full passes become rare (docs/PERFORMANCE.md).
# Not too large either: a young collection walks everything allocated since the last one, and with
# (50_000, 20, 100) a middle-generation pass walked about 900,000 objects at 5,000 connections and
# stopped the loop for 0.55 s (gc.callbacks, in the bench's fixed-rate phase); with these, 40-50 ms.
GC_THRESHOLDS = (20_000, 5, 100)


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="paytrack: real-time payment tracking server",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host", help="interface to bind (overrides HOST; default 127.0.0.1 in development, 0.0.0.0 in production)"
    )
    parser.add_argument("--port", type=int, help="port to bind (overrides PORT; default 5000)")
    parser.add_argument(
        "--check", action="store_true", help="validate the configuration and print it (secrets masked), then exit"
    )
    return parser.parse_args(argv)


def check(settings: Settings) -> None:
    print("configuration OK; effective settings:")
    for name, value in settings.effective().items():
        print(f"{name}={value}")


def start_shutdown_watchdog(settings: Settings) -> None:
    """Past SHUTDOWN_TIMEOUT_SECONDS after shutdown began, exit whatever is still running.

    A thread, not a task: it must fire even if the event loop is stuck.
    """

    def overdue() -> None:
        log.error(
            "shutdown took longer than SHUTDOWN_TIMEOUT_SECONDS; exiting now",
            extra={"timeout_seconds": settings.SHUTDOWN_TIMEOUT_SECONDS},
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(1)

    timer = threading.Timer(settings.SHUTDOWN_TIMEOUT_SECONDS, overdue)
    timer.daemon = True
    timer.start()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    untested = untested_versions()
    if untested:  # before anything runs on them (exit 2: systemd's unit does not restart it)
        print(refusal(untested), file=sys.stdout if args.check else sys.stderr)
        return 2
    overrides: dict[str, object] = {}
    if args.host:
        overrides["HOST"] = args.host
    if args.port is not None:
        overrides["PORT"] = args.port
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"paytrack: {exc.report()}", file=sys.stdout if args.check else sys.stderr)
        return 2
    if args.check:
        check(settings)
        return 0

    raise_fd_limit()
    configure_logging(settings.LOG_LEVEL, json_lines=settings.is_production, instance_id=settings.INSTANCE_ID)
    app = create_app(settings)
    # Everything loaded so far lives as long as the process: keep it out of the collector's full
    # passes, which otherwise pause the loop for longer the more there is (docs/PERFORMANCE.md). Once
    # serving, the collector keeper runs the collector instead (`serve`, core/collector.py).
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    with asyncio.Runner(loop_factory=event_loop_factory(settings)) as runner:
        return runner.run(serve(app, settings))


def event_loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when the settings allow and it is installed: the same asyncio API, with the sockets,
    timers and callbacks in C (docs/PERFORMANCE.md); otherwise asyncio's default loop (None)."""
    if settings.EVENT_LOOP == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def serve(app: web.Application, settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, then stop in order, within SHUTDOWN_TIMEOUT_SECONDS.

    Not `web.run_app`: its shutdown first stops reading from every open
    connection, so a websocket client's answer to our close never arrives and
    each open socket holds the process until the timeout. Here sockets are
    closed, and their closing handshakes waited for, while their connections
    are still read, right after the listener stops (so a reconnecting client
    reaches another instance); `runner.cleanup()` is the step that stops
    reading (`close_connections` says why that order matters).
    """
    stopping = asyncio.Event()  # set by SIGTERM or SIGINT, even one that arrives while starting
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=AccessLogger,
        shutdown_timeout=settings.SHUTDOWN_TIMEOUT_SECONDS * REQUESTS_SHARE,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.HOST, settings.PORT, backlog=settings.LISTEN_BACKLOG)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen", extra={"host": settings.HOST, "port": settings.PORT, "error": str(exc)})
        await runner.cleanup()
        return 1
    log.info("listening", extra={"url": f"http://{settings.HOST}:{settings.PORT}"})
    keeper = None
    if settings.GC_FREEZE_AFTER_SESSIONS:
        eio = app[SIO].eio
        keeper = CollectorKeeper(lambda: eio.sessions_created, FreezePolicy(settings.GC_FREEZE_AFTER_SESSIONS))
        keeper.start()

    await stopping.wait()

    if keeper is not None:
        await keeper.stop()

    log.info("shutting down", extra={"timeout_seconds": settings.SHUTDOWN_TIMEOUT_SECONDS})
    start_shutdown_watchdog(settings)
    await site.stop()  # new connections are refused from here on
    await close_connections(app[SIO], settings.SHUTDOWN_TIMEOUT_SECONDS * SOCKETS_SHARE)
    await runner.cleanup()  # in-flight requests finish (or are cancelled), then pools and tasks close
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
