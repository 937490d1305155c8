"""The python-engineio and python-socketio versions the server's overrides were tested on, and the check.

The Socket.IO server overrides private names of both libraries (AsyncSocket's
flags and queue, `_websocket_handler`, `_handle_connect`, `_send_eio_packet`,
the aiohttp `WebSocket`'s `server`, the Redis manager's `_listen` and
`_publish`, its `json` argument, ...), which change between releases without
notice. On a release they were not written for the server still starts, and
then fails where it hurts: with python-engineio 4.13.1 every websocket
handshake answers 500 (`'BatchingWebSocket' object has no attribute
'server'`), with python-socketio 5.16.0 every instance on Redis fails to
build its manager (no `json` argument).

So `server.py` refuses to start on a version outside `TESTED`. The lower
bound is the lowest release the transport tests pass on (issue 35: 4.13.2
and 5.16.1, found by installing each release over requirements-dev.lock);
the upper bound the newest release CI runs the whole suite on (the locks).
CI runs the transport tests on both (.ci/run). requirements.txt declares the
same ranges (tests/test_dependencies.py holds them equal), and
requirements-floor.lock pins the lower bounds for CI's second run.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

from packaging.version import InvalidVersion, Version

# Each library's lowest and highest tested release, both included.
TESTED: dict[str, tuple[str, str]] = {
    "python-engineio": ("4.13.2", "4.15.1"),
    "python-socketio": ("5.16.1", "5.18.1"),
}


def untested_versions(version_of: Callable[[str], str] = metadata.version) -> list[str]:
    """One line per library whose installed version is outside `TESTED` (or that is not installed)."""
    problems = []
    for name, (lowest, highest) in TESTED.items():
        tested = f"{name} {lowest} to {highest}"
        try:
            installed = version_of(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed; the server was tested with {tested}")
            continue
        try:
            version = Version(installed)
            # A pre-release sorts between tested releases, but none was tested (a 4.15.1rc1 is not 4.15.1).
            inside = not version.is_prerelease and Version(lowest) <= version <= Version(highest)
        except InvalidVersion:
            inside = False
        if not inside:
            problems.append(f"{name} {installed} is installed; the server was tested with {tested} only")
    return problems


def refusal(problems: list[str]) -> str:
    """What server.py prints before it exits without starting."""
    lines = "\n".join(f"  {line}" for line in problems)
    return (
        "paytrack: cannot start on untested versions of the Socket.IO libraries:\n"
        f"{lines}\n"
        "  The server overrides private parts of them (realtime/library_versions.py says why).\n"
        "  Install the tested versions: pip install --require-hashes -r requirements.lock"
    )
