"""A task that fails while $FRAGILE_FAILS is set, and one that depends on it (``--module tests.failures_tasks``)."""

from __future__ import annotations

import os

import luigi

import astra


class Fragile(astra.BaseTask):
    """Fails while $FRAGILE_FAILS is set, deep in a helper, so that the traceback has something to show."""

    name = luigi.Parameter()

    def run(self) -> dict:
        return {"checked": check_calibration(self.name)}


def check_calibration(name: str) -> str:
    if os.environ.get("FRAGILE_FAILS"):
        raise ValueError(f"calibration of {name} is missing\nsecond line of the message")
    return name


class AfterFragile(astra.BaseTask):
    name = luigi.Parameter()

    def requires(self) -> Fragile:
        return Fragile(name=self.name)

    def run(self) -> None:
        pass
