"""The tasks of the scale benchmark (bench/scale.py): a survey's worth of realistic records.

Each spectrum has two tasks, a reduction (:class:`ScaleVisit`) and a fit of it (:class:`ScaleFit`, which requires
the reduction and writes one output row of five doubles and a ``real[100]``). Both take three parameters: the
data release (one value shared by every task), the night (shared by :data:`PER_NIGHT` spectra) and the spectrum's
path (unique). bench/scale.py fills a database with their rows by SQL; tests/test_scale.py checks those rows
against what astra's own batches write for the same spectra.
"""

from __future__ import annotations

import os

import luigi
import numpy as np

import astra
import bench.tasks  # its Fit, not imported by name: `astra db init --module` would make its table too
from astra.batch import BatchTask

#: Spectra per night ($SCALE_PER_NIGHT: the test of the fill makes several nights of a few spectra).
PER_NIGHT = int(os.environ.get("SCALE_PER_NIGHT", 5000))
RELEASE = "dr19"


def night(k: int) -> int:
    return k // PER_NIGHT


def path(k: int) -> str:
    """The path of spectrum ``k`` (unique)."""
    return f"/sdss/{RELEASE}/spec-{k:09d}.fits"


def spectrum(k: int) -> dict:
    """The parameters of both tasks of spectrum ``k``."""
    return {"release": RELEASE, "night": night(k), "path": path(k)}


class ScaleFitRow(bench.tasks.Fit):
    """The output row of a fit: five numbers and a model spectrum (bench.tasks.Fit's columns, in a table of its
    own)."""

    class Meta:
        table_name = "scale_fit"


class ScaleVisit(astra.BaseTask):
    """The reduction of one spectrum (its result: how many exposures it had)."""

    release = luigi.Parameter()
    night = luigi.IntParameter()
    path = luigi.Parameter()

    def run(self) -> dict:
        return {"exposures": exposures(self.path)}


class ScaleFit(astra.BaseTask):
    """The fit of one reduced spectrum: one output row."""

    output_model = ScaleFitRow
    release = luigi.Parameter()
    night = luigi.IntParameter()
    path = luigi.Parameter()

    def requires(self) -> ScaleVisit:
        return ScaleVisit(release=self.release, night=self.night, path=self.path)

    def run(self) -> dict:
        return fit(int(self.path[-14:-5]))


def exposures(path: str) -> int:
    return int(path[-14:-5]) % 5 + 1


def fit(k: int) -> dict:
    rng = np.random.default_rng(k)
    teff, logg, fe_h, v_rad, chi2 = rng.normal(size=5).tolist()
    return {"teff": teff, "logg": logg, "fe_h": fe_h, "v_rad": v_rad, "chi2": chi2,
            "model_flux": rng.normal(size=100).astype(np.float32)}  # fmt: skip


class ScaleVisits(BatchTask):
    """Spectra 0 to ``n`` - 1 reduced by astra's own batch (for the check of the SQL fill)."""

    item_class = ScaleVisit
    n = luigi.IntParameter()

    def parameter_sets(self):
        return (spectrum(k) for k in range(self.n))


class ScaleFits(BatchTask):
    """Spectra 0 to ``n`` - 1 fitted by astra's own batch (their visits recorded first)."""

    item_class = ScaleFit
    n = luigi.IntParameter()

    def requires(self) -> ScaleVisits:
        return ScaleVisits(n=self.n)

    def parameter_sets(self):
        return (spectrum(k) for k in range(self.n))
