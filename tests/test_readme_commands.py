"""The README's shell blocks marked runnable run as written, top to bottom, as a newcomer would run them.

Markers (an HTML comment on the line before a fenced block, invisible on GitHub):

- ``<!-- runnable -->`` before a ```` ```bash ```` block: run it, against a new SQLite database;
- ``<!-- runnable: postgresql -->``: run it against a new PostgreSQL database instead;
- ``<!-- file: NAME -->`` before any code block: save the block as NAME first (as the README tells the reader to).

Each backend's blocks run in order with ``bash -e`` in a temporary copy of the checkout (its top-level entries
linked, so files the commands write stay there), with ``$ASTRA_DATABASE_URL`` naming that backend's new database;
each block must exit 0.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, subprocess_env

#: A marker line, then a fenced code block: (marker, argument, language, code).
BLOCK = re.compile(r"^<!-- (runnable|file)(?::\s*(\S+))? -->\n```(\w*)\n(.*?)^```$", re.M | re.S)


def marked_blocks(text: str) -> list[tuple[str, str | None, str, str]]:
    return BLOCK.findall(text)


def test_the_markers_are_found():
    blocks = marked_blocks((REPO / "README.md").read_text())
    kinds = {(marker, argument or None) for marker, argument, _, _ in blocks}
    assert {("runnable", None), ("runnable", "postgresql"), ("file", "mymodule.py")} <= kinds
    assert all(language == "bash" for marker, _, language, _ in blocks if marker == "runnable")
    # A marker the pattern does not know (a typo) would silently leave its block untested.
    assert len(re.findall(r"^<!-- (runnable|file)\b", (REPO / "README.md").read_text(), re.M)) == len(blocks)


def checkout_copy(tmp_path: Path) -> Path:
    """A directory that looks like the checkout (each top-level entry linked), where the commands may write."""
    where = tmp_path / "checkout"
    where.mkdir()
    for entry in REPO.iterdir():
        if entry.name != ".git":
            (where / entry.name).symlink_to(entry)
    return where


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_readme_runnable_blocks_run_as_written(backend, tmp_path, request):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'astra.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
    cwd = checkout_copy(tmp_path)
    env = subprocess_env({"ASTRA_DATABASE_URL": url})
    ran = 0
    for marker, argument, _, code in marked_blocks((REPO / "README.md").read_text()):
        if marker == "file":
            (cwd / argument).write_text(code)
            continue
        if (argument or "sqlite") != backend:
            continue
        done = subprocess.run(["bash", "-e", "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"README block failed ({done.returncode}):\n{code}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stdout + done.stderr, f"{code}\n{done.stdout}\n{done.stderr}"
        ran += 1
    assert ran, f"no runnable block for {backend}"
