"""Tasks for the ``astra`` command tests (``--module tests.cli_tasks``)."""

from __future__ import annotations

import luigi

import astra


class Broken(astra.BaseTask):
    """A task that always fails, for failed records."""

    reason = luigi.Parameter(default="broken on purpose")

    def run(self) -> None:
        raise ValueError(self.reason)
