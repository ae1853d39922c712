"""A task with a large result, for the listing-memory test."""

from __future__ import annotations

import luigi

import astra

SIZE = 6_000_000  # characters per result


class LargeResult(astra.BaseTask):
    index = luigi.IntParameter()

    def run(self) -> str:
        return f"{self.index}" * SIZE
