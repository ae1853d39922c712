"""The public API is importable from ``astra`` itself, and the README documents each name of it."""

from __future__ import annotations

import re

import astra
from tests.helpers import REPO

DOCUMENTED = {
    "BaseTask",
    "DatabaseTarget",
    "BatchTask",
    "OutputModel",
    "ArrayField",
    "results",
    "read_many",
    "dynamic_requirements",
}


def test_every_public_name_is_importable_from_astra():
    assert DOCUMENTED <= set(astra.__all__)
    for name in astra.__all__:
        assert getattr(astra, name) is not None, name


def test_the_readme_uses_the_public_names_not_submodules():
    readme = (REPO / "README.md").read_text()
    for name in DOCUMENTED:
        assert f"astra.{name}" in readme, name
    # Users are sent to `astra.X`, not to the module that happens to define X.
    assert not re.search(r"astra\.(batch|targets|tasks|outputs)\.(BatchTask|read_many|dynamic_requirements)", readme)


def test_the_version_is_written_once():
    setup = (REPO / "setup.py").read_text()
    assert astra.__version__ not in setup
    assert re.fullmatch(r"\d+\.\d+\.\d+", astra.__version__)
