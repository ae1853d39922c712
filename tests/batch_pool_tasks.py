"""Batches for the process-pool tests: items that meet in several processes, and one that waits to be killed."""

from __future__ import annotations

import os
from pathlib import Path

import luigi

import astra
from astra.batch import BatchTask
from tests.batch_tasks import MeasureStar
from tests.helpers import wait_for


class Stars(BatchTask):
    """MeasureStar's items, as tests/test_batch.py's MeasureStars, but nothing kept in the class (pools do not share
    it)."""

    item_class = MeasureStar
    chunk_size = 400
    stars = luigi.IntParameter()
    fail_on = luigi.IntParameter(default=-1)

    def parameter_sets(self):
        return [{"star": star, "fail_on": self.fail_on} for star in range(self.stars)]


class Rendezvous(astra.BaseTask):
    """Returns the pid of the process that ran it, once ``meet`` processes have run one (so every one has work)."""

    n = luigi.IntParameter()
    workdir = luigi.Parameter(significant=False)
    meet = luigi.IntParameter(default=1, significant=False)

    def run(self) -> int:
        Path(self.workdir, str(os.getpid())).touch()
        wait_for(lambda: len(os.listdir(self.workdir)) >= self.meet, timeout=120, what="the other pool processes")
        return os.getpid()


class Meeting(BatchTask):
    item_class = Rendezvous
    count = luigi.IntParameter(default=20)
    workdir = luigi.Parameter(significant=False)
    meet = luigi.IntParameter(default=1, significant=False)

    def parameter_sets(self):
        return [{"n": n, "workdir": self.workdir, "meet": self.meet} for n in range(self.count)]


class Victim(astra.BaseTask):
    """Item ``victim`` writes its pid and waits to be killed while ``workdir/block`` exists; the others return n."""

    n = luigi.IntParameter()
    victim = luigi.IntParameter(significant=False)
    workdir = luigi.Parameter(significant=False)

    def run(self) -> int:
        if self.n == self.victim and Path(self.workdir, "block").exists():
            Path(self.workdir, "victim.pid").write_text(str(os.getpid()))
            wait_for(lambda: not Path(self.workdir, "block").exists(), timeout=120, what="being killed")
        return self.n


class Victims(BatchTask):
    item_class = Victim
    chunk_size = 10
    workdir = luigi.Parameter(significant=False)

    def parameter_sets(self):
        return [{"n": n, "victim": 25, "workdir": self.workdir} for n in range(40)]


class Wanderer(astra.BaseTask):
    """Moves its process to ``elsewhere`` (as science code that works in a directory of its own may)."""

    elsewhere = luigi.Parameter(significant=False)

    def run(self) -> str:
        os.makedirs(self.elsewhere, exist_ok=True)
        os.chdir(self.elsewhere)
        return os.getcwd()


class WandererItem(astra.BaseTask):
    """Needs the Wanderer, and reads what it recorded."""

    i = luigi.IntParameter()
    elsewhere = luigi.Parameter(significant=False)

    def requires(self):
        return Wanderer(elsewhere=self.elsewhere)

    def run(self) -> dict:
        return {"i": self.i, "wanderer": self.input().read()}


class WandererItems(BatchTask):
    """Items worked in a pool that starts after the Wanderer has changed directory."""

    item_class = WandererItem
    chunk_size = 2
    elsewhere = luigi.Parameter(significant=False)

    def requires(self):
        return Wanderer(elsewhere=self.elsewhere)

    def parameter_sets(self):
        return [{"i": i, "elsewhere": self.elsewhere} for i in range(4)]
