"""``BaseTask``: a luigi Task whose completion lives in the astra database."""

from __future__ import annotations

import functools
import inspect
import time
import types
from collections.abc import Callable, Generator, Iterable
from contextlib import contextmanager

import luigi
from luigi.task import flatten

from astra import creation, slurm
from astra.claims import Claim, holding
from astra.targets import DatabaseTarget, completed, database_targets, note_created, prefetch, reopen_if_stale


class BaseTask(luigi.Task, metaclass=creation.TaskRegister):
    """Subclass this and write ``run()``; astra records the task as done when ``run()`` returns.

    - ``output()`` is a :class:`~astra.DatabaseTarget`, so luigi skips the task once it is recorded as done.
    - What ``run()`` returns (anything JSON can hold) is stored as the task's result.
    - Rows the task writes itself go inside ``with self.completion():``, which commits them in one transaction with
      the completion record; an exception inside it leaves neither.
    - An exception in ``run()`` records the task as failed, with the error, and luigi may run it again later.
    - ``version``: part of the task's identity; bump it to run the task (and what depends on it) again.
    - Tasks that ``run()`` yields (dynamic dependencies) are recorded as edges too, and the task stays complete only
      while they are (see :func:`astra.targets.stale_dynamic_dependencies`).
    """

    version: str = ""
    #: Where run() runs: "local", "slurm" (as a SLURM job, see astra.slurm) or None for ``[astra] executor``.
    executor: str | None = None

    _astra_claim: Claim | None = None
    _astra_in_run: bool = False  # inside the outermost run() of this task (recorded or not)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # luigi calls run() and nothing else. So whatever run() this class resolves to (its own, a mixin's, one
        # inherited through plain classes, or luigi's empty default) is wrapped here, once, by recorded().
        run = recorded(cls.run)
        if run is not cls.run:
            cls.run = run

    def __init__(self, *args, **kwargs) -> None:
        creation.initialise(self, super().__init__, args, kwargs)  # luigi's Task.__init__, a little faster
        note_created(self)

    @property
    def task_id(self) -> str:
        """luigi's task_id, worked out when first asked (tasks created only to identify another never need it)."""
        task_id = self.__dict__.get("_astra_task_id")
        if task_id is None:
            task_id = self.__dict__["_astra_task_id"] = creation.task_id(self)
        return task_id

    @task_id.setter
    def task_id(self, value: str) -> None:
        self.__dict__["_astra_task_id"] = value

    def __hash__(self) -> int:
        return hash(self.task_id)  # as luigi's, which keeps hash(self.task_id) from __init__

    @classmethod
    def get_params(cls) -> list[tuple[str, luigi.Parameter]]:
        # luigi walks dir(cls) on every call, and calls this several times per instance: that was most of the cost
        # of creating (and hashing) a task. Parameters are fixed once a class is defined, so keep them per class.
        params = cls.__dict__.get("_astra_params")
        if params is None:
            params = super().get_params()
            type.__setattr__(cls, "_astra_params", params)
        return list(params)

    @classmethod
    def get_param_values(cls, params: list, args: tuple, kwargs: dict) -> list[tuple[str, object]]:
        # luigi's, worked out once per new task and faster where nothing but the given values matters.
        return creation.param_values(cls, params, args, kwargs, super().get_param_values)

    def output(self) -> DatabaseTarget:
        return DatabaseTarget(self)

    def progress(self, done: int, total: int, message: str = "") -> None:
        """Inside ``run()``: show ``done`` of ``total`` (and ``message``) in luigid's dashboard.

        Each report is a request to the scheduler, so call this as often as you like: it reports only when the
        whole percentage changes or a second has passed since the last report. Outside a luigi worker it does
        nothing.
        """
        percentage = 100 * done // total if total else 100
        now = time.monotonic()
        last = getattr(self, "_astra_progress", None)
        if last is not None and last[0] == percentage and now - last[1] < 1.0:
            return
        self._astra_progress = (percentage, now)
        if callable(self.set_progress_percentage):
            self.set_progress_percentage(percentage)
        if callable(self.set_status_message):
            self.set_status_message(f"{done}/{total} {message}".rstrip())

    @classmethod
    def bulk_complete(cls, parameter_tuples: Iterable) -> list:
        """Those of ``parameter_tuples`` whose task is complete, with one query (luigi's Range tools call this).

        Each entry is a tuple of positional arguments, a dict of keyword arguments or a single first argument.
        ``cls`` may be a ``functools.partial`` of the class with more arguments, as ``RangeDaily`` passes it.
        """
        parameter_tuples = list(parameter_tuples)
        tasks = [_instantiate(cls, parameters) for parameters in parameter_tuples]
        return [parameters for parameters, done in zip(parameter_tuples, completed(tasks)) if done]

    def deps(self) -> list[luigi.Task]:
        # luigi's worker calls deps() just before it checks each dependency: ask about all of them at once.
        deps = super().deps()
        prefetch(deps)
        return deps

    @contextmanager
    def completion(self, result: object = None):
        """Inside ``run()``: a transaction for the task's own rows, which also records the task as done."""
        if self._astra_claim is None:
            raise RuntimeError("completion() works only inside run() of a BaseTask")
        with holding(self._astra_claim, result):
            yield


