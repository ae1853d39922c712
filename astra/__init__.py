"""astra: the task layer of the SDSS-V pipeline. Luigi tasks whose completion is recorded in a database."""

from astra.batch import BatchTask
from astra.outputs import ArrayField, OutputModel, results
from astra.targets import DatabaseTarget, read_many
from astra.tasks import BaseTask, dynamic_requirements
from astra.version import __version__

__all__ = [
    "ArrayField",
    "BaseTask",
    "BatchTask",
    "DatabaseTarget",
    "OutputModel",
    "__version__",
    "dynamic_requirements",
    "read_many",
    "results",
]
