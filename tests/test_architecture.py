"""The layout the code keeps: only the dialect module and the connection set-up ask which backend they are on; no
two modules import each other, however indirectly."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ASTRA = Path(__file__).resolve().parents[1] / "astra"

#: Where a SQLite/PostgreSQL check belongs: the dialect, and the code that opens a database from a URL.
ALLOWED = {"database/dialect.py", "database/connection.py", "database/urls.py"}

BACKEND_CHECK = re.compile(r"is_postgres|PostgresqlDatabase|SqliteDatabase|isinstance\([^)]*Database\b")


def test_only_the_dialect_and_the_connection_ask_which_backend_they_are_on():
    found = [
        f"astra/{path.relative_to(ASTRA)}:{number}: {line.strip()}"
        for path in sorted(ASTRA.rglob("*.py"))
        if path.relative_to(ASTRA).as_posix() not in ALLOWED
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if BACKEND_CHECK.search(line)
    ]
    assert not found, "backend checks outside astra/database/dialect.py (move them into the dialect):\n" + "\n".join(
        found
    )


def test_the_check_finds_a_backend_check():
    assert BACKEND_CHECK.search("if isinstance(db, peewee.PostgresqlDatabase):")
    assert BACKEND_CHECK.search("return isinstance(db or database(), SqliteDatabase)")
    assert BACKEND_CHECK.search("if is_postgres(db):")
    assert not BACKEND_CHECK.search("isinstance(target, DatabaseTarget)")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ASTRA.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def astra_imports(path: Path, modules: set[str]) -> set[str]:
    """The astra modules ``path`` imports, anywhere in it (inside functions too), except for type checking."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from astra.database import queries`` depends on the module queries, not on the package.
            found.update(
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
            )
    return found & modules


def import_cycles() -> list[list[str]]:
    paths = {module_name(path): path for path in ASTRA.rglob("*.py")}
    graph = {name: astra_imports(path, set(paths)) - {name} for name, path in paths.items()}
    found = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            name, way = stack.pop()
            for next_name in graph[name]:
                if next_name == start:
                    found.append(way)
                elif next_name not in seen:
                    seen.add(next_name)
                    stack.append((next_name, [*way, next_name]))
    return found


def test_no_import_cycle_between_astra_modules():
    """E.g. recording hands a claimed attempt to an executor, which never imports recording back."""
    assert not import_cycles(), "\n".join(" -> ".join(cycle) for cycle in import_cycles())
