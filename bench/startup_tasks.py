"""The astra tasks of bench/startup.py, in a module as light as a user's own: luigi and astra, nothing else.

``AstraLeaf --i 0`` is a done task, ``AstraRoot --n N`` a done root with its own output over N done leaves (as
bench/startup_local_tasks.py has them with LocalTargets).
"""

from __future__ import annotations

import luigi

import astra


class AstraLeaf(astra.BaseTask):
    i = luigi.IntParameter()


class AstraRoot(astra.BaseTask):
    n = luigi.IntParameter()

    def requires(self) -> list[AstraLeaf]:
        return [AstraLeaf(i=i) for i in range(self.n)]
