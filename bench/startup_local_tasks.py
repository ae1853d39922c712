"""The LocalTarget tasks of bench/startup.py, in a module of their own so that their runs import luigi alone.

``LocalLeaf --i 0`` is a done task, ``LocalRoot --n N`` a done root with its own output over N done leaves; their
files live in ``$BENCH_DIR``.
"""

from __future__ import annotations

import os

import luigi


def _file(name: str) -> luigi.LocalTarget:
    return luigi.LocalTarget(os.path.join(os.environ["BENCH_DIR"], f"{name}.txt"))


class LocalLeaf(luigi.Task):
    i = luigi.IntParameter()

    def output(self) -> luigi.LocalTarget:
        return _file(f"leaf-{self.i}")


class LocalRoot(luigi.Task):
    n = luigi.IntParameter()

    def requires(self) -> list[LocalLeaf]:
        return [LocalLeaf(i=i) for i in range(self.n)]

    def output(self) -> luigi.LocalTarget:
        return _file(f"root-{self.n}")
