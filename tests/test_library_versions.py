"""The server starts only on the python-engineio and python-socketio versions its overrides were tested on.

realtime/server.py, realtime/engineio_session.py, realtime/websocket.py and realtime/manager.py override
private methods of both libraries. On a version they were not written for the server does not fail at
start: it starts, and then answers every websocket handshake with a 500 (python-engineio 4.10.1 and
python-socketio 5.11.0, issue 35). So server.py refuses to start on an untested version, saying which.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import aiohttp
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from realtime.library_versions import TESTED, untested_versions
from tests.harness import WAIT
from tests.test_server_process import ROOT, free_port, run_server

BELOW_THE_FLOOR = ("python-engineio", "4.12.3")  # a real release the overrides fail on (no WebSocket.server)


def unpacked_release(name: str, version: str, into: Path) -> Path:
    """The release's wheel from the package index, unpacked: an installed copy to put first on PYTHONPATH."""
    wheels, release = into / "wheels", f"{name}=={version}"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels), release],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"pip download {release} failed (needs the package index):\n{done.stderr}"
    (wheel,) = wheels.glob("*.whl")
    site = into / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


async def websocket_handshake(port: int) -> str:
    """What a websocket client gets from the server at `port` (for the failure message)."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"):
                return "accepted"
        except aiohttp.WSServerHandshakeError as exc:
            return f"answered {exc.status}"


async def test_a_start_on_an_untested_engineio_is_refused_with_a_message_naming_it(tmp_path: Path) -> None:
    name, version = BELOW_THE_FLOOR
    site = unpacked_release(name, version, tmp_path)
    port = free_port()
    proc = await run_server("--host", "127.0.0.1", "--port", str(port), PYTHONPATH=str(site))
    try:
        _, err = await asyncio.wait_for(proc.communicate(), WAIT * 3)
    except TimeoutError:
        handshake = await websocket_handshake(port)
        proc.kill()
        await proc.wait()
        pytest.fail(f"server.py started on {name} {version}; a websocket handshake: {handshake}")
    report = err.decode()
    assert proc.returncode == 2, report
    assert "Traceback" not in report
    assert f"{name} {version}" in report and "tested" in report, report
    assert "requirements.lock" in report, report  # what to do about it


def versions(**installed: str) -> Callable[[str], str]:
    """A `version_of` answering `installed` (keys with _ for -), and PackageNotFoundError for the rest."""

    def version_of(name: str) -> str:
        try:
            return installed[name.replace("-", "_")]
        except KeyError:
            raise metadata.PackageNotFoundError(name) from None

    return version_of


@pytest.mark.parametrize("bound", [0, 1])
def test_both_ends_of_the_tested_range_are_accepted(bound: int) -> None:
    at = {name.replace("-", "_"): ends[bound] for name, ends in TESTED.items()}
    assert untested_versions(versions(**at)) == []


@pytest.mark.parametrize(
    "engineio, socketio, named",
    [
        ("4.16.0", "5.18.1", "python-engineio 4.16.0"),  # newer than tested is untested too
        ("4.15.1", "5.16.0", "python-socketio 5.16.0"),
        ("4.15.1", "6.0.0rc1", "python-socketio 6.0.0rc1"),
        ("4.15.1", "not-a-version", "python-socketio not-a-version"),
    ],
)
def test_a_version_outside_the_range_is_named(engineio: str, socketio: str, named: str) -> None:
    (problem,) = untested_versions(versions(python_engineio=engineio, python_socketio=socketio))
    assert problem.startswith(f"{named} is installed") and "tested with" in problem


def test_a_library_that_is_not_installed_is_named() -> None:
    (problem,) = untested_versions(versions(python_engineio="4.15.1"))
    assert problem.startswith("python-socketio is not installed")


def test_requirements_txt_allows_exactly_the_tested_range() -> None:
    """Anyone installing from the ranges gets a version the server starts on, and every one it starts on."""
    declared = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            declared[canonicalize_name(requirement.name)] = requirement.specifier
    for name, (lowest, highest) in TESTED.items():
        assert declared[name] == SpecifierSet(f">={lowest},<={highest}"), (name, str(declared[name]))


def test_the_installed_versions_are_tested() -> None:
    assert untested_versions() == []  # the suite runs on what the server would start on


@pytest.mark.parametrize("engineio", ["4.15.1rc1", "4.14.0.dev0", "4.13.3a1"])
def test_a_pre_release_inside_the_range_is_untested_too(engineio: str) -> None:
    """A pre-release sorts between the tested releases, but CI never ran it (no lock pins one, and pip
    installs one only when asked): a development snapshot of 4.15.1 is not 4.15.1."""
    (problem,) = untested_versions(versions(python_engineio=engineio, python_socketio="5.18.1"))
    assert problem.startswith(f"python-engineio {engineio} is installed")
