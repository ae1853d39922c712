"""astra: the task layer of the SDSS-V pipeline. Luigi tasks whose completion is recorded in a database."""

# The one place the version is written: setup.py reads it from here.
__version__ = "0.1.0"

from astra.batch import BatchTask  # noqa: E402
from astra.outputs import ArrayField, OutputModel, results  # noqa: E402
from astra.targets import DatabaseTarget, read_many  # noqa: E402
from astra.tasks import BaseTask, dynamic_requirements  # noqa: E402

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
