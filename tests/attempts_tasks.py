"""Tasks for the attempt tests: a slow task to forget while it runs (``luigi --module tests.attempts_tasks``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import luigi

import astra
from astra import identity
from astra.database import Task, queries
from tests.example_tasks import Note
from tests.helpers import astra as astra_command
from tests.helpers import wait_for


class Slow(astra.BaseTask):
    """Touches ``started`` and waits until ``release`` exists; then fails if ``fails``, else returns its name."""

    name = luigi.Parameter()
    workdir = luigi.Parameter(significant=False)
    fails = luigi.BoolParameter(default=False, significant=False)

    def run(self) -> dict:
        Path(self.workdir, f"{self.name}.started").touch()
        wait_for(lambda: Path(self.workdir, f"{self.name}.release").exists(), timeout=120)
        if self.fails:
            raise RuntimeError(f"{self.name} always fails")
        return {"made by": self.name}


def slow_fields(name: str) -> dict:
    """The fields of a claim of a task recorded as Slow ``name`` (with a made-up hash)."""
    return {
        "task_module": "tests.attempts_tasks",
        "task_name": "Slow",
        "task_id": f"Slow_{name}",
        "task_hash": hashlib.sha256(name.encode()).hexdigest(),
        "version": "",
        "astra_version": astra.__version__,
    }


class ForgottenMidway(astra.BaseTask):
    """Is forgotten (by the real ``astra`` command) while it runs; another task claims the pk; then it writes notes."""

    def run(self) -> None:
        Note.create_table(safe=True)
        mine = Task.get(Task.task_hash == identity.task_hash(self))
        assert astra_command("tasks", "forget", str(mine.pk), "--yes").returncode == 0
        queries.claim(slow_fields("b"), {"name": "b"}, 60)
        with self.completion(result={"notes": 2}):
            Note.insert_many([{"task_name": self.task_id, "value": i} for i in range(2)]).execute()
