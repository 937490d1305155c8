"""The layers hold: what import-linter checks for the packages, and the two modules above them.

`app.py` assembles the components and `server.py` runs it; nothing below may
import either (import-linter takes packages only, so this test covers them).
"""

from __future__ import annotations

import ast
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
