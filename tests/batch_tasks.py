"""Tasks for the batch tests: an item with every kind of luigi parameter, and a batch of them."""

from __future__ import annotations

import luigi
from luigi.task import flatten

from astra import BaseTask, read_many
from astra.batch import BatchTask


class MeasureStar(BaseTask):
    """An item with every kind of parameter luigi has: identity must not depend on how it was created."""

    star = luigi.IntParameter()
    band = luigi.Parameter(default="g")
    options = luigi.DictParameter(default={"b": 1, "a": [2, 3]})
    secret = luigi.Parameter(default="h", visibility=luigi.parameter.ParameterVisibility.HIDDEN)
    scratch = luigi.Parameter(default="p", visibility=luigi.parameter.ParameterVisibility.PRIVATE)
    note = luigi.Parameter(default="", significant=False)
    fail_on = luigi.IntParameter(default=-1, significant=False)

    def run(self) -> int:
        if self.star == self.fail_on:
            raise ValueError(f"star {self.star} has no good pixels")
        return self.star * 10


class MeasureStars(BatchTask):
    item_class = MeasureStar
    chunk_size = 400
    stars = luigi.IntParameter()
    fail_on = luigi.IntParameter(default=-1)

    processed: list[int] = []

    def parameter_sets(self):
        return [{"star": star, "fail_on": self.fail_on} for star in range(self.stars)]

    def process(self, chunk):
        MeasureStars.processed.extend(item.values["star"] for item in chunk)
        return super().process(chunk)


class NeedsFailingStars(BaseTask):
    """Needs a batch of stars, the star ``fail_on`` failing."""

    stars = luigi.IntParameter()
    fail_on = luigi.IntParameter()

    def requires(self) -> MeasureStars:
        return MeasureStars(stars=self.stars, fail_on=self.fail_on)

    def run(self) -> int:
        return len(self.input().read())


class Exposure(luigi.ExternalTask):
    """A file an item needs, given by path."""

    path = luigi.Parameter()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(self.path)


class ReadsExposures(BaseTask):
    """An item whose requires() is a generator: its input() must still hold what it yields."""

    path = luigi.Parameter()

    def requires(self):  # noqa: ANN201 -- a generator, as luigi allows
        yield Exposure(path=self.path)
        yield Exposure(path=self.path + ".flat")

    def run(self) -> dict:
        return {"inputs": [target.path for target in self.input()]}


class ReadsExposuresItsWay(ReadsExposures):
    """The same, of a class with an ``__init__`` of its own: its items are made and identified the slow way."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)


class ReadAllExposures(BatchTask):
    item_class = ReadsExposures
    paths = luigi.ListParameter()

    def parameter_sets(self):
        return [{"path": path} for path in self.paths]


class ReadAllExposuresItsWay(ReadAllExposures):
    item_class = ReadsExposuresItsWay


class TalliedStars(MeasureStars):
    """MeasureStars whose parameter_sets() adds a line to the file ``tally`` each time a check or a run reads them."""

    tally = luigi.Parameter()

    def parameter_sets(self):
        with open(self.tally, "a") as tally:
            tally.write("read\n")
        return super().parameter_sets()


class ListedStars(MeasureStars):
    """MeasureStars of the stars listed in the file ``listing``, one number a line: the items can grow while the
    batch's parameters stay the same (a folder that new files arrive in)."""

    stars = luigi.IntParameter(default=0)
    listing = luigi.Parameter()

    def parameter_sets(self):
        with open(self.listing) as listing:
            return [{"star": int(line), "fail_on": self.fail_on} for line in listing]


class Contested(BaseTask):
    """Run alone, it starts a batch of itself in a luigi process of its own (ContestedBatch), which records the same
    task while this one runs: done by the batch, or failed there (``batch_fails``)."""

    n = luigi.IntParameter()
    alone = luigi.BoolParameter(default=False, significant=False)
    fail = luigi.BoolParameter(default=False, significant=False)

    def run(self) -> dict:
        if self.fail:
            raise ValueError("failed in the batch")
        if self.alone:
            import subprocess

            from tests.helpers import LUIGI, subprocess_env

            batch = [LUIGI, "--module", "tests.batch_tasks", "ContestedBatch", "--n", str(self.n), "--local-scheduler"]
            batch += ["--fail"] if self.n % 2 else []
            ran = subprocess.run(batch, env=subprocess_env(), capture_output=True, text=True, timeout=300)
            assert "ModuleNotFoundError" not in ran.stderr, ran.stderr
        return {"alone": self.alone}


