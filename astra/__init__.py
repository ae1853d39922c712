"""astra: the task layer of the SDSS-V pipeline. Luigi tasks whose completion is recorded in a database."""

from astra import config, outcome
from astra.batch import BatchTask
from astra.outputs import ArrayField, OutputModel, results
from astra.targets import DatabaseTarget, read_many
from astra.tasks import BaseTask, dynamic_requirements
from astra.version import __version__

# What the `luigi` command that imports astra (with --module) does: read before luigi reads [retcode] and [core].
outcome.default_exit_codes()  # a failed run must not exit 0 (luigi's default) where no luigi.cfg says otherwise
config.scheduler_from_command_line()  # --scheduler-host beats luigi.cfg's local_scheduler = true
outcome.failures_in_one_line()  # a failed task's error, not its traceback (which its record keeps)
outcome.judge_each_run()  # the records decide whether the requested task is done; one line if it is not

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
