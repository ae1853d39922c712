"""astra: the task layer of the SDSS-V pipeline. Luigi tasks whose completion is recorded in a database."""

from astra import config
from astra.batch import BatchTask
from astra.outputs import ArrayField, OutputModel, results
from astra.targets import DatabaseTarget, read_many
from astra.tasks import BaseTask, dynamic_requirements
from astra.version import __version__

# What the `luigi` command that imports astra (with --module) does: read before luigi reads [core].
config.scheduler_from_command_line()  # --scheduler-host beats luigi.cfg's local_scheduler = true

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
