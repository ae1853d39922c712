"""Tasks with output tables, for tests/test_outputs.py (importable as ``luigi --module tests.output_tasks``)."""

from __future__ import annotations

import datetime
import enum

import astra  # before peewee, which then does not import psycopg 3 (see workflows/__init__.py)

# isort: split
import luigi
import numpy as np
import peewee

from astra.batch import BatchTask


class Measurement(astra.OutputModel):
    """One row per task: scalars of several types and two arrays."""

    snr = peewee.DoubleField(null=True)
    n_good = peewee.BigIntegerField()
    flag = peewee.BooleanField(default=False)
    label = peewee.TextField(null=True)
    when = peewee.DateTimeField(null=True)
    flux = astra.ArrayField("float64", null=True)
    counts = astra.ArrayField("int64", null=True)


class Measure(astra.BaseTask):
    output_model = Measurement
    i = luigi.IntParameter()
    label = luigi.Parameter(default="x")

    def run(self) -> dict:
        flux = np.arange(2000, dtype=float) * 0.5
        flux[7] = np.nan
        flux[8] = np.inf
        return {
            "snr": float("nan") if self.i < 0 else 10.0 + self.i,
            "n_good": np.int64(2**62 + 3),
            "flag": np.bool_(True),
            "label": self.label,
            "when": datetime.datetime(2026, 11, 25, 12, 0),
            "flux": flux,
            "counts": np.arange(6, dtype=np.int64).reshape(2, 3) + 2**62,
        }


class Visit(astra.OutputModel):
    visit = peewee.IntegerField()
    rv = peewee.DoubleField()
    spectrum = astra.ArrayField("float32")

    class Meta:
        table_name = "test_visit"


class MeasureSome(astra.BaseTask):
    """Rows in Measurement for even i, a JSON result for odd i: its output_model is a property of each task."""

    i = luigi.IntParameter()

    @property
    def output_model(self) -> type[astra.OutputModel] | None:
        return Measurement if self.i % 2 == 0 else None

    def run(self) -> dict:
        return {"n_good": self.i} if self.i % 2 == 0 else {"odd": self.i}


class MeasureSomeOf(astra.BaseTask):
    """Needs MeasureSome 0..n-1."""

    n = luigi.IntParameter()

    def requires(self) -> list[MeasureSome]:
        return [MeasureSome(i=i) for i in range(self.n)]

    def run(self) -> dict:
        return {"n": len(astra.read_many(self.input()))}


class MeasureVisits(astra.BaseTask):
    """Many rows per task: one per visit (dicts and model instances mixed)."""

    output_model = Visit
    star = luigi.IntParameter()
    visits = luigi.IntParameter(default=3)

    def run(self) -> list:
        rows = []
        for v in range(self.visits):
            values = {"visit": v, "rv": self.star + v / 10, "spectrum": np.full(100, v, dtype=np.float32)}
            rows.append(values if v % 2 else Visit(**values))
        return rows


class BadOutput(astra.BaseTask):
    output_model = Visit
    what = luigi.Parameter(default="unknown-field")

    def run(self) -> object:
        row = {"visit": 1, "rv": 1.0, "spectrum": np.zeros(3, dtype=np.float32)}
        if self.what == "unknown-field":
            row["colour"] = "red"
        elif self.what == "lossy":
            row["spectrum"] = np.zeros(3, dtype=complex)
        elif self.what == "missing":
            del row["rv"]
        elif self.what == "scalar":
            return 3
        return row


class VisitsBatch(BatchTask):
    item_class = MeasureVisits
    chunk_size = 50
    stars = luigi.IntParameter(default=120)
    bad = luigi.IntParameter(default=-1)
    nan = luigi.IntParameter(default=-1)

    def parameter_sets(self):
        return [{"star": star} for star in range(self.stars)]

    def process(self, chunk: list) -> list:
        results = []
        for item in chunk:
            star = item.values["star"]
            rows = [{"visit": v, "rv": star + v / 10, "spectrum": np.full(100, v, dtype=np.float32)} for v in range(3)]
            if star == self.bad:
                rows[1]["colour"] = "red"
            if star == self.nan:
                rows[2]["rv"] = float("nan")  # rv may not be null: fine on PostgreSQL, not storable on SQLite
            results.append(rows)
        return results


class PlainResult(astra.BaseTask):
    """No output model: the keys of its JSON result are the columns of ``astra results``."""

    i = luigi.IntParameter()

    def run(self) -> dict:
        result = {"square": self.i * self.i, "values": [self.i, self.i + 1, self.i + 2]}
        if self.i % 2:
            result["odd"] = True
        return result


