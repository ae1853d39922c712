"""The local executor: ``run()`` runs in the luigi worker that claimed the task; a batch's items are worked in this
process, or in its pool of ``--processes`` processes (:meth:`astra.batch.BatchTask.work`)."""

from __future__ import annotations

from collections.abc import Callable

import luigi

from astra.executors import Executor


class LocalExecutor(Executor):
    def run(self, task: luigi.Task, claim: object, call: Callable[[], object]) -> object:
        return call()

    def run_batch(self, batch: luigi.Task) -> None:
        batch.work()
