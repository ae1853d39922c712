"""The PostgreSQL session of a process: one connection its threads share, closed when idle, and whether it is kept.

Hundreds of SLURM jobs and luigi workers may record into one server, whose ``max_connections`` is 100 by default,
so each process holds at most one connection of its own (:class:`SharedSession`): opened when first needed, shared
by its threads (the heartbeat's too) one transaction at a time, closed once unused for ``[astra] idle_close``
seconds and when the process exits. A thread that must not wait for another's transaction (a heartbeat during a
task's long write, a batch's helpers, which work beside the main thread for speed) uses a connection of its own for
a while (:meth:`SharedSession.sharing`, :meth:`SharedSession.use_own`).

Behind a connection pooler in transaction mode (pgbouncer's ``pool_mode = transaction``) consecutive transactions
of one client may run in different server sessions, so nothing may outlive a transaction there: no prepared
statement, no session ``SET``, no session advisory lock, no ``LISTEN``, no cursor held open. astra's statements
keep to that everywhere but in its prepared claims and finishes (:class:`astra.database.dialect.Prepared`), which
ask :attr:`SharedSession.keeps_session` (``[astra] pooler``, see :func:`keeps_session`).
"""

from __future__ import annotations

import logging
import math
import multiprocessing.util
import os
import threading
import time
import weakref
from contextlib import contextmanager

import peewee

from astra import config

logger = logging.getLogger("luigi-interface")


def keeps_session(connection, setting: str) -> bool:
    """Whether the server session behind ``connection`` (psycopg2's, just opened) lasts as long as the connection.

    ``setting`` is ``[astra] pooler``: ``transaction`` says no, ``session`` and ``none`` say yes, ``auto`` asks the
    server which backend process serves this connection. A direct connection is served by the backend whose pid
    came with the connection's start-up; a pooler that hands transactions to several server sessions must make up
    that pid (a query cancelled through it has to reach whichever session runs the query at the time), so the two
    differ behind pgbouncer, in either of its modes. Session mode costs then only the prepared statements' speed.
    """
    if setting != "auto":
        return setting != "transaction"
    with connection.cursor() as cursor:
        cursor.execute("select pg_backend_pid()")
        (served_by,) = cursor.fetchone()
    return served_by == connection.get_backend_pid()


class _SharedState:
    """peewee's connection state (``Database._state``): the connection is the process's, shared by its threads,
    unless a thread uses one of its own (:meth:`SharedSession.use_own`); transactions are each thread's."""

    def __init__(self) -> None:
        self.shared = peewee._ConnectionState()
        self.local = threading.local()

    @property
    def own(self) -> peewee._ConnectionState | None:
        """The calling thread's own connection state, if it uses one."""
        return getattr(self.local, "own", None)

    @own.setter
    def own(self, state: peewee._ConnectionState | None) -> None:
        self.local.own = state

    def _current(self) -> peewee._ConnectionState:
        return self.own or self.shared

    def _mine(self) -> peewee._ConnectionState:
        """Where the calling thread keeps its transactions: its own state, or a thread-local one."""
        own = self.own
        if own is not None:
            return own
        if not hasattr(self.local, "state"):
            self.local.state = peewee._ConnectionState()
        return self.local.state

    conn = property(lambda self: self._current().conn)
    closed = property(lambda self: self._current().closed)
    ctx = property(lambda self: self._current().ctx)
    transactions = property(lambda self: self._mine().transactions)
    commit_callbacks = property(lambda self: self._mine().commit_callbacks)

    def reset(self) -> None:
        self._current().reset()
        self._mine().reset()

    def set_connection(self, conn) -> None:
        self._current().set_connection(conn)
        self._mine().set_connection(conn)


