"""An output model that changes from one release of a pipeline to the next, for tests/test_output_migrations.py
(``luigi --module tests.evolving_tasks``).

``$EVOLVING`` lists what this release changed, separated by commas: ``logg`` (a new nullable column), ``mass`` (a
new column that may not be null), ``float64`` (the flux arrays become float64), ``renamed`` (a new table name),
``version2`` (FitStar's version is "2"), ``indexed`` (an index on teff), ``unique`` (teff is unique), ``realteff``
(teff is a FloatField, PostgreSQL's real, with a tenth that float32 cannot hold exactly), ``intteff`` (teff is an
IntegerField), ``shape3`` (flux declares the shape its arrays have, (3,)), ``shape5`` (flux arrays of 5 numbers,
declared (5,)), ``int32flux`` (the flux arrays become int32), ``halves`` (teff and flux hold halves, 5000.5 + star
and [2.5, 3.5, 12.7, -2.5] + star, with ``float64``), ``unfit`` (with ``float64``: star 3 has teff 1e10 and flux
[4.5, NaN, 1e10], star 4 flux [0.1, 1e300], star 5 flux [0.1, 1e-50]: values an integer or a float32 cannot hold);
``newmodel`` (with
``version2``) gives FitStar another output model, ``Abundance`` (table evolving_abundance, a column that may not be
null); ``json`` is a
release before FitStar had an output model (its result was JSON, with a note for star 2 that the model has no
column for).
"""

from __future__ import annotations

import os

import astra  # before peewee, which then does not import psycopg 3 (see workflows/__init__.py)

# isort: split
import luigi
import numpy as np
import peewee

CHANGES = set(os.environ.get("EVOLVING", "").split(","))


def _teff_field() -> type[peewee.Field]:
    if "intteff" in CHANGES:
        return peewee.IntegerField
    return peewee.FloatField if "realteff" in CHANGES else peewee.DoubleField


def _flux_dtype() -> str:
    return "int32" if "int32flux" in CHANGES else "float64" if "float64" in CHANGES else "float32"


#: The flux of a star's row that the types it may be narrowed to cannot hold (``unfit``).
UNFIT = {3: [4.5, np.nan, 1e10], 4: [0.1, 1e300], 5: [0.1, 1e-50]}


def _flux_shape() -> tuple[int] | None:
    return (5,) if "shape5" in CHANGES else (3,) if "shape3" in CHANGES else None


class Fit(astra.OutputModel):
    teff = _teff_field()(index="indexed" in CHANGES, unique="unique" in CHANGES)
    flux = astra.ArrayField(_flux_dtype(), shape=_flux_shape())
    if "logg" in CHANGES:
        logg = peewee.DoubleField(null=True)
    if "mass" in CHANGES:
        mass = peewee.DoubleField()

    class Meta:
        table_name = "evolving_fit_v2" if "renamed" in CHANGES else "evolving_fit"


class Abundance(astra.OutputModel):
    fe_h = peewee.DoubleField()

    class Meta:
        table_name = "evolving_abundance"


class FitStar(astra.BaseTask):
    output_model = None if "json" in CHANGES else Abundance if "newmodel" in CHANGES else Fit
    version = "2" if "version2" in CHANGES else ""
    star = luigi.IntParameter()

    def run(self) -> dict:
        if "newmodel" in CHANGES:
            return {"fe_h": -0.1 * self.star}
        flux = [0.1, 0.2, 0.3, 0.4, 0.5] if "shape5" in CHANGES else [0.1, 0.2, 0.3]
        row = {"teff": 5000.0 + self.star, "flux": np.array(flux) * self.star}
        if "realteff" in CHANGES:
            row["teff"] += 0.1
        if "intteff" in CHANGES:
            row["teff"] = 5000 + self.star
        if "halves" in CHANGES:
            row["teff"], row["flux"] = 5000.5 + self.star, np.array([2.5, 3.5, 12.7, -2.5]) + self.star
        if "unfit" in CHANGES and self.star in UNFIT:
            row["teff"] = 1e10 if self.star == 3 else row["teff"]
            row["flux"] = np.array(UNFIT[self.star])
        if "json" in CHANGES and self.star == 2:
            row["note"] = "no column for this"
        if "logg" in CHANGES:
            row["logg"] = 4.0 + self.star / 10
        if "mass" in CHANGES:
            row["mass"] = 1.0
        return row


class FitStars(astra.BatchTask):
    """The FitStars of stars 0..n-1, as one batch."""

    item_class = FitStar
    n = luigi.IntParameter(default=3)

    def parameter_sets(self) -> list[dict]:
        return [{"star": star} for star in range(self.n)]


class CountFits(astra.BaseTask):
    """How many rows the FitStars of stars 0..n-1 made (a downstream task that reads an output table)."""

    n = luigi.IntParameter(default=3)

    def requires(self) -> list[FitStar]:
        return [FitStar(star=star) for star in range(self.n)]

    def run(self) -> dict:
        if FitStar.output_model is None:  # the release of JSON results: one per task
            return {"n_rows": len(astra.read_many(self.input()))}
        return {"n_rows": astra.results(FitStar, tasks=self.requires()).count()}
