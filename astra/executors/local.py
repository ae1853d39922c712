"""The local executor: ``run()`` runs in the luigi worker that claimed the task; a batch's items are worked in this
process, or in its pool of ``--processes`` processes (:meth:`astra.batch.BatchTask.work`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import luigi

from astra.executors import Executor

if TYPE_CHECKING:
    from astra.batch import BatchTask
    from astra.recording import Claim


class LocalExecutor(Executor):
    def run(self, task: luigi.Task, claim: Claim, call: Callable[[], object]) -> object:
        return call()

    def run_batch(self, batch: BatchTask) -> None:
        batch.work()
