"""Which PostgreSQL driver peewee imports: psycopg2, the one astra uses, and not psycopg 3 as well.

peewee (and its ``playhouse`` modules) import every driver they find when they are themselves imported, psycopg 3
(~0.1 s) beside psycopg2, and use psycopg2 unless told otherwise. astra talks to PostgreSQL through psycopg2 only
(its COPY, its error codes), so psycopg 3 is hidden from peewee's imports in a process that imported astra first:
peewee then sees only psycopg2, and ``import psycopg`` anywhere else works as always. In such a process peewee's own
PostgreSQL databases use psycopg2 too (as sdssdb's do with ``use_psycopg3=False``); a program that wants peewee on
psycopg 3 imports psycopg (or peewee) before astra. Nothing is hidden when psycopg2 is not installed.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from types import ModuleType

#: The modules peewee's imports do not get to see.
HIDDEN = ("psycopg",)


def hide_psycopg3_from_peewee() -> None:
    """Arrange that importing peewee or playhouse in this process does not import psycopg 3 (see the module)."""
    if "peewee" in sys.modules or any(isinstance(finder, _PeeweeFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _PeeweeFinder())


def _of_peewee(name: str) -> bool:
    return name == "peewee" or name == "playhouse" or name.startswith("playhouse.")


class _PeeweeFinder(importlib.abc.MetaPathFinder):
    """Finds peewee's modules as the other finders do, and loads them with :data:`HIDDEN` hidden."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201 -- importlib's signature
        if not _of_peewee(name):
            return None
        if all(hidden in sys.modules for hidden in HIDDEN) or importlib.util.find_spec("psycopg2") is None:
            sys.meta_path.remove(self)  # nothing left to hide, or peewee would have no driver but psycopg 3
            return None
        for finder in sys.meta_path:  # the finder that would have found it without this one
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        if spec.loader is not None:
            spec.loader = _WithoutHidden(spec.loader)
        return spec


class _WithoutHidden(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):  # noqa: ANN001, ANN201
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        hidden = [name for name in HIDDEN if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # `import name` raises ImportError, as if it were not installed
        try:
            self.loader.exec_module(module)
        finally:
            for name in hidden:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
            module.__loader__ = module.__spec__.loader = self.loader  # the module as if loaded without astra
