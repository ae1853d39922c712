"""Tasks that report progress: one that stops halfway until a file appears, and a batch of slow items
(``luigi --module tests.progress_tasks``).
"""

from __future__ import annotations

import os
import time

import luigi

import astra
from astra.batch import BatchTask
from tests.helpers import wait_for


class Crunch(astra.BaseTask):
    """Works through ``steps`` items, stopping halfway until the file ``release`` exists."""

    steps = luigi.IntParameter(default=4)
    release = luigi.Parameter(significant=False)

    def run(self) -> dict:
        for step in range(self.steps):
            self.progress(step, self.steps, "spectra")
            if step == self.steps // 2:
                wait_for(lambda: os.path.exists(self.release), timeout=60, what="the release file")
        self.progress(self.steps, self.steps, "spectra")
        return {"steps": self.steps}


class SlowItem(astra.BaseTask):
    """An item that takes ``seconds`` to compute."""

    n = luigi.IntParameter()
    seconds = luigi.FloatParameter(default=0.03)

    def run(self) -> int:
        time.sleep(self.seconds)
        return self.n


class SlowBatch(BatchTask):
    """A few hundred slow items: one chunk, which used to show nothing in luigid until it ended."""

    item_class = SlowItem
    count = luigi.IntParameter(default=300)
    run_id = luigi.Parameter()
    log_seconds = luigi.FloatParameter(default=30.0, significant=False)  # BatchTask's setting, for the test

    def parameter_sets(self) -> list[dict]:
        return [{"n": n} for n in range(self.count)]