class HugeResult(astra.BaseTask):
    """A JSON result with an integer beyond int64 (JSON holds it; FITS and Parquet cannot)."""

    i = luigi.IntParameter()

    def run(self) -> dict:
        return {"big": 2**70 + self.i, "small": self.i}


class Labelled(astra.BaseTask):
    """One Measurement row, labelled with ``LABELS[label]`` (text a database may not be able to store)."""

    output_model = Measurement
    i = luigi.IntParameter()
    label = luigi.Parameter(default="plain")

    def run(self) -> dict:
        return {"n_good": self.i, "label": LABELS[self.label]}


LABELS = {"plain": "a label", "nul": "a\x00b", "surrogate": "spec-\udcff.fits"}


class LabelledBatch(BatchTask):
    item_class = Labelled
    labels = luigi.ListParameter()

    def parameter_sets(self):
        return [{"i": i, "label": label} for i, label in enumerate(self.labels)]


class Star(astra.OutputModel):
    """Described columns: help_text and Meta.units become the units and descriptions of exports and plots."""

    teff = peewee.DoubleField(help_text="effective temperature")
    logg = peewee.DoubleField(null=True, help_text="surface gravity, log10(g / (cm s^-2))")
    spectrum = astra.ArrayField("float32", null=True, help_text="model flux")

    class Meta:
        table_name = "test_star"
        units = {"teff": "K", "logg": "dex", "spectrum": "erg / (Angstrom cm2 s)"}


class StarFit(astra.BaseTask):
    """``rows`` rows of a star: a straight line in teff against logg, each row its own spectrum."""

    output_model = Star
    star = luigi.Parameter(description="name of the star")
    rows = luigi.IntParameter(default=1)

    def run(self) -> list[dict]:
        teff = 4000 + 3000 * np.arange(self.rows) / max(self.rows - 1, 1)
        logg = 5 - teff / 2000
        return [
            {"teff": t, "logg": g, "spectrum": np.full(10, i, dtype=np.float32)}
            for i, (t, g) in enumerate(zip(teff.tolist(), logg.tolist()))
        ]


class Lines(astra.OutputModel):
    """Lines found in a spectrum, (wavelength, flux, width) each: a (0, 3) array when there are none."""

    lines = astra.ArrayField("float64", shape=(None, 3), help_text="wavelength, flux and width of each line")
    lines_undeclared = astra.ArrayField("float64", null=True)

    class Meta:
        table_name = "test_lines"


class FindLines(astra.BaseTask):
    output_model = Lines
    n = luigi.IntParameter()
    #: Put the lines in the field that does not declare their shape too.
    undeclared = luigi.BoolParameter(default=False)

    def run(self) -> dict:
        lines = np.arange(self.n * 3, dtype=float).reshape(self.n, 3)
        return {"lines": lines, "lines_undeclared": lines if self.undeclared else None}


class FindWiderLines(FindLines):
    """Its lines have a fourth number, in the rows of FindLines's model (a release that declares (None, 4))."""

    version = "2"

    def run(self) -> dict:
        return {"lines": np.arange(self.n * 4, dtype=float).reshape(self.n, 4)}


class Sparse(astra.OutputModel):
    """Arrays that some tasks do not have (null), of floats and of ints."""

    teff = peewee.DoubleField(null=True)
    flux = astra.ArrayField("float32", null=True)
    counts = astra.ArrayField("int64", null=True)
    ok = peewee.BooleanField(null=True)

    class Meta:
        table_name = "test_sparse"


class SparseFit(astra.BaseTask):
    """Odd stars have no fit: a row with no value at all."""

    output_model = Sparse
    star = luigi.IntParameter()

    def run(self) -> dict:
        if self.star % 2:
            return {"teff": None, "flux": None, "counts": None, "ok": None}
        fit = {"teff": 5000.0 + self.star, "flux": np.full(3, 1.5, dtype=np.float32), "counts": np.arange(3)}
        return fit | {"ok": self.star % 4 == 0}


class Narrow(astra.OutputModel):
    """Arrays narrower than what numpy gives by default: values must fit, masked elements have a value to be."""

    flux = astra.ArrayField("float32", null=True)
    counts = astra.ArrayField("int16", null=True)
    teff = peewee.FloatField(null=True)  # PostgreSQL's real: a float32
    n = peewee.IntegerField(null=True)
    small = peewee.SmallIntegerField(null=True)
    big = peewee.BigIntegerField(null=True)

    class Meta:
        table_name = "test_narrow"


