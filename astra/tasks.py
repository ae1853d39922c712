"""``BaseTask``: a luigi Task whose completion lives in the astra database."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import luigi
from luigi.task import flatten

from astra import creation, identity, recording
from astra.recording import recorded  # noqa: F401 -- the README names astra.tasks.recorded()
from astra.targets import DatabaseTarget, completed, known, note_created, prefetch

#: The class attributes of BaseTask that no luigi parameter may take, with what they are.
_RESERVED = {
    "version": "task version (a string, part of the task's identity)",
    "executor": "executor (where run() runs: local or slurm)",
}


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
    #: Where run() runs: "local", "slurm" (as a SLURM job, see astra.executors.slurm) or None for ``[astra] executor``.
    executor: str | None = None

    _astra_claim: recording.Claim | None = None
    _astra_in_run: bool = False  # inside the outermost run() of this task (recorded or not)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for name, meaning in _RESERVED.items():  # luigi leaves the class its Parameter, which astra would read
            if isinstance(getattr(cls, name), luigi.Parameter):
                raise config.DefinitionError(
                    f"{cls.__module__}.{cls.__name__}: a luigi parameter named {name!r} takes the place of astra's "
                    f"{meaning}; give the parameter another name"
                )
        version = cls.__dict__.get("version")
        if isinstance(version, (float, bool)):  # str(1.10) == str(1.1): a bump to 1.10 would find 1.1's records done
            raise config.DefinitionError(
                f"{cls.__module__}.{cls.__name__}: version = {version!r} is a {type(version).__name__}, which can "
                "stay the same when the version changes (1.10 is the float 1.1, so that bump would run nothing "
                f"again); write it in quotes, as you mean it, e.g. version = '{version!r}'"
            )
        # luigi calls run() and nothing else. So whatever run() this class resolves to (its own, a mixin's, one
        # inherited through plain classes, or luigi's empty default) is recorded: see astra.recording.
        run = recording.recorded(cls.run)
        if run is not cls.run:
            cls.run = run

    @creation.as_luigis  # and it notes the task, which a task made without it misses
    def __init__(self, *args, **kwargs) -> None:
        creation.initialise(self, super().__init__, args, kwargs)  # luigi's Task.__init__, a little faster
        known().note_created(self)

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
    @creation.as_luigis
    def get_param_values(cls, params: list, args: tuple, kwargs: dict) -> list[tuple[str, object]]:
        # luigi's, worked out once per new task and faster where nothing but the given values matters.
        return creation.param_values(cls, params, args, kwargs, super().get_param_values)

    def output(self) -> DatabaseTarget:
        return DatabaseTarget(self)

    def input(self):  # noqa: ANN201 -- luigi's: the outputs of what requires() gives, in its structure
        return luigi.task.getpaths(identity.requirements(self))

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
        with recording.holding(self._astra_claim, result):
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


# A BaseTask whose class adds no __init__ of its own is made without calling BaseTask.__init__ (a root's 5,000 leaves).
creation.skip_init(BaseTask.__init__, note_created)

# luigi's FAILURE event, for a run() suspended at a yield when luigi fails the task.
BaseTask.event_handler(luigi.Event.FAILURE)(recording.failed_outside_run)

# What the `luigi` command that imports a module of astra tasks does, as that module is imported: before luigi reads
# [retcode] and [core]. Here rather than in astra/__init__.py, which imports no luigi (fast start-up, issue 22).
from astra import config, outcome  # noqa: E402

outcome.default_exit_codes()  # a failed run must not exit 0 (luigi's default) where no luigi.cfg says otherwise
config.scheduler_from_command_line()  # --scheduler-host beats luigi.cfg's local_scheduler = true
outcome.bad_values_in_one_line()  # --n abc: one line that names it, not luigi's traceback
outcome.failures_in_one_line()  # a failed task's error, not its traceback (which its record keeps)
outcome.judge_each_run()  # the records decide whether the requested task is done; one line if it is not
if config.luigi_command_arguments() is not None:
    # luigi, peewee and astra are imported now, and stay for the life of the command: out of the garbage collector's
    # sight (gc.freeze), so that no collection walks them again. A full collection of them costs ~0.015 s, and
    # astra's imports and tasks put a run that finds its work done just past the count that starts one.
    gc.freeze()
