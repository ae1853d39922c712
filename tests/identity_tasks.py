"""Tasks for tests/test_identity.py: one parameter of every kind luigi has, as a plain luigi task and as a BaseTask."""

from __future__ import annotations

import datetime
import enum
from pathlib import Path

import luigi
from luigi.parameter import ParameterVisibility

import astra
from astra.batch import BatchTask


class Colour(enum.Enum):
    RED = 1
    GREEN = 2
    BLÅ = 3


class Other(luigi.Task):
    """A task class, the value of a TaskParameter."""


class Parameters:
    """Every kind of luigi parameter, each with a default, so that any of them may be left out."""

    text = luigi.Parameter(default="")
    string = luigi.StrParameter(default="s")
    integer = luigi.IntParameter(default=0)
    real = luigi.FloatParameter(default=0.0)
    flag = luigi.BoolParameter(default=False)
    day = luigi.DateParameter(default=datetime.date(2020, 1, 1))
    hour = luigi.DateHourParameter(default=datetime.datetime(2020, 1, 1, 3))
    minute = luigi.DateMinuteParameter(default=datetime.datetime(2020, 1, 1, 3, 4))
    second = luigi.DateSecondParameter(default=datetime.datetime(2020, 1, 1, 3, 4, 5))
    month = luigi.MonthParameter(default=datetime.date(2020, 2, 1))
    year = luigi.YearParameter(default=datetime.date(2020, 1, 1))
    interval = luigi.DateIntervalParameter(default=luigi.date_interval.Year(2020))
    delta = luigi.TimeDeltaParameter(default=datetime.timedelta(hours=1))
    colour = luigi.EnumParameter(enum=Colour, default=Colour.RED)
    colours = luigi.EnumListParameter(enum=Colour, default=())
    listed = luigi.ListParameter(default=[])
    tupled = luigi.TupleParameter(default=())
    mapping = luigi.DictParameter(default={})
    numerical = luigi.NumericalParameter(var_type=float, min_value=-1e308, max_value=1e308, default=0.5)
    whole = luigi.NumericalParameter(var_type=int, min_value=-(10**30), max_value=10**30, default=1)
    choice = luigi.ChoiceParameter(choices=["a", "b", "ü"], default="a")
    choices = luigi.ChoiceListParameter(choices=["a", "b", "ü"], default=())
    optional = luigi.OptionalParameter()
    optional_str = luigi.OptionalStrParameter()
    optional_int = luigi.OptionalIntParameter()
    optional_float = luigi.OptionalFloatParameter()
    optional_bool = luigi.OptionalBoolParameter()
    optional_dict = luigi.OptionalDictParameter()
    optional_list = luigi.OptionalListParameter()
    optional_tuple = luigi.OptionalTupleParameter()
    optional_numerical = luigi.OptionalNumericalParameter(var_type=float, min_value=0.0, max_value=1.0, default=None)
    optional_choice = luigi.OptionalChoiceParameter(choices=["a", "b"], default=None)
    optional_path = luigi.OptionalPathParameter()
    path = luigi.PathParameter(default=Path("."))
    task = luigi.TaskParameter(default=Other)
    note = luigi.Parameter(default="", significant=False)
    hidden = luigi.Parameter(default="", visibility=ParameterVisibility.HIDDEN)
    private = luigi.Parameter(default="", visibility=ParameterVisibility.PRIVATE)


class EveryParameter(Parameters, luigi.Task):
    pass


class EveryParameterBase(Parameters, astra.BaseTask):
    version = "3"


class NeedsEveryParameter(Parameters, astra.BaseTask):
    """Requires the plain luigi task EveryParameter with all its own values, given by keyword."""

    def requires(self) -> EveryParameter:
        return EveryParameter(**self.param_kwargs)


class NeedsEveryParameterPositionally(Parameters, astra.BaseTask):
    """As NeedsEveryParameter, the values of EveryParameter's positional parameters given by position."""

    def requires(self) -> EveryParameter:
        positional = [name for name, p in EveryParameter.get_params() if p.positional]
        by_name = {name: value for name, value in self.param_kwargs.items() if name not in positional}
        return EveryParameter(*[self.param_kwargs[name] for name in positional], **by_name)


class WarmLeaf(astra.BaseTask):
    """One of many tasks below a root (tests/test_creation.py)."""

    i = luigi.IntParameter()


class WarmRoot(astra.BaseTask):
    n = luigi.IntParameter()

    def requires(self) -> list[WarmLeaf]:
        return [WarmLeaf(i=i) for i in range(self.n)]


class Spring(astra.BaseTask):
    """The source of a long chain of tasks."""


class Link(astra.BaseTask):
    """Link ``k`` of a chain: requires link ``k - 1``, and the first one the spring."""

    k = luigi.IntParameter()

    def requires(self) -> luigi.Task:
        return Link(k=self.k - 1) if self.k > 0 else Spring()


class WithInit(astra.BaseTask):
    """A task with an ``__init__`` of its own, which creates another task before luigi sets its values."""

    i = luigi.IntParameter()
    label = luigi.Parameter(default="x")

    def __init__(self, *args, **kwargs) -> None:
        self.made_before = WarmLeaf(i=-1)
        super().__init__(*args, **kwargs)
        self.doubled = self.i * 2


class MixinWithInit(luigi.Task):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mixed = True


class WithMixinInit(astra.BaseTask, MixinWithInit):
    """A task whose next ``__init__`` after BaseTask's is a mixin's, not luigi's."""

    i = luigi.IntParameter()


def record_done(item_class: type, parameter_sets: list[dict]) -> None:
    """Record these items of ``item_class`` done, through a batch made for them."""

    class Record(BatchTask):
        def parameter_sets(self) -> list[dict]:
            return parameter_sets

        def process(self, chunk: list) -> list[None]:
            return [None] * len(chunk)

    Record.item_class = item_class
    Record().run()
