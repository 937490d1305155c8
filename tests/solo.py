"""Tests marked `solo` run alone while the rest of the suite runs on several pytest-xdist workers.

The suite is mostly waiting (for server processes, Redis failovers, browsers, timeouts), so it runs on
four workers (pyproject.toml). A few tests are the load themselves and must not share the machine: the
fault-injection runs (two instances, hundreds of pages and a driver whose own lag is a reported figure)
and the bench (whose numbers mean nothing beside other work). Each test holds a shared lock on one file
for its whole run (setup to teardown); a `solo` test holds it exclusively, so it starts once every
running test has ended and nothing starts beside it. flock(2) does not queue an exclusive waiter ahead
of new shared holders, so the solo tests in practice run when the other workers run out of work: the
suite's end. Without xdist, nothing is locked.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _lock_path() -> Path | None:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    return Path(tempfile.gettempdir()) / f"paytrack-solo-{run}.lock" if run else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    path = _lock_path()
    if path is None:
        return (yield)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if item.get_closest_marker("solo") else fcntl.LOCK_SH)
        try:
            return (yield)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
