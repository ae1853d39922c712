"""Tasks for tests/test_alldone.py: batch items that each require a task, of every shape items() meets."""

from __future__ import annotations

import gc

import luigi
from luigi.parameter import ParameterVisibility

import astra
from astra.batch import BatchTask
from tests.identity_tasks import EveryParameter, Link, Parameters


class Upstream(Parameters, astra.BaseTask):
    """An astra task that requires nothing, with a parameter of every kind (inherited from a mixin)."""

    version = "2"


class NeedsUpstream(Parameters, astra.BaseTask):
    """Requires the astra task Upstream with all its own values."""

    version = "1"

    def requires(self) -> Upstream:
        return Upstream(**self.param_kwargs)


class NeedsUpstreamMore(NeedsUpstream):
    """A subclass with a parameter of its own (not passed on), another version, and a requirement made by clone()."""

    version = "7"
    extra = luigi.IntParameter(default=0)
    loose = luigi.Parameter(default="", significant=False)

    def requires(self) -> Upstream:
        return self.clone(Upstream)


class NeedsEveryParameterByName(Parameters, astra.BaseTask):
    """Requires the plain luigi task EveryParameter and the astra task Upstream, each parameter given by name, and
    a constant: a fixed function of the parameters (astra.fixed_requires)."""

    def requires(self) -> list:
        return [
            EveryParameter(
                choice=self.choice,
                choices=self.choices,
                colour=self.colour,
                colours=self.colours,
                day=self.day,
                delta=self.delta,
                flag=self.flag,
                hidden=self.hidden,
                hour=self.hour,
                integer=self.integer,
                interval=self.interval,
                listed=self.listed,
                mapping=self.mapping,
                minute=self.minute,
                month=self.month,
                note=self.note,
                numerical=self.numerical,
                optional=self.optional,
                optional_bool=self.optional_bool,
                optional_choice=self.optional_choice,
                optional_dict=self.optional_dict,
                optional_float=self.optional_float,
                optional_int=self.optional_int,
                optional_list=self.optional_list,
                optional_numerical=self.optional_numerical,
                optional_path=self.optional_path,
                optional_str=self.optional_str,
                optional_tuple=self.optional_tuple,
                path=self.path,
                private=self.private,
                real=self.real,
                second=self.second,
                string=self.string,
                task=self.task,
                text=self.text,
                tupled=self.tupled,
                whole=self.whole,
                year=self.year,
            ),
            Upstream(text=self.text, integer=self.integer, real=self.real, choice="ü", note="constant"),
        ]


class SimpleUpstream(luigi.ExternalTask):
    """A plain luigi task whose parameters keep the values given (luigi's Parameter.normalize), one left to its
    default."""

    text = luigi.Parameter(default="")
    string = luigi.StrParameter(default="s")
    integer = luigi.IntParameter(default=0)
    real = luigi.FloatParameter(default=0.0)
    note = luigi.Parameter(default="", significant=False)
    hidden = luigi.Parameter(default="", visibility=ParameterVisibility.HIDDEN)
    extra = luigi.Parameter(default="x")


class NeedsSimpleByName(astra.BaseTask):
    """Passes its parameters by name to SimpleUpstream: written straight from the item's values."""

    text = luigi.Parameter(default="")
    string = luigi.StrParameter(default="s")
    integer = luigi.IntParameter(default=0)
    real = luigi.FloatParameter(default=0.0)
    note = luigi.Parameter(default="", significant=False)
    hidden = luigi.Parameter(default="", visibility=ParameterVisibility.HIDDEN)

    def requires(self) -> SimpleUpstream:
        return SimpleUpstream(
            integer=self.integer, text=self.text, string=self.string, real=self.real, note=self.note, hidden=self.hidden
        )


class NeedsSeveral(Parameters, astra.BaseTask):
    """Requires a dict of a list: an astra task, a plain luigi one, and the astra one again (twice, one hash)."""

    def requires(self) -> dict:
        upstream = Upstream(**self.param_kwargs)
        return {"b": [EveryParameter(**self.param_kwargs), upstream], "a": Upstream(**self.param_kwargs)}


class Plain(luigi.ExternalTask):
    """A plain luigi task requiring nothing: an input file."""

    i = luigi.IntParameter()
    release = luigi.Parameter(default="dr19")

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(f"/data/{self.release}/{self.i}.fits")


class Needed(astra.BaseTask):
    """An astra task requiring nothing."""

    i = luigi.IntParameter()
    release = luigi.Parameter(default="dr19")


