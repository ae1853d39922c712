"""Tasks for the lock tests: one that keeps SQLite's write lock inside ``completion()``, one that only records."""

from __future__ import annotations

import time
from pathlib import Path

import luigi

import astra


class HoldsWriteLock(astra.BaseTask):
    """Stays inside ``completion()`` (on SQLite: the write lock held) until ``workdir/release`` exists or ``hold``
    seconds pass; ``workdir/holding`` says it is inside, ``workdir/left`` that it has left."""

    label = luigi.Parameter()
    workdir = luigi.Parameter(significant=False)
    hold = luigi.FloatParameter(default=60.0, significant=False)

    def run(self) -> None:
        workdir = Path(self.workdir)
        with self.completion(result={"label": self.label}):
            (workdir / "holding").touch()
            deadline = time.monotonic() + self.hold
            while time.monotonic() < deadline and not (workdir / "release").exists():
                time.sleep(0.05)
        (workdir / "left").touch()


class Records(astra.BaseTask):
    """Records itself as done, and nothing else."""

    label = luigi.Parameter()

    def run(self) -> dict:
        return {"label": self.label}
