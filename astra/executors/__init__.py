"""Executors: where a claimed task's ``run()`` runs, and how a batch's items are worked.

Recording (:mod:`astra.recording`) claims a task, hands the claimed attempt to the task's executor and records what
comes back; a :class:`~astra.batch.BatchTask` hands itself to its executor, which works its items here or splits
them into shares that run elsewhere. Executors never import recording: one for another batch system (HTCondor,
say) is a module here and a line in :data:`EXECUTORS`.

Which executor: the task class's ``executor`` attribute, else ``[astra] executor`` (``local`` or ``slurm``). Inside
a job an executor started, every task runs here.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import luigi

from astra.config import settings

if TYPE_CHECKING:
    from astra.batch import BatchTask
    from astra.recording import Claim

#: Executor names and the classes that implement them (imported when first chosen).
EXECUTORS = {
    "local": "astra.executors.local:LocalExecutor",
    "slurm": "astra.executors.slurm:SlurmExecutor",
}


class ExecutorError(RuntimeError):
    """Work an executor could not get done elsewhere (a batch's SLURM array failed, sbatch refused the job), said
    in one line with what to do: luigi's log shows that line, not the traceback, which says no more."""


class Executor(abc.ABC):
    """Where a claimed task's ``run()`` runs."""

    @abc.abstractmethod
    def run(self, task: luigi.Task, claim: Claim, call: Callable[[], object]) -> object:
        """Run the claimed ``task`` (``call`` runs its ``run()`` here) and return what ``run()`` returned; or record
        the attempt elsewhere (``claim.recorded`` is then True) and return None. Raise if it failed."""

    @abc.abstractmethod
    def run_batch(self, batch: BatchTask) -> None:
        """Work the batch's items not yet done (each recorded on its own); raise if any failed."""


_inside_job = False
_made: dict[str, Executor] = {}


def inside_job() -> None:
    """This process is a job that an executor started: from now on every task runs here."""
    global _inside_job
    _inside_job = True


def executor_for(task: luigi.Task, config: luigi.Config | None = None) -> Executor:
    """The executor of ``task``: its class's ``executor``, else ``[astra] executor`` (of ``config`` if read)."""
    name = "local" if _inside_job else getattr(task, "executor", None)
    where = f"{type(task).__name__}.executor"
    if not name:
        name, where = (config or settings()).executor, "[astra] executor (or --astra-executor)"
    if name not in EXECUTORS:
        raise ValueError(f"astra: {where} is {name!r}; use {' or '.join(repr(known) for known in EXECUTORS)}")
    if name not in _made:
        module, cls = EXECUTORS[name].split(":")
        _made[name] = getattr(importlib.import_module(module), cls)()
    return _made[name]
