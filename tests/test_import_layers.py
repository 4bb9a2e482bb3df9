"""The package's floors: what a lower module may not import (a cycle between
packages makes a newcomer read both to understand either)."""

from __future__ import annotations

import ast
from pathlib import Path

import healthsim_state

PACKAGE = Path(healthsim_state.__file__).parent


def package_imports(path: Path) -> set[str]:
    """The modules of healthsim_state that ``path`` imports, as dotted names relative to the package."""
    here = path.relative_to(PACKAGE).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[:len(here) - node.level + 1]
            found.add(".".join([*base, *(node.module.split(".") if node.module else [])]))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("healthsim_state."):
            found.add(node.module.removeprefix("healthsim_state."))
    return found


def test_the_ground_floor_imports_nothing_of_the_package_but_values():
    assert package_imports(PACKAGE / "values.py") == set()
    assert package_imports(PACKAGE / "column_types.py") == {"values"}


def test_the_mapping_package_does_not_import_the_engine():
    for path in (PACKAGE / "mapping").glob("*.py"):
        assert not {m for m in package_imports(path) if m.startswith("engine")}, path.name
