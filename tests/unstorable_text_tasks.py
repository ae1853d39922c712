"""Tasks whose parameters or errors hold text a database may not store (``--module tests.unstorable_text_tasks``)."""

from __future__ import annotations

import os

import luigi

import astra
from astra.batch import BatchTask


class Echo(astra.BaseTask):
    value = luigi.Parameter()

    def run(self) -> dict:
        return {"value": self.value}


class Complains(astra.BaseTask):
    """Raises an error naming the first file in ``directory`` (as Python decodes its name), with a NUL if ``nul``."""

    directory = luigi.Parameter()
    nul = luigi.BoolParameter(default=False)

    def run(self) -> None:
        name = sorted(os.listdir(self.directory))[0]
        raise ValueError(f"cannot read {name}" + ("\x00 at byte 7" if self.nul else ""))


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no words for it")


class Mute(astra.BaseTask):
    def run(self) -> None:
        raise UnprintableError()


class MuteBatch(BatchTask):
    """One item, Mute(), whose exception cannot be printed."""

    item_class = Mute

    def parameter_sets(self) -> list[dict]:
        return [{}]


class EchoBatch(BatchTask):
    """Echo over ``values``, given as JSON (a list of texts)."""

    item_class = Echo
    values = luigi.ListParameter()

    def parameter_sets(self) -> list[dict]:
        return [{"value": value} for value in self.values]
