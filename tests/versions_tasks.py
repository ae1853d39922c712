"""Tasks that read their versions from the environment when the module is imported, so that each luigi command
plays a different release of the code (``luigi --module tests.versions_tasks``).
"""

from __future__ import annotations

import os

import luigi

import astra


class Calibrate(astra.BaseTask):
    version = os.environ.get("TEST_CALIBRATE_VERSION", "1")
    night = luigi.IntParameter(default=1)

    def run(self) -> dict:
        return {"night": self.night, "calibrated_with": self.version}


class Reduce(astra.BaseTask):
    version = os.environ.get("TEST_REDUCE_VERSION", "1")
    night = luigi.IntParameter(default=1)

    def requires(self) -> Calibrate:
        return Calibrate(night=self.night)

    def run(self) -> dict:
        return {"calibration": self.input().read()}


class Banded(astra.BaseTask):
    """A version each task works out for itself: the model of its band, named by the environment."""

    band = luigi.Parameter()

    @property
    def version(self) -> str:
        return f"{os.environ.get('TEST_BAND_MODEL', 'm1')}-{self.band}"

    def run(self) -> dict:
        return {"band": self.band}


class BandedBatch(astra.BatchTask):
    item_class = Banded
    bands = luigi.ListParameter()

    def parameter_sets(self) -> list[dict]:
        return [{"band": band} for band in self.bands]


class Profiled(astra.BaseTask):
    version = os.environ.get("TEST_PROFILED_VERSION", "1")
    star = luigi.IntParameter()

    def run(self) -> dict:
        return {"star": self.star, "version": self.version}


class ProfiledBatch(astra.BatchTask):
    item_class = Profiled
    stars = luigi.IntParameter(default=3)

    def parameter_sets(self) -> list[dict]:
        return [{"star": star} for star in range(self.stars)]


class Census(astra.BaseTask):
    """Downstream of a batch: its items' version is part of what it was made from."""

    stars = luigi.IntParameter(default=3)

    def requires(self) -> ProfiledBatch:
        return ProfiledBatch(stars=self.stars)

    def run(self) -> dict:
        items = [Profiled(star=star).output() for star in range(self.stars)]
        return {"versions": [row["version"] for row in astra.read_many(items)]}
