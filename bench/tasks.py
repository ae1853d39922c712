"""The tasks the benchmarks run: the same trivial task with three kinds of target, and a batch of a million items.

Settings come from the environment, set by bench/run.py: ``BENCH_DIR`` (files of the LocalTarget tasks) and
``BENCH_POSTGRES`` (host:port/database/user of luigi's PostgresTarget), plus ``ASTRA_DATABASE_URL``.
"""

from __future__ import annotations

import os

import astra  # before peewee, which then does not import psycopg 3 (see workflows/__init__.py)

# isort: split
import luigi
import numpy as np
import peewee
from luigi.contrib.postgres import PostgresTarget

from astra.batch import BatchTask


def _postgres_target(update_id: str) -> PostgresTarget:
    host, database, user = os.environ["BENCH_POSTGRES"].split("/")
    return PostgresTarget(host=host, database=database, user=user, password="", table="bench", update_id=update_id)


class LocalLeaf(luigi.Task):
    i = luigi.IntParameter()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(os.path.join(os.environ["BENCH_DIR"], "local", f"{self.i}.txt"))

    def run(self) -> None:
        with self.output().open("w") as out:
            out.write("done\n")


class PostgresLeaf(luigi.Task):
    i = luigi.IntParameter()

    def output(self) -> PostgresTarget:
        return _postgres_target(f"leaf-{self.i}")

    def run(self) -> None:
        self.output().touch()


class AstraLeaf(astra.BaseTask):
    i = luigi.IntParameter()

    def run(self) -> None:
        pass


LEAVES = {"local": LocalLeaf, "postgres": PostgresLeaf, "astra": AstraLeaf}


class Everything(luigi.WrapperTask):
    """A root with no output of its own: luigi asks every leaf whether it is done."""

    kind = luigi.Parameter()
    n = luigi.IntParameter()

    def requires(self) -> list[luigi.Task]:
        return [LEAVES[self.kind](i=i) for i in range(self.n)]


class LocalRoot(luigi.Task):
    n = luigi.IntParameter()

    def requires(self) -> list[LocalLeaf]:
        return [LocalLeaf(i=i) for i in range(self.n)]

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(os.path.join(os.environ["BENCH_DIR"], "local", f"root-{self.n}.txt"))

    def run(self) -> None:
        with self.output().open("w") as out:
            out.write("done\n")


class PostgresRoot(luigi.Task):
    n = luigi.IntParameter()

    def requires(self) -> list[PostgresLeaf]:
        return [PostgresLeaf(i=i) for i in range(self.n)]

    def output(self) -> PostgresTarget:
        return _postgres_target(f"root-{self.n}")

    def run(self) -> None:
        self.output().touch()


class AstraRoot(astra.BaseTask):
    n = luigi.IntParameter()

    def requires(self) -> list[AstraLeaf]:
        return [AstraLeaf(i=i) for i in range(self.n)]

    def run(self) -> None:
        pass


ROOTS = {"local": LocalRoot, "postgres": PostgresRoot, "astra": AstraRoot}


class Spectrum(astra.BaseTask):
    """One spectrum of the survey: the item of the scale benchmark."""

    spectrum_id = luigi.IntParameter()
    release = luigi.Parameter(default="dr19")

    def run(self) -> int:
        return self.spectrum_id % 97


class Spectra(BatchTask):
    """Spectra ``start`` to ``stop`` - 1, processed (trivially) and recorded ``chunk_size`` at a time."""

    item_class = Spectrum
    chunk_size = 5000
    start = luigi.IntParameter(default=0)
    stop = luigi.IntParameter()

    def parameter_sets(self):
        return ({"spectrum_id": i} for i in range(self.start, self.stop))

    def process(self, chunk: list) -> list[int]:
        return [item.values["spectrum_id"] % 97 for item in chunk]


class RawSpectrum(luigi.ExternalTask):
    """The input file of one spectrum: a plain luigi task, as a pipeline's inputs usually are."""

    spectrum_id = luigi.IntParameter()
    release = luigi.Parameter(default="dr19")

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(f"/data/{self.release}/spec-{self.spectrum_id}.fits")


class Continuum(astra.BaseTask):
    """The continuum of one spectrum: an item that requires another astra task, its ``Spectrum``."""

    spectrum_id = luigi.IntParameter()
    release = luigi.Parameter(default="dr19")

    def requires(self) -> Spectrum:
        return Spectrum(spectrum_id=self.spectrum_id, release=self.release)


class Extracted(astra.BaseTask):
    """One spectrum extracted from its file: an item that requires a plain luigi task, its ``RawSpectrum``."""

    spectrum_id = luigi.IntParameter()
    release = luigi.Parameter(default="dr19")

    def requires(self) -> RawSpectrum:
        return RawSpectrum(spectrum_id=self.spectrum_id, release=self.release)


