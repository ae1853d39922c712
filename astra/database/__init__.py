"""Everything astra asks of its database goes through this package: connection, models and queries."""

from astra.database.connection import (
    DatabaseError,
    DatabaseNotReady,
    create_schema,
    database,
    describe,
    mask_password,
    reset,
    upgrade_schema,
)
from astra.database.models import Dependency, Parameter, Task, TaskParameter

__all__ = [
    "DatabaseError",
    "DatabaseNotReady",
    "Dependency",
    "Parameter",
    "Task",
    "TaskParameter",
    "create_schema",
    "database",
    "describe",
    "mask_password",
    "reset",
    "upgrade_schema",
]
