"""What a newcomer installs is what the suite passed with: the Quickstart and CI install only from the
hash-pinned lock files, and those pin what requirements*.txt allow and what this interpreter runs.

requirements.txt and requirements-dev.txt keep compatible ranges (for library users and for
`pip-compile`); requirements.lock and requirements-dev.lock pin every package, transitive ones too,
with the hashes of its files, and pip's hash-checking mode refuses anything else.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from realtime.library_versions import TESTED
from tests.test_server_process import ROOT

README = (ROOT / "README.md").read_text()
CI_RUN = (ROOT / ".ci" / "run").read_text()
SERVER_LOCK = "requirements.lock"
DEV_LOCK = "requirements-dev.lock"
FLOOR_LOCK = "requirements-floor.lock"  # the lowest allowed Socket.IO libraries, over the dev lock (--no-deps)


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    requirement: Requirement
    hashes: tuple[str, ...]


def read_lock(name: str) -> dict[str, Pin]:
    """The pins of a pip-compile lock file, by canonical name (every line checked, none skipped)."""
    text = (ROOT / name).read_text().replace("\\\n", " ")
    pins: dict[str, Pin] = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = re.split(r"\s+(?=--)", line)
        assert not spec.startswith("-"), f"{name}: an option line is not a pin: {line!r}"
        requirement = Requirement(spec)
        (specifier,) = requirement.specifier  # exactly one: `==version`
        assert specifier.operator == "==", f"{name}: {spec!r} is not pinned with =="
        hashes = tuple(option.split("=", 1)[1] for option in options if option.startswith("--hash="))
        assert len(hashes) == len(options), f"{name}: {spec!r} has options other than --hash: {options}"
        pins[canonicalize_name(requirement.name)] = Pin(requirement.name, specifier.version, requirement, hashes)
    return pins


def readme_install_commands() -> list[str]:
    """The Quickstart's two commands: the server, and the test command between the markers."""
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [
        line
        for block in re.findall(r"```sh\n(.*?)```", quickstart, re.S)
        for line in block.splitlines()
        if "pip" in line
    ]


def pip_installs(command: str) -> list[list[str]]:
    """The arguments after `pip install` of every pip install in a shell command line."""
    installs = []
    for part in re.split(r"&&|;|\|\|", command):
        words = shlex.split(part)
        for i, word in enumerate(words[:-1]):
            if Path(word).name in ("pip", "pip3") and words[i + 1] == "install":
                installs.append(words[i + 2 :])
            elif word.endswith("python") and words[i + 1 : i + 4] == ["-m", "pip", "install"]:
                installs.append(words[i + 4 :])
    return installs


def requirement_files(arguments: list[str]) -> list[str]:
    """The `-r` files of one pip install; fails on anything else that names a package to install."""
    files, rest = [], list(arguments)
    while rest:
        word = rest.pop(0)
        if word in ("-r", "--requirement"):
            files.append(rest.pop(0))
        elif word in ("-q", "--quiet", "--require-hashes", "--no-deps"):
            continue
        else:
            raise AssertionError(f"pip install takes {word!r}: only hash-pinned lock files may be installed")
    return files


def test_the_quickstart_and_ci_install_only_the_hash_pinned_locks() -> None:
    server, tests = readme_install_commands()
    assert "server.py" in server and "pytest" in tests
    test_command = README.split("<!-- test-command -->", 1)[1].split("<!-- /test-command -->", 1)[0]
    assert tests in test_command  # the command .ci/run reads and runs

    ci_lines = [line for line in CI_RUN.splitlines() if not line.lstrip().startswith("#") and pip_installs(line)]
    assert ci_lines, ".ci/run installs nothing with pip"
    for command, lock in [(server, SERVER_LOCK), (tests, DEV_LOCK), *((line, DEV_LOCK) for line in ci_lines)]:
        installs = pip_installs(command)
        assert installs, f"no pip install in {command!r}"
        for arguments in installs:
            # --require-hashes: pip refuses the install if any package, however deep, comes without a hash.
            assert "--require-hashes" in arguments, command
            if command in ci_lines and requirement_files(arguments) == [FLOOR_LOCK]:
                # Only over the dev lock, in CI's second virtualenv, and only the two packages it pins.
                assert "--no-deps" in arguments and ".venv-floor/" in command, command
                continue
            assert requirement_files(arguments) == [lock], command


def test_the_floor_lock_pins_the_lowest_tested_socketio_libraries_over_the_dev_lock() -> None:
    """CI's second run (.ci/run) installs the dev lock, then these two, each checked against its hashes."""
    floor = read_lock(FLOOR_LOCK)
    assert {name: pin.version for name, pin in floor.items()} == {name: low for name, (low, _) in TESTED.items()}
    for pin in floor.values():
        assert pin.hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), pin
    dev = read_lock(DEV_LOCK)
    assert {name: dev[name].version for name in floor} == {name: high for name, (_, high) in TESTED.items()}


def test_ci_runs_the_floor_tests_that_exist() -> None:
    listed = re.search(r"^floor_tests=\((.*?)\)$", CI_RUN, re.M | re.S)
    assert listed, ".ci/run names no floor_tests"
    files = listed.group(1).split()
    assert files and all((ROOT / name).is_file() for name in files), files
    assert '"${floor_tests[@]}"' in CI_RUN


@pytest.mark.parametrize("lock", [SERVER_LOCK, DEV_LOCK])
def test_every_package_of_a_lock_is_pinned_with_its_hashes(lock: str) -> None:
    pins = read_lock(lock)
    assert pins
    for pin in pins.values():
        assert pin.hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), pin


@pytest.mark.parametrize("ranges, lock", [("requirements.txt", SERVER_LOCK), ("requirements-dev.txt", DEV_LOCK)])
def test_a_lock_pins_a_version_inside_every_range(ranges: str, lock: str) -> None:
    pins = read_lock(lock)
    lines = []
    for line in (ROOT / ranges).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            lines += [ln.split("#", 1)[0].strip() for ln in (ROOT / line[3:].strip()).read_text().splitlines()]
        elif line:
            lines.append(line)
    for line in filter(None, lines):
        wanted = Requirement(line)
        pin = pins.get(canonicalize_name(wanted.name))
        assert pin is not None, f"{lock} does not pin {wanted.name} (regenerate it: README, Pinned dependencies)"
        assert wanted.specifier.contains(pin.version, prereleases=True), (
            f"{lock}: {pin.name}=={pin.version} is outside {line!r}"
        )
        assert str(wanted.marker or "") == str(pin.requirement.marker or ""), (line, pin.requirement)


def test_the_server_lock_is_the_tested_set() -> None:
    """The server runs with the versions the suite runs with, not merely compatible ones."""
    dev = read_lock(DEV_LOCK)
    for name, pin in read_lock(SERVER_LOCK).items():
        assert name in dev and dev[name].version == pin.version, (pin, dev.get(name))
        assert set(pin.hashes) == set(dev[name].hashes), name


def test_this_suite_runs_on_exactly_the_locked_versions() -> None:
    """The interpreter running these tests (the Quickstart's .venv) has every locked version installed:
    a suite that passed on anything else says nothing about what the Quickstart installs."""
    wrong = {}
    for pin in read_lock(DEV_LOCK).values():
        if pin.requirement.marker is not None and not pin.requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(pin.name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != pin.version:
            wrong[pin.name] = (installed, pin.version)
    assert wrong == {}, f"installed vs locked: {wrong}; run the Quickstart's test command to install the lock"
