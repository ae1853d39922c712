"""Which PostgreSQL driver peewee imports, and when: psycopg2, the one astra uses, once a PostgreSQL database is made;
psycopg 3 never.

peewee (and its ``playhouse`` modules) import every driver they find when they are themselves imported: psycopg 3
(~0.1 s) and psycopg2 (~0.01 s, with libpq) beside sqlite3, in a process that may never open PostgreSQL (every
``luigi`` run and ``astra`` command on SQLite). So in a process that imported astra first:

- psycopg 3 is hidden from peewee's and playhouse's imports. astra talks to PostgreSQL through psycopg2 only (its
  COPY, its error codes), and peewee uses psycopg2 when it finds both; a program that wants peewee on psycopg 3
  imports psycopg (or peewee) before astra.
- psycopg2 is hidden from peewee's own import, and given to peewee when it first makes a psycopg2 adapter, which
  every PostgreSQL database of peewee's does as it is made (astra's, sdssdb's, a user's): then psycopg2 is imported
  and peewee's module gets what its import would have set (:func:`_give_peewee_psycopg2`), so from then on peewee
  is as if it had found psycopg2 at import.

``import psycopg`` and ``import psycopg2`` anywhere else work as always, and a driver already imported is not
hidden. Nothing is hidden when psycopg2 is not installed, nor when psycopg 3 was imported before peewee (then peewee
is as it makes itself: it would take psycopg 3 for a database made while it has no psycopg2).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from types import ModuleType

#: The modules peewee's and playhouse's imports do not get to see.
HIDDEN = ("psycopg",)
#: The modules peewee's own import does not get to see, given to it when it first needs them.
LATER = ("psycopg2",)


def hide_drivers_from_peewee() -> None:
    """Arrange that importing peewee or playhouse in this process imports neither psycopg 3 nor, until a PostgreSQL
    database is made, psycopg2 (see the module)."""
    if "peewee" in sys.modules or any(isinstance(finder, _PeeweeFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _PeeweeFinder())


def _of_peewee(name: str) -> bool:
    return name == "peewee" or name == "playhouse" or name.startswith("playhouse.")


def _hidden_from(name: str) -> list[str]:
    """The drivers not imported yet that the import of module ``name`` (peewee's or playhouse's) must not see."""
    return [hidden for hidden in (*HIDDEN, *(LATER if name == "peewee" else ())) if hidden not in sys.modules]


class _PeeweeFinder(importlib.abc.MetaPathFinder):
    """Finds peewee's modules as the other finders do, and loads them with the drivers of :func:`_hidden_from`
    hidden."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201 -- importlib's signature
        if not _of_peewee(name):
            return None
        if all(hidden in sys.modules for hidden in HIDDEN) or importlib.util.find_spec("psycopg2") is None:
            sys.meta_path.remove(self)  # nothing left to hide, or peewee would have no driver but psycopg 3
            return None
        hidden = _hidden_from(name)
        if not hidden:
            return None
        for finder in sys.meta_path:  # the finder that would have found it without this one
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        if spec.loader is not None:
            spec.loader = _WithoutHidden(spec.loader, hidden)
        return spec


class _WithoutHidden(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, hidden: list[str]) -> None:
        self.loader = loader
        self.hidden = hidden

    def create_module(self, spec):  # noqa: ANN001, ANN201
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        hidden = [name for name in self.hidden if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # `import name` raises ImportError, as if it were not installed
        try:
            self.loader.exec_module(module)
        finally:
            for name in hidden:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
            module.__loader__ = module.__spec__.loader = self.loader  # the module as if loaded without astra
        if "psycopg2" in hidden:
            _psycopg2_when_first_needed(module)


def _psycopg2_when_first_needed(peewee: ModuleType) -> None:
    """Give ``peewee`` (imported without psycopg2) psycopg2 as it makes its first psycopg2 adapter."""
    adapter = getattr(peewee, "Psycopg2Adapter", None)
    if adapter is None:  # not the peewee this was written for (4.5): give it psycopg2 at once
        _give_peewee_psycopg2(peewee)
        return
    init = adapter.__init__

    def __init__(self) -> None:  # noqa: N807 -- the adapter's own, for its first instance
        adapter.__init__ = init
        _give_peewee_psycopg2(peewee)
        init(self)

    adapter.__init__ = __init__


def _give_peewee_psycopg2(peewee: ModuleType) -> None:
    """Import psycopg2 and set in ``peewee`` what its import sets when it finds psycopg2 (peewee 4.5's peewee.py:
    the driver, its extensions, its JSON adapter, psycopg2's UUID adaptation, and the adapter's transaction states)."""
    import psycopg2
    from psycopg2 import extensions
    from psycopg2.extras import Json, register_uuid

    register_uuid()
    peewee.psycopg2, peewee.pg_extensions, peewee.pg_register_uuid, peewee.Json_pg2 = (
        psycopg2,
        extensions,
        register_uuid,
        Json,
    )
    adapter = getattr(peewee, "Psycopg2Adapter", None)
    if adapter is not None:
        adapter.txn_idle = extensions.TRANSACTION_STATUS_IDLE
        adapter.txn_inerror = extensions.TRANSACTION_STATUS_INERROR
        adapter.txn_unknown = extensions.TRANSACTION_STATUS_UNKNOWN
