"""Everything astra asks of its database goes through this package: connection, models and queries.

The names below are imported when first used (PEP 562): importing :mod:`astra.database.drivers` alone, as
``import astra`` does, imports neither peewee nor a driver.
"""

from __future__ import annotations

import importlib

#: Each name this package offers, and the module that defines it.
_DEFINED_IN = {
    "DatabaseError": "astra.database.connection",
    "DatabaseNotReady": "astra.database.connection",
    "create_schema": "astra.database.connection",
    "database": "astra.database.connection",
    "describe": "astra.database.connection",
    "mask_password": "astra.database.connection",
    "only_existing": "astra.database.connection",
    "only_reading": "astra.database.connection",
    "reset": "astra.database.connection",
    "upgrade_schema": "astra.database.connection",
    "Dependency": "astra.database.models",
    "Parameter": "astra.database.models",
    "Task": "astra.database.models",
    "TaskParameter": "astra.database.models",
}

__all__ = sorted(_DEFINED_IN)


def __getattr__(name: str) -> object:
    module = _DEFINED_IN.get(name)
    if module is None:
        raise AttributeError(f"module 'astra.database' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
