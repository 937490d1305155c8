"""Free ports for the servers the suite starts, each pytest-xdist worker in its own band.

The kernel's bind(0) hands out ephemeral ports shared by every process: a port one worker was given and
released (to pass to a server it is about to start) could be handed to another worker's bind(0), or to an
outgoing connection's source port, before that server binds it. Each worker takes ports in turn from its
own band below the ephemeral range (32768 and up) instead, checked free by binding, so no two workers,
and no two calls of one worker, return the same port. A Redis Cluster node's bus port (its port + 10000)
falls below the ephemeral range and outside every band too.
"""

from __future__ import annotations

import itertools
import os
import socket

_FIRST, _LAST = 12000, 20000  # the bands; + 10000 (cluster bus ports) stays below 32768


def _band() -> range:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (_LAST - _FIRST) // max(workers, 1)
    start = _FIRST + worker * size
    return range(start, start + size, 2)  # never two neighbours: a test may hold the port after one it got


_BAND = _band()
_next = itertools.cycle(_BAND)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port nothing listens on, from this worker's band."""
    for _ in range(len(_BAND)):
        port = next(_next)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError(f"no free port in {_BAND}")


def free_ports(count: int) -> list[int]:
    """`count` different free ports."""
    return [free_port() for _ in range(count)]
