"""Tasks for the SLURM tests (``luigi --module tests.slurm_tasks``)."""

from __future__ import annotations

import os
import sys
import time

import luigi

import astra
from astra.batch import BatchTask
from tests.example_tasks import Leaf


class Sleep(astra.BaseTask):
    """Sleeps, then returns how long it slept: ``seconds`` is not part of the identity, so a rerun may differ."""

    name = luigi.Parameter()
    seconds = luigi.FloatParameter(default=0.0, significant=False)

    def run(self) -> dict:
        time.sleep(self.seconds)
        return {"slept": self.seconds, "job": os.environ.get("SLURM_JOB_ID")}


class ExitsBadly(astra.BaseTask):
    """Says why on stderr and exits with code 7, as a crashing program would."""

    name = luigi.Parameter()

    def run(self) -> None:
        print("reading the spectrum: disk quota exceeded", file=sys.stderr, flush=True)
        os._exit(7)


class Raises(astra.BaseTask):
    name = luigi.Parameter()

    def run(self) -> None:
        raise ValueError(f"no lines found in {self.name}")


class OneMinute(astra.BaseTask):
    """Asks SLURM for one minute and needs longer."""

    name = luigi.Parameter()
    slurm_time = "1"

    def run(self) -> None:
        time.sleep(600)


class Greedy(astra.BaseTask):
    """Asks SLURM for 200 MB and takes 1 GB."""

    name = luigi.Parameter()
    slurm_mem = "200M"

    def run(self) -> None:
        hog = []
        for _ in range(20):
            hog.append(bytearray(50 * 2**20))
            time.sleep(0.05)


class AlwaysSlurm(astra.BaseTask):
    """Runs as a SLURM job whatever ``[astra] executor`` says, with settings of its own."""

    i = luigi.IntParameter()
    executor = "slurm"
    slurm_time = "5"
    slurm_sbatch_args = "--comment=astra-class-setting"

    def run(self) -> dict:
        return {"job": os.environ.get("SLURM_JOB_ID"), "node": os.environ.get("SLURMD_NODENAME")}


class Leaves(BatchTask):
    """Leaf for i in range(n), as one batch."""

    item_class = Leaf
    n = luigi.IntParameter()

    def parameter_sets(self) -> list[dict]:
        return [{"i": i} for i in range(self.n)]


class Sleeps(luigi.WrapperTask):
    """``n`` Sleep tasks named ``<prefix><i>``, for as many luigi workers at once."""

    n = luigi.IntParameter()
    prefix = luigi.Parameter(default="w")
    seconds = luigi.FloatParameter(default=0.0, significant=False)

    def requires(self) -> list[Sleep]:
        return [Sleep(name=f"{self.prefix}{i}", seconds=self.seconds) for i in range(self.n)]


class Tally(astra.BaseTask):
    """Sleeps, then appends its name to ``<tally_dir>/<name>``: a file with two lines is an item computed twice."""

    name = luigi.Parameter()
    tally_dir = luigi.Parameter(significant=False)
    seconds = luigi.FloatParameter(default=0.0, significant=False)

    def run(self) -> dict:
        time.sleep(self.seconds)
        with open(os.path.join(self.tally_dir, self.name), "a") as tally:
            tally.write(f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{os.environ.get('SLURM_ARRAY_TASK_ID')}\n")
        return {"name": self.name}


class Tallies(BatchTask):
    """Tally for names ``t0`` ... ``t<n-1>``, as one batch."""

    item_class = Tally
    n = luigi.IntParameter()
    tally_dir = luigi.Parameter(significant=False)
    seconds = luigi.FloatParameter(default=0.0, significant=False)

    def parameter_sets(self) -> list[dict]:
        return [{"name": f"t{i}", "tally_dir": self.tally_dir, "seconds": self.seconds} for i in range(self.n)]


class MisspeltSlurmSetting(astra.BaseTask):
    """Asks for memory under a name that is no [slurm] setting."""

    name = luigi.Parameter()
    slurm_memory = "64G"

    def run(self) -> None:
        pass


class Threshold(astra.BaseTask):
    """A FloatParameter given a whole number (by ``AboveThreshold``): its text, "2", reads back as 2.0."""

    cut = luigi.FloatParameter()

    def run(self) -> dict:
        return {"cut": self.cut}


class AboveThreshold(astra.BaseTask):
    executor = "local"

    def requires(self) -> Threshold:
        return Threshold(cut=2)

    def run(self) -> dict:
        return self.input().read()


class Thresholds(BatchTask):
    """Threshold items of the batch's ``cut``, a FloatParameter too (given 2 by ``AboveThresholds``)."""

    item_class = Threshold
    cut = luigi.FloatParameter()

    def parameter_sets(self) -> list[dict]:
        return [{"cut": self.cut}]


class AboveThresholds(astra.BaseTask):
    executor = "local"

    def requires(self) -> Thresholds:
        return Thresholds(cut=2)

    def run(self) -> dict:
        (result,) = astra.read_many(self.input())
        return result
