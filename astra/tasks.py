"""``BaseTask``: a luigi Task whose completion lives in the astra database."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import luigi
from luigi.task import flatten

from astra.claims import Claim, holding
from astra.targets import DatabaseTarget, completed, note_created, prefetch


class BaseTask(luigi.Task):
    """Subclass this and write ``run()``; astra records the task as done when ``run()`` returns.

    - ``output()`` is a :class:`~astra.DatabaseTarget`, so luigi skips the task once it is recorded as done.
    - What ``run()`` returns (anything JSON can hold) is stored as the task's result.
    - Rows the task writes itself go inside ``with self.completion():``, which commits them in one transaction with
      the completion record; an exception inside it leaves neither.
    - An exception in ``run()`` records the task as failed, with the error, and luigi may run it again later.
    - ``version``: part of the task's identity; bump it to run the task (and what depends on it) again.
    """

    version: str = ""

    _astra_claim: Claim | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # luigi calls run() and nothing else, so the recording has to wrap the subclass's own run().
        run = cls.__dict__.get("run")
        if run is not None and not getattr(run, "_astra_recorded", False):
            cls.run = _recorded(run)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        note_created(self)

    @classmethod
    def get_params(cls) -> list[tuple[str, luigi.Parameter]]:
        # luigi walks dir(cls) on every call, and calls this several times per instance: that was most of the cost
        # of creating (and hashing) a task. Parameters are fixed once a class is defined, so keep them per class.
        params = cls.__dict__.get("_astra_params")
        if params is None:
            params = super().get_params()
            type.__setattr__(cls, "_astra_params", params)
        return list(params)

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


def _recorded(run: Callable) -> Callable:
    """Wrap ``run`` so the task is claimed before it and recorded as done or failed after it."""

    def start(task: BaseTask) -> Claim | None:
        claim = Claim(task)
        if not claim.acquire():
            return None  # another worker finished it meanwhile
        task._astra_claim = claim
        return claim

    def end(task: BaseTask, claim: Claim, result: object) -> None:
        if not claim.recorded:
            claim.finish(result)
        for target in luigi.task.flatten(task.output()):
            if isinstance(target, DatabaseTarget):
                target.mark_done()

    def stop(task: BaseTask, claim: Claim) -> None:
        claim.release()
        task._astra_claim = None

    if inspect.isgeneratorfunction(run):

        @functools.wraps(run)
        def wrapper(self, *args, **kwargs):
            if self._astra_claim is not None:  # a subclass's run() calling super().run()
                return (yield from run(self, *args, **kwargs))
            claim = start(self)
            if claim is None:
                return None
            try:
                result = yield from run(self, *args, **kwargs)
                end(self, claim, result)
            except GeneratorExit:
                raise  # luigi dropped the generator to run new dependencies first; it will call run() again
            except BaseException as exc:
                claim.fail(exc)
                raise
            finally:
                stop(self, claim)
            return None

    else:

        @functools.wraps(run)
        def wrapper(self, *args, **kwargs):
            if self._astra_claim is not None:
                return run(self, *args, **kwargs)
            claim = start(self)
            if claim is None:
                return None
            try:
                end(self, claim, run(self, *args, **kwargs))
            except BaseException as exc:
                claim.fail(exc)
                raise
            finally:
                stop(self, claim)
            return None

    wrapper._astra_recorded = True
    return wrapper
