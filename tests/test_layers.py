"""Data flows ingress (mail/, api/) -> core/ -> rules/ -> analysis/, with store/ below: a lower layer never
imports a higher one. Checked on the source, imports inside functions and TYPE_CHECKING blocks included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "mailowl"

#: package -> mailowl packages and modules it may import besides itself
ALLOWED = {
    "analysis": set(),
    "store": {"results"},
    "rules": {"analysis", "store", "expr", "results", "config", "tomlfile", "defaults"},
    "core": {"analysis", "rules", "store", "logs", "results", "metrics"},
    # the web interface only reads what was decided: the store, the verdict log's format, the configuration
    "web": {"store", "logs", "results", "config"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("mailowl.")}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_lower_layers_never_import_higher_ones(package: str) -> None:
    wrong = {}
    for path in sorted((SRC / package).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        bad = _imports(path) - ALLOWED[package] - {package}
        if bad:
            wrong[str(path.relative_to(SRC))] = sorted(bad)
    assert not wrong, f"{package}/ imports layers above it: {wrong}"