#: What NarrowFit(case=...) returns: a wide array that fits, one that does not, masked ones.
NARROW_CASES = {
    "fits": {"flux": np.array([3.4e38, -1e-30, np.nan, np.inf]), "counts": np.array([32767, -32768], dtype=np.int64)},
    "float too large": {"flux": np.array([1.0, 1e300])},
    "int too large": {"counts": np.array([1, 40000])},
    "uint too large": {"counts": np.array([2**63], dtype=np.uint64)},
    "masked floats": {"flux": np.ma.masked_array([1.0, 99.0, 2.0], mask=[False, True, False])},
    "masked float32": {"flux": np.ma.masked_array(np.ones(3, dtype=np.float32), mask=[True, False, False])},
    "masked ints": {"counts": np.ma.masked_array([1, 99, 2], mask=[False, True, False])},
    "masked nothing": {"counts": np.ma.masked_array([1, 2], mask=False)},
    "scalars that fit": {"teff": 3.4e38, "n": np.int64(2**31 - 1), "small": -(2**15), "big": -(2**63)},
    "real too large": {"teff": 1e300},
    "real rounded": {"teff": 59000.123456789},  # an MJD: float32 keeps it to the minute, on both databases alike
    "real printed": {"teff": 5777.123456},  # float32 5777.12353515625, printed by PostgreSQL as 5777.1235
    "real subnormal": {"teff": -1e-40},
    "real too small": {"teff": 1e-50},
    "integer too large": {"n": np.int64(2**31)},
    "smallint too large": {"small": 2**15},
    "bigint too large": {"big": 2**63},
    "ints a float32 array rounds": {"flux": np.array([3, 2**24 + 1])},  # float32 holds every whole number to 2**24
    "ints a float32 array holds": {"flux": np.array([3, 2**24, 2**40], dtype=np.int64)},
    "int a real rounds": {"teff": 2**24 + 1},
    "int a real holds": {"teff": -(2**24)},
}


class NarrowFit(astra.BaseTask):
    output_model = Narrow
    case = luigi.Parameter()

    def run(self) -> dict:
        return {name: None for name in Narrow._meta.fields if name not in ("pk", "task")} | NARROW_CASES[self.case]


class Typed(astra.OutputModel):
    """A column of each kind peewee converts on its own, each way (1.5 in an integer was 1, "false" a bool True)."""

    n = peewee.IntegerField(null=True)
    rv = peewee.DoubleField(null=True)
    flag = peewee.BooleanField(null=True)
    label = peewee.TextField(null=True)
    when = peewee.DateTimeField(null=True)
    kept = peewee.IntegerField(default=0)

    class Meta:
        table_name = "test_typed"


_PLUS_FIVE = datetime.timezone(datetime.timedelta(hours=5))


class _Band(str, enum.Enum):
    G = "g"


#: What TypedFit(case=...) returns, and what its row must hold (None: refused, the task fails).
TYPED_CASES = {
    "fraction in an integer": ({"n": 1.5}, None),
    "text in a bool": ({"flag": "false"}, None),
    "two in a bool": ({"flag": 2}, None),
    "list in a text": ({"label": [1, 2]}, None),
    "bytes in a text": ({"label": b"abc"}, None),
    "text in a double": ({"rv": "abc"}, None),
    "int beyond a double": ({"rv": 10**400}, None),
    "date in a datetime": ({"when": datetime.date(2026, 1, 1)}, None),
    "text in a datetime": ({"when": "not a date"}, None),
    "None where not null": ({"kept": None}, None),
    "NaN in an integer": ({"n": float("nan")}, None),
    "whole float in an integer": ({"n": np.float64(2.0)}, {"n": 2}),
    "numpy bool": ({"flag": np.bool_(True), "n": np.int32(-3)}, {"flag": True, "n": -3}),
    "one in a bool": ({"flag": 1}, {"flag": True}),
    "a path in a text": ({"label": __import__("pathlib").Path("/sdss/spec-1.fits")}, {"label": "/sdss/spec-1.fits"}),
    "int in a double": ({"rv": 7}, {"rv": 7.0}),
    "int a double holds": ({"rv": -(2**53)}, {"rv": -9007199254740992.0}),
    "int a double rounds": ({"rv": 2**53 + 1}, None),  # a source id: stored as its neighbour, silently
    "numpy int a double rounds": ({"rv": np.int64(6917528997577384321)}, None),
    "str enum in a text": ({"label": _Band.G}, {"label": "g"}),
    "0-d array in a double": ({"rv": np.array(1.75)}, {"rv": 1.75}),
    "nanoseconds in a datetime": ({"when": np.datetime64("2026-01-01T12:30:00.123456789", "ns")}, None),
    "microseconds in a datetime": (
        {"when": np.datetime64("2026-01-01T12:30:00.123456", "us")},
        {"when": datetime.datetime(2026, 1, 1, 12, 30, 0, 123456)},
    ),
    "aware time": (  # without a zone, as PostgreSQL's timestamp keeps it: the UTC time, on both databases
        {"when": datetime.datetime(2026, 1, 1, 12, 30, tzinfo=_PLUS_FIVE)},
        {"when": datetime.datetime(2026, 1, 1, 7, 30)},
    ),
}