class SpectrumRange(BatchTask):
    """Items ``start`` to ``stop`` - 1 (by ``spectrum_id``) of ``item_class``, recorded without any work."""

    chunk_size = 5000
    start = luigi.IntParameter(default=0)
    stop = luigi.IntParameter()

    def parameter_sets(self):
        return ({"spectrum_id": i} for i in range(self.start, self.stop))

    def process(self, chunk: list) -> list[None]:
        return [None] * len(chunk)


class Continua(SpectrumRange):
    """Continuum items: each requires its Spectrum (the all-done check of items with a requirement)."""

    item_class = Continuum


class Extractions(SpectrumRange):
    """Extracted items: each requires its RawSpectrum."""

    item_class = Extracted


class AstraRecorded(BatchTask):
    """Records AstraLeaf items (and the AstraRoot of them) as done, to set up the warm scan."""

    item_class = AstraLeaf
    chunk_size = 5000
    n = luigi.IntParameter()

    def parameter_sets(self):
        return ({"i": i} for i in range(self.n))

    def process(self, chunk: list) -> list[None]:
        return [None] * len(chunk)


class Fit(astra.OutputModel):
    """One output row per item of the outputs benchmark: five floats and a 100-element array."""

    teff = peewee.DoubleField()
    logg = peewee.DoubleField()
    fe_h = peewee.DoubleField()
    v_rad = peewee.DoubleField()
    chi2 = peewee.DoubleField()
    model_flux = astra.ArrayField("float32")

    class Meta:
        table_name = "bench_fit"


class FitSpectrum(astra.BaseTask):
    """The item of the outputs benchmark: the same parameters as ``Spectrum``, with an output row."""

    output_model = Fit
    spectrum_id = luigi.IntParameter()
    release = luigi.Parameter(default="dr19")


class FittedSpectra(BatchTask):
    """``Spectra`` with an output row per item (made up by numpy, so the figures are astra's own costs)."""

    item_class = FitSpectrum
    chunk_size = 5000
    start = luigi.IntParameter(default=0)
    stop = luigi.IntParameter()

    def parameter_sets(self):
        return ({"spectrum_id": i} for i in range(self.start, self.stop))

    def process(self, chunk: list) -> list[dict]:
        rng = np.random.default_rng(chunk[0].values["spectrum_id"])
        scalars = rng.normal(size=(len(chunk), 5)).tolist()
        fluxes = rng.normal(size=(len(chunk), 100)).astype(np.float32)
        names = ("teff", "logg", "fe_h", "v_rad", "chi2")
        return [{**dict(zip(names, values)), "model_flux": flux} for values, flux in zip(scalars, fluxes)]


class Trivial(astra.BaseTask):
    """Does nothing (bench/slurm_overhead.py): what is left of its wall time is astra's, and SLURM's."""

    i = luigi.IntParameter()
    run_name = luigi.Parameter()

    def run(self) -> dict:
        return {"i": self.i}


class Star(astra.OutputModel):
    """Rows of the plot benchmark (bench/plots.py): three numbers per star, many stars per field."""

    teff = peewee.DoubleField(help_text="effective temperature")
    logg = peewee.DoubleField(help_text="surface gravity, log10(g / (cm s^-2))")
    snr = peewee.DoubleField(help_text="signal-to-noise ratio per pixel")

    class Meta:
        table_name = "bench_star"
        units = {"teff": "K", "logg": "dex"}


class FieldStars(astra.BaseTask):
    """The item of the plot benchmark: one field of ``stars`` stars, one row each."""

    output_model = Star
    field = luigi.IntParameter()
    stars = luigi.IntParameter(default=1000)


class Fields(BatchTask):
    """``n`` FieldStars items, their rows made up by numpy (a main sequence and a giant branch)."""

    item_class = FieldStars
    chunk_size = 50
    n = luigi.IntParameter()
    stars = luigi.IntParameter(default=1000)

    def parameter_sets(self):
        return ({"field": i, "stars": self.stars} for i in range(self.n))

    def process(self, chunk: list) -> list[list[dict]]:
        made = []
        for item in chunk:
            rng = np.random.default_rng(item.values["field"])
            teff = rng.normal(5500, 900, self.stars).clip(3000, 9000)
            giant = rng.random(self.stars) < 0.3
            logg = np.where(giant, 2.5 + (teff - 4000) / 2000, 4.6 - (teff - 4000) / 8000) + rng.normal(
                0, 0.15, self.stars
            )
            snr = rng.lognormal(3, 0.8, self.stars)
            made.append(
                [{"teff": t, "logg": g, "snr": s} for t, g, s in zip(teff.tolist(), logg.tolist(), snr.tolist())]
            )
        return made


class Trivials(luigi.WrapperTask):
    """``n`` Trivial tasks (bench/slurm_overhead.py runs them all inside one pilot job)."""

    n = luigi.IntParameter()
    run_name = luigi.Parameter()

    def requires(self) -> list[Trivial]:
        return [Trivial(i=i, run_name=self.run_name) for i in range(self.n)]
