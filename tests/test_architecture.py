"""The layout the code keeps: only the dialect module and the connection set-up ask which backend they are on."""

from __future__ import annotations

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