class TypedFit(astra.BaseTask):
    output_model = Typed
    case = luigi.Parameter()

    def run(self) -> dict:
        return TYPED_CASES[self.case][0]


class TypedBatch(BatchTask):
    item_class = TypedFit
    cases = luigi.ListParameter()

    def parameter_sets(self):
        return [{"case": case} for case in self.cases]

    def process(self, chunk: list) -> list:
        return [TYPED_CASES[item.values["case"]][0] for item in chunk]


class Ragged(astra.OutputModel):
    """Spectra of different lengths, with masked pixels (NaN), and stars without one."""

    flux = astra.ArrayField("float32", null=True)
    counts = astra.ArrayField("int64", null=True)

    class Meta:
        table_name = "test_ragged"


def ragged_flux(star: int) -> np.ndarray | None:
    """What RaggedFit(star) records as its flux: none for star 0, else star + 2 pixels, NaN, +-inf and -0.0 among
    them."""
    if star == 0:
        return None
    flux = np.arange(star + 2, dtype=np.float32) + 0.25
    flux[0], flux[1] = np.nan, -0.0
    flux[-1] = np.inf if star % 2 else -np.inf
    return flux


class RaggedFit(astra.BaseTask):
    output_model = Ragged
    star = luigi.IntParameter()

    def run(self) -> dict:
        return {"flux": ragged_flux(self.star), "counts": np.arange(self.star, dtype=np.int64) - 2**40}


class Shaped(astra.OutputModel):
    """Arrays of two dimensions whose leading length differs from task to task (the README's ``Fit.lines``), with
    NaN, infinities and -0.0; and arrays of one dimension in version 1 of the task, of two in version 2."""

    lines = astra.ArrayField("float64", shape=(None, 3), null=True)
    counts = astra.ArrayField("int64", null=True)

    class Meta:
        table_name = "test_shaped"


def shaped_lines(star: int) -> np.ndarray | None:
    """What ShapedFit(star) records as its lines: none for star 0, no line (0, 3) for star 4, else ``star`` lines,
    NaN and infinities in the first, -0.0 and 1/3 in the last."""
    if star == 0:
        return None
    lines = np.arange((star % 4) * 3, dtype=np.float64).reshape(star % 4, 3) + 0.25
    if len(lines):
        lines[0] = [np.nan, np.inf, -np.inf]
    if len(lines) > 1:
        lines[-1, 0], lines[-1, 2] = -0.0, 1 / 3
    return lines


def shaped_counts(star: int, version: str) -> np.ndarray | None:
    """What ShapedFit(star) of ``version`` records as its counts: ``star`` ints (1-D) in version 1, ``star`` rows of
    two in version 2; none for star 0."""
    if star == 0:
        return None
    counts = np.arange(2 * star, dtype=np.int64) - 2**40
    return counts[:star] if version == "1" else counts.reshape(star, 2)


class ShapedFit(astra.BaseTask):
    output_model = Shaped
    version = "1"
    star = luigi.IntParameter()

    def run(self) -> dict:
        return {"lines": shaped_lines(self.star), "counts": shaped_counts(self.star, self.version)}


class Clash(astra.OutputModel):
    """Fields named as the columns astra adds: the task's version, and what it becomes when a field has it."""

    version = peewee.TextField()
    task_version = peewee.TextField()

    class Meta:
        table_name = "test_clash"


class ClashFit(astra.BaseTask):
    """Parameters named as the columns astra adds (the completion time, the task's pk)."""

    output_model = Clash
    version = "3"
    completed = luigi.Parameter()
    task_pk = luigi.IntParameter(default=7)

    def run(self) -> dict:
        return {"version": "a", "task_version": "b"}


class ClashResult(astra.BaseTask):
    """The same parameters, with a JSON result: a dict with a key "result" for some, a number for others."""

    completed = luigi.Parameter()
    task_pk = luigi.IntParameter(default=7)

    def run(self) -> object:
        return {"result": 1} if self.completed == "dict" else 5
