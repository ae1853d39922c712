"""astra: the task layer of the SDSS-V pipeline. Luigi tasks whose completion is recorded in a database."""

__version__ = "0.1.0"

from astra.outputs import ArrayField, OutputModel, results  # noqa: E402
from astra.targets import DatabaseTarget  # noqa: E402
from astra.tasks import BaseTask  # noqa: E402

__all__ = ["ArrayField", "BaseTask", "DatabaseTarget", "OutputModel", "__version__", "results"]