def dynamic_requirements(tasks: Iterable[luigi.Task]) -> luigi.DynamicRequirements:
    """Yield this from ``run()`` in place of a list of tasks: luigi then checks them all with one query.

    ``results = yield dynamic_requirements([EstimateSNR(spectrum_path=p) for p in paths])`` gives the tasks'
    outputs, as yielding the list would.
    """
    tasks = flatten(tasks)

    def complete(complete_fn: Callable[[luigi.Task], bool]) -> bool:
        prefetch(tasks)
        # Ask every task (no short cut at the first not done), so no prefetched answer is left over.
        return all([complete_fn(task) for task in tasks])

    return luigi.DynamicRequirements(tasks, complete)


def _instantiate(cls: Callable, parameters: object) -> luigi.Task:
    if isinstance(parameters, (list, tuple)):
        return cls(*parameters)
    if isinstance(parameters, dict):
        return cls(**parameters)
    return cls(parameters)


def recorded(run: Callable) -> Callable:
    """``run`` wrapped so that the task is claimed before it and recorded as done or failed after it.

    This is the one place where recording happens: ``BaseTask.__init_subclass__`` applies it to the ``run`` that
    each subclass resolves to, which is the one luigi calls. It is applied once (a wrapped ``run`` is returned as
    it is). Inside a run that is already going (a subclass's ``run()`` calling ``super().run()``, or
    :func:`run_unrecorded`) the wrapped function simply runs. A ``run()`` that is a generator (it yields dynamic
    dependencies), or that returns one, is recorded when the generator finishes, with the tasks it yielded.
    """
    if getattr(run, "_astra_recorded", False):
        return run

    if inspect.isgeneratorfunction(run):

        @functools.wraps(run)
        def wrapper(self, *args, **kwargs):
            if self._astra_in_run:
                return (yield from run(self, *args, **kwargs))
            claim = _start(self)
            if claim is None:
                return None  # another worker finished it meanwhile
            yield from _follow(self, claim, run(self, *args, **kwargs))
            return None

    else:

        @functools.wraps(run)
        def wrapper(self, *args, **kwargs):
            if self._astra_in_run:
                return run(self, *args, **kwargs)
            claim = _start(self)
            if claim is None:
                return None
            try:
                result = slurm.execute(self, claim, functools.partial(run, self, *args, **kwargs))
            except BaseException as exc:
                _end(self, claim, error=exc)
                raise
            if isinstance(result, types.GeneratorType):  # ``return self.steps()``: luigi drives it, so shall we
                return _follow(self, claim, result)
            _end(self, claim, result)
            return None

    wrapper._astra_recorded = True
    return wrapper


def run_unrecorded(task: BaseTask) -> object:
    """What ``task.run()`` returns, without the claim and record around it (:mod:`astra.batch` records items)."""
    task._astra_in_run = True
    try:
        return task.run()
    finally:
        task._astra_in_run = False


def _start(task: BaseTask) -> Claim | None:
    """Claim ``task`` for this process; None if it is done (another worker finished it meanwhile)."""
    claim = Claim(task)
    while not claim.acquire():
        if not reopen_if_stale(task):  # luigi found it not complete: its dynamic dependencies may have changed
            return None
    task._astra_claim, task._astra_in_run = claim, True
    return claim


def _end(task: BaseTask, claim: Claim, result: object = None, error: BaseException | None = None) -> None:
    """Record the task as done with ``result``, or failed with ``error``; then let go of the claim."""
    try:
        if error is not None:
            claim.fail(error)
            return
        try:
            if not claim.recorded:  # completion() records inside run()
                claim.finish(result)
        except BaseException as exc:
            claim.fail(exc)
            raise
        for target in database_targets([task]):
            target.mark_done()
    finally:
        _let_go(task, claim)


def _let_go(task: BaseTask, claim: Claim) -> None:
    claim.release()
    task._astra_claim, task._astra_in_run = None, False


def _follow(task: BaseTask, claim: Claim, steps: Generator) -> Generator:
    """Pass what ``run()`` yields on to luigi, and luigi's answers back, noting the tasks yielded; record at the end.

    luigi drops the generator when a yielded task is not complete yet: then the claim is let go (the row stays
    ``running``, and luigi calls ``run()`` again once those tasks are done). Anything else that stops it records
    the task as failed; that includes a yielded task whose identity cannot be worked out (its requires() raises),
    which would otherwise leave the task waiting for something luigi cannot schedule.
    """
    try:
        answer = None
        while True:
            try:
                wanted = steps.send(answer)
            except StopIteration as stop:
                result = stop.value
                break
            tasks = wanted.flat_requirements if isinstance(wanted, luigi.DynamicRequirements) else flatten(wanted)
            for target in database_targets(tasks):
                if target.identity_error is not None:
                    raise target.identity_error
                claim.dynamic[target.task_hash] = None
            try:
                answer = yield wanted
            except GeneratorExit:
                steps.close()
                raise
    except GeneratorExit:
        _let_go(task, claim)
        raise
    except BaseException as exc:
        _end(task, claim, error=exc)
        raise
    _end(task, claim, result)


@BaseTask.event_handler(luigi.Event.FAILURE)
def _failed_outside_run(task: luigi.Task, exception: BaseException) -> None:
    """luigi failed a task while its run() was suspended at a yield (e.g. checking what it yielded raised).

    The generator is only dropped after this, so the claim is still held: record the failure, or the row would
    stay ``running``.
    """
    claim = getattr(task, "_astra_claim", None)
    if isinstance(task, BaseTask) and claim is not None:
        claim.fail(exception)
