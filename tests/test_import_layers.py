"""The package's floors: what a lower module may not import (a cycle between
packages makes a newcomer read both to understand either)."""

from __future__ import annotations

import ast
import re
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


def test_the_mapping_package_does_not_import_the_engine_or_the_fhir_package():
    for path in (PACKAGE / "mapping").glob("*.py"):
        assert not {m for m in package_imports(path) if m.startswith(("engine", "fhir"))}, path.name


def test_the_store_does_not_import_what_sits_above_it():
    above = {"manager", "opening", "arguments", "snapshot", "interop", "cli", "mcp_server"}
    for path in (PACKAGE / "store").glob("*.py"):
        assert not {m for m in package_imports(path) if m.split(".")[0] in above}, path.name


# A statement's opening words, in a string of the code (docstrings aside).
STATEMENT = re.compile(r"\b(SELECT\s.*\bFROM\s|INSERT INTO\s|DELETE FROM\s|UPDATE\s+\S+\s+SET\s|DROP (TABLE|VIEW)\s"
                       r"|CREATE (TEMP |UNIQUE )?(TABLE|VIEW|INDEX)\s|ALTER TABLE\s)")
SQL_OWNERS = ("store/", "layout.py", "evolution.py", "backends/")
# Not the store: the FHIR export groups folded children in a private scratch
# SQLite file of its own (stdlib sqlite3) once they outgrow memory.
SCRATCH_SQL = ("fhir/spool.py",)


def sql_strings(path: Path) -> list[str]:
    """The string constants (f-string parts too) of ``path`` that hold a
    SQL statement; docstrings are not code."""
    tree = ast.parse(path.read_text("utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    texts = [node.value for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]
    texts += ["".join(part.value if isinstance(part, ast.Constant) else "{}" for part in node.values)
              for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)]
    return [text for text in texts if STATEMENT.search(text)]


def test_only_the_store_the_layout_evolution_and_the_backends_write_sql():
    owners = [path for path in PACKAGE.rglob("*.py") if str(path.relative_to(PACKAGE)).startswith(SQL_OWNERS)]
    assert any(sql_strings(path) for path in owners)  # the check finds what it looks for
    for path in PACKAGE.rglob("*.py"):
        if path not in owners and str(path.relative_to(PACKAGE)) not in SCRATCH_SQL:
            assert sql_strings(path) == [], path.relative_to(PACKAGE)
