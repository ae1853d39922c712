"""Tasks for the provenance tests: a whole made of parts, and a task that fails until a file exists
(``luigi --module tests.provenance_tasks``).
"""

from __future__ import annotations

import os
import time

import luigi

import astra


class Part(astra.BaseTask):
    i = luigi.IntParameter()

    def run(self) -> dict:
        time.sleep(0.1)
        return {"pid": os.getpid()}


class Whole(astra.BaseTask):
    n = luigi.IntParameter(default=2)

    def requires(self) -> list[Part]:
        return [Part(i=i) for i in range(self.n)]

    def run(self) -> dict:
        return {"pid": os.getpid()}


class Flaky(astra.BaseTask):
    """Fails until the file ``ready`` exists."""

    ready = luigi.Parameter()

    def run(self) -> None:
        if not os.path.exists(self.ready):
            raise RuntimeError(f"{self.ready} is not there yet")
