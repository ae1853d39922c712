"""Tasks that return awkward values (importable by the luigi command line as ``--module tests.value_tasks``)."""

from __future__ import annotations

import datetime
import math

import luigi
import numpy as np

import astra
from astra.batch import BatchTask

UTC = datetime.timezone.utc


def everything() -> dict:
    """One of every kind of value astra promises to give back unchanged."""
    return {
        "int": 7,
        "float": 2.5,
        "snr": 12.25,
        "bool": True,
        "none": None,
        "text": 'é ✓ "quoted" \\ back',
        "list": [1, "a", None, 2.0],
        "tuple": (1, 2),
        "nested": {"a": {"b": [np.float64(2.5), {"c": np.int16(-3)}]}},
        "np_int64_near_2_62": np.int64(2**62 + 1),
        "np_int64_max": np.int64(2**63 - 1),
        "np_uint64_max": np.uint64(2**64 - 1),
        "np_int32": np.int32(-5),
        "np_float32": np.float32(0.1),
        "np_float64": np.float64(1 / 3),
        "np_bool": np.bool_(True),
        "np_str": np.str_("text"),
        "array_2000": np.arange(2000, dtype=np.float64) / 7,
        "matrix": np.arange(12, dtype=np.int64).reshape(3, 4),
        "cube": np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 2, 2),
        "bools": np.array([True, False]),
        "strings": np.array(["a", "bc"]),
        "array_with_nan": np.array([1.0, math.nan, math.inf, -math.inf]),
        "nan": math.nan,
        "inf": math.inf,
        "minus_inf": -math.inf,
        "np_nan": np.float32("nan"),
        "minus_zero": -0.0,
        "luminosity": 3.8e33,
        "huge": 1.7976931348623157e308,
        "tiny": 5e-324,
        "flux": 1.5e-17,
        "date": datetime.date(2026, 11, 25),
        "datetime": datetime.datetime(2026, 11, 25, 17, 30, 1, 250000, tzinfo=UTC),
        "naive_datetime": datetime.datetime(2026, 11, 25, 17, 30),
        "looks_like_a_tag": {"$float": "NaN"},
        "dollar_keys": {"$float": 1, "other": 2},
        "nul": "a\x00b",
    }


def _cycle() -> dict:
    loop: list = [1]
    loop.append(loop)
    return {"fine": 1, "loop": loop}


#: What each kind of task returns.
SAMPLES = {
    "everything": everything,
    "plain": lambda: {"snr": 12.5, "n": 3},
    "nan": lambda: {"snr": math.nan},
    "array": lambda: {"flux": np.arange(2000, dtype=np.float32)},
    "object": lambda: {"snr": 1.0, "thing": object()},
    "int_keys": lambda: {"snr": 1.0, "per_order": {1: 2.0}},
    "cycle": _cycle,
    "complex": lambda: {"z": [1, 1j]},
    "nul_key": lambda: {"fit": {"flux\x00err": 1.0}},
    "scalar": lambda: np.float64(2.5),
    "huge_int": lambda: {"n": 10**5000},  # more digits than Python writes as text (sys.get_int_max_str_digits)
}


class Returns(astra.BaseTask):
    """Returns SAMPLES[kind]()."""

    kind = luigi.Parameter()

    def run(self) -> object:
        return SAMPLES[self.kind]()


class ReturnsInCompletion(astra.BaseTask):
    """Returns its value through ``completion()``, after writing nothing else."""

    kind = luigi.Parameter()

    def run(self) -> None:
        with self.completion(result=SAMPLES[self.kind]()):
            pass


class ReadsBack(astra.BaseTask):
    """Requires Returns(kind) for each kind, and records what ``read_many`` gave back inside luigi."""

    kinds = luigi.ListParameter()

    def requires(self) -> list[Returns]:
        return [Returns(kind=kind) for kind in self.kinds]

    def run(self) -> dict:
        results = astra.targets.read_many(self.input())
        return {kind: result for kind, result in zip(self.kinds, results)}


class ReturnsBatch(BatchTask):
    item_class = Returns
    kinds = luigi.ListParameter()

    def parameter_sets(self):
        return [{"kind": kind} for kind in self.kinds]
