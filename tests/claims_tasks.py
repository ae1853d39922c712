"""Tasks for the claim tests: ``Hold`` runs until a file appears (``luigi --module tests.claims_tasks``)."""

from __future__ import annotations

import os
from pathlib import Path

import luigi

import astra
from astra.database import Task
from astra.identity import task_hash
from tests.helpers import wait_for


class Hold(astra.BaseTask):
    """Notes the pid that runs it in ``runs_log``, then holds on until the file ``release`` exists."""

    name = luigi.Parameter()
    runs_log = luigi.Parameter(significant=False)
    release = luigi.Parameter(significant=False)

    def run(self) -> dict:
        with open(self.runs_log, "a") as log:
            log.write(f"{os.getpid()}\n")
        wait_for(lambda: os.path.exists(self.release), timeout=60)
        return {"pid": os.getpid()}


class Both(luigi.WrapperTask):
    """Two Hold tasks, ``one`` and ``two``, with their logs and release files in ``workdir``."""

    workdir = luigi.Parameter()

    def requires(self) -> list[Hold]:
        return [hold(Path(self.workdir), name) for name in ("one", "two")]


class NeedsInput(astra.BaseTask):
    """Needs the Hold ``input`` in ``workdir`` (which another process runs, see SharedInput)."""

    side = luigi.Parameter()
    workdir = luigi.Parameter()

    def requires(self) -> Hold:
        return hold(Path(self.workdir), "input")

    def run(self) -> dict:
        return {"side": self.side}


class ThroughOneMore(astra.BaseTask):
    workdir = luigi.Parameter()

    def requires(self) -> NeedsInput:
        return NeedsInput(side="b", workdir=self.workdir)

    def run(self) -> dict:
        return {}


class SharedInput(luigi.WrapperTask):
    """Two ways to the Hold ``input`` (a task that needs it, and one that needs such a task), and a Hold ``busy`` to
    run meanwhile."""

    workdir = luigi.Parameter()

    def requires(self) -> list[luigi.Task]:
        workdir = Path(self.workdir)
        return [NeedsInput(side="a", workdir=self.workdir), ThroughOneMore(workdir=self.workdir), hold(workdir, "busy")]


def hold_args(tmp_path: Path, name: str, *extra: str) -> list[str]:
    """The luigi command line of ``hold(tmp_path, name)``."""
    return [
        "--module",
        "tests.claims_tasks",
        "Hold",
        "--name",
        name,
        "--runs-log",
        str(tmp_path / f"{name}.log"),
        "--release",
        str(tmp_path / f"{name}.release"),
        "--local-scheduler",
        "--no-lock",  # luigi's own lock refuses a second identical command line on one host
        *extra,
    ]


def hold(tmp_path: Path, name: str) -> Hold:
    """The Hold task that ``hold_args(tmp_path, name)`` runs."""
    return Hold(name=name, runs_log=str(tmp_path / f"{name}.log"), release=str(tmp_path / f"{name}.release"))


def row_of(name: str, tmp_path: Path) -> Task | None:
    return Task.get_or_none(Task.task_hash == task_hash(hold(tmp_path, name)))


def runners(tmp_path: Path, name: str) -> list[int]:
    """The pids that entered run() of Hold ``name``, in order."""
    log = tmp_path / f"{name}.log"
    return [int(line) for line in log.read_text().split()] if log.exists() else []
