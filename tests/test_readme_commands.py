"""Every command the README gives runs as written on a fresh clone after the Quickstart (at least to `--help`)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.test_server_process import ROOT, clean_env

README = (ROOT / "README.md").read_text()
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def readme_commands() -> list[str]:
    """Shell lines in ```sh blocks, and inline `...` spans that start like a command."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        joined = block.replace("\\\n", " ")
        commands += [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]
    for span in re.findall(r"`([^`\n]+)`", README):
        if re.match(r"(\.venv/bin/python|python3?|deploy/\S+\.sh|bash) ", span):
            commands.append(span)
    return list(dict.fromkeys(commands))


def entry_point(command: str) -> list[str] | None:
    """The program a README command runs, with `--help` instead of its arguments (None: not a program of ours)."""
    words = shlex.split(command.split("&&")[-1].split("#")[0])
    if words[0] == ".venv/bin/python":
        python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
        target = words[1:3] if words[1] == "-m" else words[1:2]
        return [python, *target, "--help"]
    if words[0].startswith("deploy/"):
        return [str(ROOT / words[0]), "--help"]
    return None


COMMANDS = readme_commands()


def test_readme_commands_use_the_quickstart_interpreter() -> None:
    """A bare `python` is not the virtualenv's: its imports fail on a fresh machine."""
    bare = [c for c in COMMANDS if re.match(r"python3? ", c) and not c.startswith("python3 -m venv")]
    assert bare == []
    assert {c for c in COMMANDS if entry_point(c) is None} <= {
        c for c in COMMANDS if c.startswith(("python3 -m venv", "curl "))
    }


@pytest.mark.parametrize("command", [c for c in COMMANDS if entry_point(c) is not None and "pytest" not in c])
def test_readme_command_runs(command: str) -> None:
    argv = entry_point(command)
    assert argv is not None
    done = subprocess.run(argv, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "usage:" in done.stdout.lower()


def test_every_readme_program_is_covered() -> None:
    """The kinds of program the README tells a user to run are all among the commands tested."""
    programs = set()
    for command in COMMANDS:
        argv = entry_point(command)
        if argv is not None:
            programs.add(" ".join(argv[1:-1]) if "python" in argv[0] else str(ROOT.joinpath(argv[0]).relative_to(ROOT)))
    for expected in (
        "server.py",
        "-m bench.run",
        "-m bench.report",
        "-m bench.profile",
        "-m tests.campay_fake",
        "deploy/local-cluster.sh",
    ):
        assert expected in programs, programs