class SharedSession:
    """Mixin for astra's PostgreSQL databases: one connection for every thread of the process, one transaction at a
    time (see the module).

    A thread takes its turn (:attr:`turn`) for each statement outside a transaction, and for the whole of each
    transaction: another thread's statement waits rather than land inside that transaction.
    """

    #: Whether the server session outlives each transaction (see :func:`keeps_session`); set at each connection.
    keeps_session = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._state = _SharedState()
        self.turn = threading.RLock()
        self._used = 0.0  # time.monotonic() of the last statement on the shared connection
        self._closer: threading.Thread | None = None
        self._finalized_in: int | None = None  # the process that will close the connection as it exits

    def _shared(self):
        """The turn to use the shared connection; nothing to take for a thread using its own."""
        return self.turn if self._state.own is None else _FREE

    def connect(self, reuse_if_open: bool = False) -> bool:
        with self._shared():
            if not self._state.closed and self._state.own is None:
                return False  # another thread opened it meanwhile
            opened = peewee.Database.connect(self, reuse_if_open)  # not sdssdb's, which starts from its profile
            if self._state.own is None:
                self._used = time.monotonic()
                self._watch()
            return opened

    def _initialize_connection(self, conn) -> None:
        super()._initialize_connection(conn)
        kept = keeps_session(conn, config.settings().pooler)
        if not kept and self.keeps_session:
            logger.info(
                "astra: %s: a connection pooler keeps no session between transactions; no statement is prepared",
                getattr(self, "description", "the database"),
            )
        self.keeps_session = kept

    def connection(self):
        with self._shared():
            return super().connection()

    def cursor(self, *args, **kwargs):
        with self._shared():
            return super().cursor(*args, **kwargs)

    def execute_sql(self, sql, params=None):
        with self._shared():
            try:
                return super().execute_sql(sql, params)
            finally:
                self._used = time.monotonic()  # after it: the caller reads the cursor next

    def copy_from(self, sql: str, data) -> None:
        """``COPY ... FROM STDIN`` (see ``Reconnecting.copy_from``) in the caller's turn."""
        with self._shared():
            try:
                return super().copy_from(sql, data)
            finally:
                self._used = time.monotonic()

    def transaction(self, *args, **kwargs) -> _Transaction:
        return _Transaction(self, *args, **kwargs)

    def begin(self, *args, **kwargs):
        turn = self._shared()
        turn.acquire()  # held until the thread's transaction ends (pop_transaction)
        try:
            self._end_leftover()
            began = super().begin(*args, **kwargs)
        except BaseException:
            turn.release()
            raise
        self._state.local.turn = turn
        return began

    def _end_leftover(self) -> None:
        """Roll back a transaction the server still holds open while peewee holds none: an interrupt (Ctrl-C, the
        SIGTERM luigi passes on) stopped its end before the COMMIT or ROLLBACK was sent. A new one begun inside it
        would commit what was never meant to be, or find its own rows as that one left them."""
        conn = self._state.conn
        info = None if self._state.closed or conn is None else getattr(conn, "info", None)
        if info is not None and getattr(info, "transaction_status", 0) in _LEFT_OPEN:
            logger.debug("astra: rolling back a transaction left open by an interrupt")
            peewee.Database.rollback(self)

    def pop_transaction(self):
        try:
            # A connection lost inside the transaction was reset as it was rolled back (see _Transaction), its
            # transactions with it: nothing is left to pop.
            return super().pop_transaction() if self._state.transactions else None
        finally:
            turn = getattr(self._state.local, "turn", None)
            if turn is not None and not self._state.transactions:  # the outermost one ended (or the state was reset)
                self._state.local.turn = None
                self._used = time.monotonic()
                turn.release()

    def close(self) -> bool:
        with self._shared():
            return super().close()

    def use_own(self) -> None:
        """From now on the calling thread uses a connection of its own (until :meth:`close_own`)."""
        if self._state.own is None:
            self._state.own = peewee._ConnectionState()

    def close_own(self) -> None:
        """Close the calling thread's own connection, if it uses one; the thread shares the process's again."""
        if self._state.own is not None:
            try:
                self.close()
            finally:
                self._state.own = None

    @contextmanager
    def sharing(self, wait: float):
        """In the block, the calling thread uses the shared connection if it is free within ``wait`` seconds, else
        a connection of its own, closed at the end (a heartbeat must not wait out a task's long transaction)."""
        if self._state.own is not None:
            yield
        elif self.turn.acquire(timeout=wait):
            try:
                yield
            finally:
                self.turn.release()
        else:
            self.use_own()
            try:
                yield
            finally:
                self.close_own()

    def _watch(self) -> None:
        """Close the shared connection once it is idle (the closer thread), and as the process exits."""
        pid = os.getpid()
        if self._finalized_in != pid:
            self._finalized_in = pid
            # Also as a luigi worker's or a pool's process ends: those skip atexit, not multiprocessing's finalizers.
            multiprocessing.util.Finalize(None, _close_at_exit, args=(weakref.ref(self),), exitpriority=10)
        idle = config.settings().idle_close
        if 0 < idle < math.inf and (self._closer is None or not self._closer.is_alive()):
            self._closer = threading.Thread(target=_close_when_idle, args=(weakref.ref(self), idle), daemon=True)
            self._closer.name = "astra-idle-close"
            self._closer.start()

    def close_if_idle(self, idle: float) -> float | None:
        """Close the shared connection if unused for ``idle`` seconds: None once closed, else seconds to wait."""
        with self.turn:  # no other thread is in a transaction on it
            if self._state.shared.closed:
                return None
            left = self._used + idle - time.monotonic()
            if left > 0:
                return left
            try:
                self._close(self._state.shared.conn)
            except Exception:  # a connection already lost: gone either way
                pass
            self._state.shared.reset()
            return None


#: The psycopg2 (libpq) transaction states of a connection inside a transaction: INTRANS and INERROR.
_LEFT_OPEN = (2, 3)


class _Transaction(peewee._transaction):
    """peewee's transaction, ended (COMMIT or ROLLBACK) before it gives up the thread's turn.

    peewee gives it up first: another thread's statement (the heartbeat's) could then land in the transaction,
    its COMMIT committing what was to be rolled back, and its UPDATE finding the row as this transaction left it.
    """

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        try:
            if self.db.transaction_depth() != 1:
                return  # a transaction() inside another is part of it
            if exc_type is not None:
                self.rollback(False)
                return
            try:
                self.commit(False)
            except BaseException:  # also an interrupt before the COMMIT was sent
                self.rollback(False)
                raise
        finally:
            self.db.pop_transaction()


class _Free:
    """The turn of a thread that uses its own connection: there is nothing to wait for."""

    def acquire(self, *args) -> bool:
        return True

    def release(self) -> None:
        pass

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        pass


_FREE = _Free()


def _close_when_idle(ref: weakref.ref, idle: float) -> None:
    while True:
        db = ref()
        if db is None:
            return
        left = db.close_if_idle(idle)
        del db
        if left is None:
            return
        time.sleep(left + 0.05)


def _close_at_exit(ref: weakref.ref) -> None:
    db = ref()
    if db is not None and db._finalized_in == os.getpid() and not db._state.shared.closed:
        try:
            db._close(db._state.shared.conn)
        except Exception:
            pass
