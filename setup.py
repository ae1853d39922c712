import re
from pathlib import Path

from setuptools import setup

# The version is written once, in astra/version.py.
VERSION = re.search(r'^__version__ = "([^"]+)"', Path("astra/version.py").read_text(), re.M).group(1)

setup(
    name="sdss-astra",  # the PyPI name "astra" belongs to an unrelated project; the import name stays astra
    version=VERSION,
    description="The task layer of the SDSS-V pipeline: luigi tasks whose completion is recorded in a database",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["astra", "astra.cli", "astra.database", "astra.executors", "workflows"],
    package_data={"astra.database": ["astradb.sql"], "workflows": ["data/spectra/*.fits"]},
    install_requires=[
        "click>=8",
        "luigi>=3.5",
        "peewee>=4.5",  # its JSONField: jsonb on PostgreSQL, text on SQLite
        "psycopg2-binary>=2.9",
        "sdssdb>=1.0",
        "numpy",
        "astropy",
        "fitsio>=1.2",  # reads the example workflow's FITS tables in C, ~5x faster than astropy (still the fallback)
    ],
    extras_require={
        # The export tests use the export extra too.
        "test": ["pytest>=7", "pytest-xdist", "hypothesis", "ruff", "pyarrow", "matplotlib", "orjson"],
        # astra results --format parquet, and --plot; orjson writes the numbers of --format csv and json ~10x faster
        # (the same bytes without it)
        "export": ["pyarrow", "matplotlib", "orjson"],
    },
    entry_points={"console_scripts": ["astra=astra.cli:main"]},
)