class ContestedBatch(BatchTask):
    item_class = Contested
    n = luigi.IntParameter()
    fail = luigi.BoolParameter(default=False)

    def parameter_sets(self):
        return [{"n": self.n, "fail": self.fail}]


class Prepared(BaseTask):
    """An astra task that batch items require (done, failed or never run)."""

    n = luigi.IntParameter()
    fail = luigi.BoolParameter(default=False, significant=False)

    def run(self) -> dict:
        if self.fail:
            raise ValueError(f"no preparation {self.n}")
        return {"n": self.n}


class PreparedItsOutput(Prepared):
    """Prepared with an output() of its own (astra's target still): only a task tells what it gives."""

    def output(self):  # noqa: ANN201 -- as BaseTask's
        return super().output()


class UsesPrepared(BaseTask):
    """An item that requires Prepared(n) (a fixed requires(): identified without making tasks); run() notes n in
    ``ran`` and, with ``forget``, has `astra tasks forget` forget its input meanwhile."""

    n = luigi.IntParameter()
    forget = luigi.BoolParameter(default=False, significant=False)
    ran: list[int] = []

    def requires(self) -> Prepared:
        return Prepared(n=self.n)

    def run(self) -> dict:
        UsesPrepared.ran.append(self.n)
        if self.forget:
            from tests.helpers import astra as astra_command

            forgot = astra_command("tasks", "forget", "--name", "Prepared", "--where", f"n={self.n}", "--yes")
            assert forgot.returncode == 0, forgot
        return {"used": self.n}


class UsesPreparedAndFile(UsesPrepared):
    """The same, with a requires() that is a generator, and a file input beside it (no astra task)."""

    path = luigi.Parameter()

    def requires(self):  # noqa: ANN201 -- a generator, as luigi allows
        yield Exposure(path=self.path)
        yield Prepared(n=self.n)


class UsesPreparedItsWay(UsesPrepared):
    """The same, of a class with an ``__init__`` of its own: identified the slow way."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)


class UsesPreparedItsOutput(UsesPrepared):
    """The same, requiring a task whose class has an output() of its own."""

    def requires(self) -> PreparedItsOutput:
        return PreparedItsOutput(n=self.n)


class UsesPreparedBatch(BatchTask):
    numbers = luigi.ListParameter()
    way = luigi.Parameter(default="")
    path = luigi.Parameter(default="")
    forget = luigi.BoolParameter(default=False)

    def parameter_sets(self):
        extra = {"path": self.path} if self.way == "AndFile" else {}
        return [{"n": n, "forget": self.forget, **extra} for n in self.numbers]

    @property
    def item_class(self) -> type:  # the class of the way asked for
        return globals()[f"UsesPrepared{self.way}"]


class ChainStep(BaseTask):
    """A link of a chain: step k needs step k - 1; the step ``fail_on`` raises."""

    k = luigi.IntParameter()
    fail_on = luigi.IntParameter(default=-1, significant=False)

    def requires(self):  # noqa: ANN201 -- a step, or nothing
        return ChainStep(k=self.k - 1) if self.k > 0 else []

    def run(self) -> int:
        if self.k == self.fail_on:
            raise ValueError(f"step {self.k} went wrong")
        return self.k


class ChainSteps(BatchTask):
    """Steps 0 to n - 1 in chunks of 4: a chain through chunks."""

    item_class = ChainStep
    chunk_size = 4
    n = luigi.IntParameter()
    fail_on = luigi.IntParameter(default=-1)

    processed: list[int] = []

    def parameter_sets(self):
        return [{"k": k, "fail_on": self.fail_on} for k in range(self.n)]

    def process(self, chunk):
        ChainSteps.processed.extend(item.values["k"] for item in chunk)
        return super().process(chunk)


class RunningTotal(BaseTask):
    """Night n's total: the total of the night before (read from its record) plus n."""

    night = luigi.IntParameter()

    def requires(self):  # noqa: ANN201 -- the night before, or nothing
        return RunningTotal(night=self.night - 1) if self.night > 0 else []

    def run(self) -> int:
        before = self.input().read() if self.night > 0 else 0
        if before is None:
            raise ValueError(f"night {self.night - 1} has no total yet")
        return before + self.night


class RunningTotals(BatchTask):
    """A chain whose links read the result of the link before, in chunks of 4."""

    item_class = RunningTotal
    chunk_size = 4
    nights = luigi.IntParameter()

    def parameter_sets(self):
        return [{"night": night} for night in range(self.nights)]


