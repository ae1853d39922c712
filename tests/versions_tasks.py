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
