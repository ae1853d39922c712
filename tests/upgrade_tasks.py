"""Tasks recorded by the astra of commit 9abb7da (before schema versions), then read back after `astra db upgrade`.

Written for both that astra and today's: ``--module tests.upgrade_tasks``.
"""

from __future__ import annotations

import math

import luigi

import astra
from astra.batch import BatchTask


def value(i: int) -> dict:
    """What task ``i`` returns: ordinary numbers and text, and the NaN, infinities and big floats old astra wrote."""
    return {
        "i": i,
        "snr": math.nan if i % 5 == 0 else i / 4,
        "limit": -math.inf if i % 3 == 0 else 1.5,
        "name": f"spec-{i:05d}",
        "luminosity": 3.8e33 * (i + 1),
        "flags": [i % 2 == 0, None],
    }


class UpgradeSpectrum(astra.BaseTask):
    i = luigi.IntParameter()

    def run(self) -> dict:
        return value(self.i)


class UpgradeSummary(astra.BaseTask):
    n = luigi.IntParameter()

    def requires(self) -> list[UpgradeSpectrum]:
        return [UpgradeSpectrum(i=i) for i in range(self.n)]

    def run(self) -> dict:
        return {"total": sum(result["i"] for result in astra.targets.read_many(self.input()))}


class UpgradeSpectra(BatchTask):
    item_class = UpgradeSpectrum
    start = luigi.IntParameter()
    stop = luigi.IntParameter()

    def parameter_sets(self):
        return [{"i": i} for i in range(self.start, self.stop)]


class UpgradeFails(astra.BaseTask):
    def run(self) -> None:
        raise ValueError("broken on purpose")
