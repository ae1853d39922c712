"""The version of astra, written once: ``astra.__version__`` and setup.py both read it from here.

A module of its own so that the modules that record it (astra.recording, astra.database.connection) need not
import the ``astra`` package they are part of.
"""

__version__ = "0.1.0"