class SeesItsInput(BaseTask):
    """Night n: whether its run() finds the night before complete (self.input().exists())."""

    night = luigi.IntParameter()

    def requires(self):  # noqa: ANN201 -- the night before, or nothing
        return SeesItsInput(night=self.night - 1) if self.night > 0 else []

    def run(self) -> bool:
        return self.night == 0 or self.input().exists()


class SeeInputs(BatchTask):
    item_class = SeesItsInput
    chunk_size = 4
    nights = luigi.IntParameter()

    def parameter_sets(self):
        return [{"night": night} for night in range(self.nights)]


class RunningTotalsBackwards(RunningTotals):
    """The same chain with its nights given last night first: each link comes before the link it needs."""

    def parameter_sets(self):
        return [{"night": night} for night in reversed(range(self.nights))]


class UsesYielder(BaseTask):
    """An item that requires tests.dynamic_tasks.Yielder(n=1), a task with a dynamic dependency."""

    n = luigi.IntParameter()

    def requires(self):  # noqa: ANN201 -- a Yielder
        from tests.dynamic_tasks import Yielder

        return Yielder(n=1)

    def run(self) -> int:
        return self.n


class UsesYielders(BatchTask):
    item_class = UsesYielder
    numbers = luigi.ListParameter()

    def parameter_sets(self):
        return [{"n": n} for n in self.numbers]


class UsesYielderAndLeaf(UsesYielder):
    """An item that requires Yielder(n=1) and the Leaf it yields: the Leaf's row, made after the Yielder's claim,
    has the larger key of the two, so a forget --cascade of the Leaf locks them in the other order."""

    def requires(self):  # noqa: ANN201 -- the two tasks
        from tests.dynamic_tasks import Leaf, Yielder

        return [Yielder(n=1), Leaf(i=0)]


class UsesYielderAndLeafs(UsesYielders):
    item_class = UsesYielderAndLeaf


class Calibrated(BaseTask):
    """An item whose requires() raises for the night ``broken`` (then it has no identity); run() notes n in ``ran``."""

    n = luigi.IntParameter()
    broken = luigi.IntParameter(default=-1, significant=False)
    ran: list[int] = []

    def requires(self):  # noqa: ANN201 -- nothing, or it raises
        if self.n == self.broken:
            raise ValueError(f"no calibration for night {self.n}")
        return []

    def run(self) -> int:
        Calibrated.ran.append(self.n)
        return self.n


class CalibratedItsWay(Calibrated):
    """The same, of a class with an ``__init__`` of its own: identified the slow way."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)


class CalibratedBatch(BatchTask):
    numbers = luigi.ListParameter()
    broken = luigi.IntParameter(default=-1)
    way = luigi.Parameter(default="")

    def parameter_sets(self):
        return [{"n": n, "broken": self.broken} for n in self.numbers]

    @property
    def item_class(self) -> type:  # the class of the way asked for
        return globals()[f"Calibrated{self.way}"]


class GappyStars(MeasureStars):
    """MeasureStars whose second parameter set lacks the star (luigi cannot make that task)."""

    def parameter_sets(self):
        return [{"star": 0}, {"band": "r"}, {"star": 2}]


class Fickle(BaseTask):
    """An item whose requires() names Prepared(n) the first time it is called, and raises every time after."""

    n = luigi.IntParameter()
    calls: dict[int, int] = {}

    def requires(self):  # noqa: ANN201 -- a generator, as luigi allows
        Fickle.calls[self.n] = Fickle.calls.get(self.n, 0) + 1
        if Fickle.calls[self.n] > 1:
            raise ValueError(f"asked {Fickle.calls[self.n]} times")
        yield Prepared(n=self.n)

    def run(self) -> int:
        return self.n


class FickleBatch(UsesPreparedBatch):
    item_class = Fickle

    def parameter_sets(self):
        return [{"n": n} for n in self.numbers]


class SummariseStars(BaseTask):
    """A task made from every item of a batch, which it requires."""

    stars = luigi.IntParameter()

    def requires(self) -> MeasureStars:
        return MeasureStars(stars=self.stars)

    def run(self) -> dict:
        return {"sum": sum(read_many(self.input()))}  # the input is the batch's alone: its items' results


class SummariseStarsYielded(BaseTask):
    """The same, from the batch its run() yields."""

    stars = luigi.IntParameter()

    def run(self):  # noqa: ANN201 -- a generator: it yields the batch
        stars = yield MeasureStars(stars=self.stars)
        return {"sum": sum(stars.read())}


class StarNight(BaseTask):
    """A star's night, which needs the star's night before (a chain per star)."""

    star = luigi.IntParameter()
    night = luigi.IntParameter()

    def requires(self):  # noqa: ANN201 -- the night before, or nothing
        return StarNight(star=self.star, night=self.night - 1) if self.night > 0 else []

    def run(self) -> int:
        return 100 * self.star + self.night


class StarNights(BatchTask):
    """Each night of ``stars`` stars, night by night: the links of a chain are ``stars`` places apart."""

    item_class = StarNight
    chunk_size = 2
    stars = luigi.IntParameter()
    nights = luigi.IntParameter()

    def parameter_sets(self):
        return [{"star": star, "night": night} for night in range(self.nights) for star in range(self.stars)]


class SummariseStarsRead(BaseTask):
    """A task made from the results of a batch's items and of a lone task, read with astra.read_many."""

    stars = luigi.IntParameter()

    def requires(self) -> list:
        return [MeasureStars(stars=self.stars), Prepared(n=self.stars)]

    def run(self) -> dict:
        stars, prepared = read_many(flatten(self.input()))
        return {"stars": stars, "prepared": prepared, "read": self.input()[0].read()}


