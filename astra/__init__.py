"""astra: the task layer of the SDSS-V pipeline. Luigi tasks whose completion is recorded in a database.

The public names below are imported when first used (PEP 562), so ``import astra`` and ``astra --version`` start
fast, and ``astra.BatchTask`` (with its process pool) or numpy are imported only by code that uses them.
"""

from __future__ import annotations

import importlib

from astra.database import drivers
from astra.version import __version__

#: Each public name, and the module that defines it.
_DEFINED_IN = {
    "ArrayField": "astra.outputs",
    "BaseTask": "astra.tasks",
    "BatchTarget": "astra.targets",
    "BatchTask": "astra.batch",
    "DatabaseTarget": "astra.targets",
    "OutputModel": "astra.outputs",
    "dynamic_requirements": "astra.tasks",
    "read_many": "astra.targets",
    "results": "astra.outputs",
}

__all__ = [
    "ArrayField",
    "BaseTask",
    "BatchTarget",
    "BatchTask",
    "DatabaseTarget",
    "OutputModel",
    "__version__",
    "dynamic_requirements",
    "read_many",
    "results",
]

drivers.hide_drivers_from_peewee()


def __getattr__(name: str) -> object:
    module = _DEFINED_IN.get(name)
    if module is None:
        raise AttributeError(f"module 'astra' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # asked once: later uses find it here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