class NeedsLeaf(astra.BaseTask):
    """The item of the database tests: requires its Needed."""

    i = luigi.IntParameter()
    release = luigi.Parameter(default="dr19")

    def requires(self) -> Needed:
        return Needed(i=self.i, release=self.release)


class NeedsPlain(astra.BaseTask):
    """Requires a plain luigi task, given by position."""

    i = luigi.IntParameter()

    def requires(self) -> Plain:
        return Plain(self.i)


class AsksTaskId(astra.BaseTask):
    """Asks the plain luigi task it requires for its task_id, which a task made light does not have."""

    i = luigi.IntParameter()

    def requires(self) -> list[Plain]:
        plain = Plain(i=self.i)
        return [plain] if plain.task_id else []


class HashesThem(astra.BaseTask):
    """Puts the tasks it requires in a set (luigi hashes a task by its task_id)."""

    i = luigi.IntParameter()

    def requires(self) -> list[Plain]:
        return sorted({Plain(i=self.i), Plain(i=self.i + 1)}, key=lambda task: task.i)


class ChangesWhatItRequires(astra.BaseTask):
    """Sets a version of its own on the task it requires, and on itself."""

    i = luigi.IntParameter()

    def requires(self) -> Needed:
        leaf = Needed(i=self.i)
        leaf.version = "changed"
        self.version = "mine"
        return leaf


class RaisesInRequires(astra.BaseTask):
    """A requires() that raises for odd i."""

    i = luigi.IntParameter()

    def requires(self) -> Needed:
        if self.i % 2:
            raise ValueError(f"no leaf for {self.i}")
        return Needed(i=self.i)


class Generates(astra.BaseTask):
    """A requires() that is a generator."""

    i = luigi.IntParameter()

    def requires(self):
        yield Needed(i=self.i)
        yield Plain(i=self.i)


class NeedsChain(astra.BaseTask):
    """Requires a link of a chain (a task that requires others: hashed by task_hash, from luigi's cache)."""

    k = luigi.IntParameter()

    def requires(self) -> Link:
        return Link(k=self.k)


class WithOwnInit(astra.BaseTask):
    """An __init__ of its own: not light, identified the slow way."""

    i = luigi.IntParameter()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.twice = 2 * self.i

    def requires(self) -> Needed:
        return Needed(i=self.twice)


class Branches(astra.BaseTask):
    """Not a fixed function: what it requires depends on a value (``is None`` cannot be seen by running it once)."""

    i = luigi.OptionalIntParameter(default=None)

    def requires(self) -> Needed:
        return Needed(i=0) if self.i is None else Needed(i=self.i)


class Formats(astra.BaseTask):
    """Not a fixed function: it computes a value (an f-string)."""

    i = luigi.IntParameter()

    def requires(self) -> Needed:
        return Needed(i=self.i, release=f"dr{self.i}")


class CallsAMethod(astra.BaseTask):
    """Not a fixed function: it calls a method of its own."""

    i = luigi.IntParameter()

    def leaf(self) -> Needed:
        return Needed(i=self.i)

    def requires(self) -> Needed:
        return self.leaf()


class CallsAParameter(astra.BaseTask):
    """Not a fixed function: it calls the value of a parameter (a task class), and passes a list."""

    i = luigi.IntParameter()
    kind = luigi.TaskParameter(default=Needed)

    def requires(self) -> list:
        return [self.kind(i=self.i), Plain(i=self.i, release=["dr19"])]


class NeededItems(BatchTask):
    """Needed items 0 to n - 1 (what the items of Items need), recorded without work."""

    item_class = Needed
    n = luigi.IntParameter()

    def parameter_sets(self):
        return ({"i": i} for i in range(self.n))

    def process(self, chunk: list) -> list[None]:
        return [None] * len(chunk)


class Items(NeededItems):
    """NeedsLeaf items 0 to n - 1, recorded without work (their Needed must be done: NeededItems)."""

    item_class = NeedsLeaf


class WatchedItems(Items):
    """Items whose parameter sets tell ``seen`` the collector's threshold when the check reads them, wait at
    ``meeting`` (if any) for a check in another thread, and raise if ``fail``."""

    seen: list = []
    meeting = None
    fail = luigi.BoolParameter(default=False)

    def parameter_sets(self):
        self.seen.append(gc.get_threshold()[0])
        if self.meeting is not None:
            self.meeting.wait(timeout=30)
        if self.fail:
            raise RuntimeError("parameter_sets() failed")
        return super().parameter_sets()
