"""The storage boundary: every SQL statement of the exporter is in the state module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import exporter

PACKAGE = Path(exporter.__file__).parent
STATE_MODULE = PACKAGE / "core" / "state.py"
# Statements as this code writes them: upper-case keywords (docstrings say "Insert or replace ...").
SQL = re.compile(
    r"^\s*(SELECT\s|INSERT\s+INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|CREATE\s+(TABLE|INDEX)\s|DROP\s+TABLE"
    r"|ALTER\s+TABLE\s|PRAGMA\s|SAVEPOINT\s|BEGIN\b|COMMIT\b)"
)


def sql_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant in ``path`` that starts like an SQL statement."""
    return [
        (node.lineno, node.value[:60])
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value)
    ]


def test_no_module_but_the_state_module_holds_sql() -> None:
    assert sql_strings(STATE_MODULE)  # the scan finds SQL where it is
    outside = {
        str(path.relative_to(PACKAGE)): strings
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != STATE_MODULE and (strings := sql_strings(path))
    }
    assert outside == {}