class SummariseStarsForgetting(SummariseStars):
    """SummariseStars whose run() has star 3 of its batch forgotten (`astra tasks forget --cascade`, which finds no
    edge to this task yet): this task must not be recorded done without it."""

    def run(self) -> dict:
        from tests.helpers import astra as astra_command

        forgot = astra_command("tasks", "forget", "--name", "MeasureStar", "--where", "star=3", "--cascade", "--yes")
        assert forgot.returncode == 0 and "1 tasks to forget (1 MeasureStar)" in forgot.stdout, forgot
        return {"sum": 0}


class StarsAndPrepared(luigi.WrapperTask):
    """A plain luigi wrapper around a batch and a lone astra task."""

    stars = luigi.IntParameter()

    def requires(self) -> list:
        return [MeasureStars(stars=self.stars), Prepared(n=self.stars)]


class SummariseWrapped(BaseTask):
    """A task made from what a wrapper requires."""

    stars = luigi.IntParameter()

    def requires(self) -> StarsAndPrepared:
        return StarsAndPrepared(stars=self.stars)

    def run(self) -> int:
        return self.stars


class DriftingNights(BatchTask):
    """StarNights' items (a chain per star when ``nights`` > 1), whose parameter sets change inside a SLURM array
    element (``$SLURM_ARRAY_TASK_ID`` set) as ``drift`` says: ``drop`` the first, ``add`` star -1 before them,
    ``append`` star -1 after them, or ``none``. So the shares see other sets than the luigi process that split them."""

    item_class = StarNight
    stars = luigi.IntParameter()
    nights = luigi.IntParameter(default=1)
    drift = luigi.Parameter(default="none")

    def parameter_sets(self):
        import os

        sets = [{"star": star, "night": night} for night in range(self.nights) for star in range(self.stars)]
        if "SLURM_ARRAY_TASK_ID" in os.environ:
            extra = [{"star": -1, "night": 0}]
            sets = {"drop": sets[1:], "add": extra + sets, "append": sets + extra}.get(self.drift, sets)
        return iter(sets)  # a generator's way: no len()


class Tagged(BaseTask):
    """An item with a list of tags: luigi cannot serialise a numpy integer among them."""

    i = luigi.IntParameter()
    tags = luigi.ListParameter(default=[])

    def run(self) -> int:
        return self.i


class TaggedBatch(BatchTask):
    """Three items, the last with a numpy integer in its tags."""

    item_class = Tagged

    def parameter_sets(self):
        import numpy

        return [{"i": 1}, {"i": 2}, {"i": 3, "tags": [numpy.int64(1)]}]


class ForgottenStars(MeasureStars):
    """A batch whose items are forgotten as soon as it has run, as by an `astra tasks forget` meanwhile."""


@ForgottenStars.event_handler(luigi.Event.SUCCESS)
def _forget_the_stars(batch: ForgottenStars) -> None:
    from astra.database import Task, records

    records.forget([task.pk for task in Task.select(Task.pk).where(Task.task_name == "MeasureStar")])


class NeedsForgottenStars(BaseTask):
    """What luigi finds not ready to run: its batch was done, and is not any more."""

    stars = luigi.IntParameter()
    failures: list[str] = []

    def requires(self) -> ForgottenStars:
        return ForgottenStars(stars=self.stars)

    def run(self) -> int:
        return len(read_many(self.input()))


@NeedsForgottenStars.event_handler(luigi.Event.FAILURE)
def _count_the_failure(task: NeedsForgottenStars, exception: BaseException) -> None:
    NeedsForgottenStars.failures.append(str(exception))
