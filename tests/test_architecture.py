"""The layers hold: what import-linter checks for the packages, and the two modules above them.

`app.py` assembles the components and `server.py` runs it; nothing below may
import either (import-linter takes packages only, so this test covers them).
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "observability", "payments", "realtime", "webhooks", "auth", "debug", "testpage", "sdk")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_package_imports_app_or_server() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {sorted(_imported_modules(path) & {'app', 'server'})}"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if _imported_modules(path) & {"app", "server"}
    ]
    assert offenders == []


def test_app_is_imported_only_by_server() -> None:
    importers = [path.name for path in ROOT.glob("*.py") if path.name != "app.py" and "app" in _imported_modules(path)]
    assert importers == ["server.py"]


def _readme_layout() -> set[str]:
    """The directories the README's layout block names (its first column: `debug/ testpage/ sdk/` is three)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("**Layout.**", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    named: set[str] = set()
    for line in block.splitlines():
        first_column = re.split(r"\s{2,}", line.strip())[0]
        named |= {token.rstrip("/") for token in first_column.split() if token.endswith("/")}
    return named


def _tracked_directories() -> set[str]:
    """Every top-level directory git tracks (not hidden), and each package of its own under clients/ and
    examples/ (a JS package or a runnable example)."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    directories: set[str] = set()
    for path in files.splitlines():
        parts = path.split("/")
        if len(parts) > 1 and not parts[0].startswith("."):
            directories.add(parts[0])
            if parts[0] in ("clients", "examples") and len(parts) > 2:
                directories.add(f"{parts[0]}/{parts[1]}")
    return directories


def test_the_readme_layout_is_the_tree() -> None:
    """The README's layout names every directory and nothing that is not there (issue 39)."""
    named, tracked = _readme_layout(), _tracked_directories()
    assert sorted(tracked - named - {"clients", "examples"}) == [], "in the tree, missing from the README layout"
    assert sorted(name for name in named if not (ROOT / name).is_dir()) == [], "in the README layout, not in the tree"
