"""astra: the task layer of the SDSS-V pipeline. Luigi tasks whose completion is recorded in a database."""

__version__ = "0.1.0"

from astra.targets import DatabaseTarget  # noqa: E402
from astra.tasks import BaseTask  # noqa: E402

__all__ = ["BaseTask", "DatabaseTarget", "__version__"]
