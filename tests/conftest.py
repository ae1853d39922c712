"""Fixtures: a fresh astra database per test, on SQLite and on PostgreSQL; a luigid; a SLURM cluster; a pgbouncer;
an output table of a first release (tests/evolving_tasks.py).

PostgreSQL tests create their own database (``astra_test_<random>``) on $ASTRA_TEST_POSTGRES (default
``postgresql://postgres@127.0.0.1:5432``) and drop it afterwards. Without a server they are skipped, unless
ASTRA_REQUIRE_POSTGRES=1 (as in CI), which makes them fail instead.

Helpers that are no fixtures (running luigi or astra, waiting, ...) are in tests/helpers.py; test files never import
this module or each other.
"""

from __future__ import annotations

import compileall
import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import luigi
import psycopg2
import pytest

import workflows
from astra import outputs
from astra.database import create_schema, output_tables
from astra.database.connection import reset
from astra.targets import forget_cached
from tests.helpers import OLD, POSTGRES, REPO, Luigid, unpack_commit

BACKENDS = ["sqlite", "postgresql"]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile this checkout's modules once, before any test. The ~1,000 luigi and astra commands the tests start
    import astra and the tests' task modules from here; where PYTHONDONTWRITEBYTECODE=1 is set (as some containers
    set it), each would compile them from source (~0.1 s of CPU), where an installed package reads the bytecode pip
    compiled. The variable still keeps the modules tests write elsewhere from being cached."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller, or a run without xdist
        for package in ("astra", "tests", "workflows", "bench"):
            compileall.compile_dir(REPO / package, quiet=1)


# pytest-xdist runs test files in several worker processes at once. The luigi command refuses to start while a
# process with the same command line holds its lock in $TMPDIR/luigi, so each worker gets a TMPDIR of its own.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _worker_tmp = Path(tempfile.gettempdir()) / f"astra-tests-{os.getpid()}-{os.environ['PYTEST_XDIST_WORKER']}"
    _worker_tmp.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(_worker_tmp)
    tempfile.tempdir = None  # make gettempdir() read TMPDIR again


def _missing(message: str, required_by: str) -> None:
    """A service the test needs is not there: skip, saying how to get it, or fail where ``$required_by`` is 1 (CI)."""
    if os.environ.get(required_by) == "1":
        pytest.fail(message)
    pytest.skip(message)


def _postgres_or_skip() -> None:
    try:
        psycopg2.connect(f"{POSTGRES}/postgres", connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        message = (
            f"PostgreSQL is not reachable at {POSTGRES} ({str(exc).strip()}): start it, or set "
            "ASTRA_TEST_POSTGRES=postgresql://user@host:port to a server where that user may create databases "
            "(ASTRA_REQUIRE_POSTGRES=1 makes this a failure instead of a skip)"
        )
        _missing(message, "ASTRA_REQUIRE_POSTGRES")


def _admin(sql: str) -> None:
    connection = psycopg2.connect(f"{POSTGRES}/postgres")
    connection.autocommit = True
    try:
        connection.cursor().execute(sql)
    finally:
        connection.close()


@pytest.fixture
def postgres_server() -> str:
    """The URL of the PostgreSQL server ($ASTRA_TEST_POSTGRES, without a database); skips the test without one."""
    _postgres_or_skip()
    return POSTGRES


@pytest.fixture(scope="session")
def _drop_later() -> Iterator[Callable[[str], None]]:
    """Drops databases in threads while the next tests run; the session waits for the last ones.

    DROP DATABASE waits for a checkpoint of the whole server (PostgreSQL 15), seconds on a busy machine: most of
    the time of a short PostgreSQL test, had it waited. Drops under way at once share one checkpoint, hence several
    threads. A drop that failed is an error of the session's last test.
    """
    drops: list[Future] = []
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="drop-database") as pool:
        yield lambda name: drops.append(pool.submit(_admin, f"drop database if exists {name} with (force)"))
    for drop in drops:
        drop.result()


@pytest.fixture
def postgres_database(postgres_server, _drop_later):
    """The URL of a new, empty PostgreSQL database (no astra schema), dropped after the test."""
    name = f"astra_test_{uuid.uuid4().hex[:12]}"
    _admin(f"create database {name}")
    try:
        yield f"{postgres_server}/{name}"
    finally:
        reset()
        _drop_later(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first: xdist hands a worker a whole file at a time (``--dist loadfile``), in this order, so
    the long files no longer start last and keep one worker busy while the others wait. A file's length is guessed
    from its tests' ``slow`` marks: ``@pytest.mark.slow(80)`` for one of about 80 s, 3 s for a plain mark."""
    seconds: dict[str, float] = {}
    for item in items:
        mark = item.get_closest_marker("slow")
        guess = 0.3 if mark is None else mark.args[0] if mark.args else 3.0
        seconds[item.location[0]] = seconds.get(item.location[0], 0.0) + guess
    items.sort(key=lambda item: -seconds[item.location[0]])  # stable: a file's tests keep their order


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(backend, tmp_path, monkeypatch, request) -> str:
    """An astra database with the schema loaded, on each backend; $ASTRA_DATABASE_URL points at it."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'astra.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
    monkeypatch.setenv("ASTRA_DATABASE_URL", url)
    forget_cached()
    create_schema()
    output_tables.create(outputs.models_in([workflows]))  # `astra db init --module workflows`
    yield url
    forget_cached()
    reset()


@pytest.fixture
def postgres_url(postgres_database, monkeypatch) -> str:
    """A PostgreSQL astra database (only) for this test and the luigi processes it starts."""
    from workflows import SNR

    monkeypatch.setenv("ASTRA_DATABASE_URL", postgres_database)
    forget_cached()
    create_schema()
    output_tables.create([SNR])  # the example's output table: astra db init --module workflows
    yield postgres_database
    forget_cached()


@pytest.fixture
def first_release(database_url) -> str:
    """Three FitStars recorded by the first release (flux float32, no logg)."""
    # In this process, whose $EVOLVING is unset: the first release (an `astra db init --module` and a luigi process
    # per star took four more starts).
    from tests import evolving_tasks
    from tests.evolving_tasks import FitStar

    assert "EVOLVING" not in os.environ
    output_tables.create(outputs.models_in([evolving_tasks]))  # what `astra db init --module` adds to the schema
    assert luigi.build([FitStar(star=star) for star in range(3)], local_scheduler=True, log_level="WARNING")
    return database_url


@pytest.fixture
def sqlite_url(tmp_path, monkeypatch) -> str:
    """An SQLite astra database (only), for tests whose point does not depend on the backend."""
    url = f"sqlite:///{tmp_path / 'astra.db'}"
    monkeypatch.setenv("ASTRA_DATABASE_URL", url)
    forget_cached()
    create_schema()
    yield url
    forget_cached()
    reset()


@pytest.fixture
def luigid(tmp_path, monkeypatch) -> Iterator[Luigid]:
    """A luigid, and $LUIGI_CONFIG_PATH naming a config that uses it for every luigi command the test starts."""
    server = Luigid(tmp_path / "luigid")
    monkeypatch.setenv("LUIGI_CONFIG_PATH", str(server.client_config))
    try:
        yield server
    finally:
        server.stop()


SLURM_LOCAL = REPO / "scripts" / "slurm-local"


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """A SLURM cluster that is up (any cluster whose node ``sinfo`` shows usable); the name of this host.

    Without one the test is skipped, saying how to get one: a plain ``pytest`` never installs packages or starts
    daemons. ASTRA_START_SLURM=1 lets it start a single-node cluster here (``scripts/slurm-local start``, which
    installs slurm-wlm and munge if missing, as root); ASTRA_REQUIRE_SLURM=1 (both set by .ci/run) makes a missing
    cluster a failure. The tests never stop a cluster: one they started stays up for the next run.
    """
    message = _slurm_down()
    if message and os.environ.get("ASTRA_START_SLURM") == "1":
        started = subprocess.run([str(SLURM_LOCAL), "start"], capture_output=True, text=True, timeout=600)
        message = _slurm_down() and f"scripts/slurm-local start said: {(started.stderr or started.stdout).strip()}"
    if message:
        message = (
            f"no SLURM cluster is up ({message}); start one with `scripts/slurm-local start` (as root), or set "
            "ASTRA_START_SLURM=1 to let the tests start it (ASTRA_REQUIRE_SLURM=1 makes this a failure)"
        )
        _missing(message, "ASTRA_REQUIRE_SLURM")
    return subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="session")
def old_astra(tmp_path_factory) -> Path:
    """The astra package of commit 9abb7da (schema 1), unpacked from git."""
    return unpack_commit(OLD, ["astra", "schema"], tmp_path_factory.mktemp("astra-9abb7da"))


#: A pgbouncer in transaction mode in front of the tests' PostgreSQL server (``scripts/pgbouncer-local start``).
PGBOUNCER = os.environ.get("ASTRA_TEST_PGBOUNCER", "postgresql://postgres@127.0.0.1:6432").rstrip("/")


@pytest.fixture
def pgbouncer_database(postgres_database) -> str:
    """``postgres_database`` (new and empty) reached through pgbouncer.

    Never starts one: without a pgbouncer answering at $ASTRA_TEST_PGBOUNCER the test is skipped with the way to
    start one, unless ASTRA_REQUIRE_PGBOUNCER=1 (as in CI), which makes it fail instead.
    """
    url = f"{PGBOUNCER}/{postgres_database.rpartition('/')[2]}"
    try:
        psycopg2.connect(url, connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        message = (
            f"no pgbouncer answers at {PGBOUNCER} ({str(exc).strip()}): start one with scripts/pgbouncer-local start "
            "(ASTRA_REQUIRE_PGBOUNCER=1 makes this a failure instead of a skip)"
        )
        _missing(message, "ASTRA_REQUIRE_PGBOUNCER")
    return url


@pytest.fixture
def pgbouncer_url(pgbouncer_database, monkeypatch) -> str:
    """An astra database made through pgbouncer (``astra db init --module workflows``), where $ASTRA_DATABASE_URL
    points."""
    from workflows import SNR

    monkeypatch.setenv("ASTRA_DATABASE_URL", pgbouncer_database)
    forget_cached()
    create_schema()
    output_tables.create([SNR])
    yield pgbouncer_database
    forget_cached()
    reset()


@pytest.fixture
def postgres_standby() -> Iterator[Standby]:
    """A PostgreSQL primary and its hot standby (streaming replication), both new, on free ports, in a temporary
    directory, stopped and removed after the test: a read-only replica such as users point readers at.

    The binaries are PostgreSQL's own (``pg_config --bindir``); as root they run as the ``postgres`` user. Without
    them the test is skipped, unless ASTRA_REQUIRE_POSTGRES=1 (as in CI).
    """
    bindir = _postgres_bindir()
    if bindir is None:
        _missing("PostgreSQL's initdb and pg_ctl are not installed here (pg_config --bindir)", "ASTRA_REQUIRE_POSTGRES")
    standby = Standby(bindir, Path(tempfile.mkdtemp(prefix="astra-standby-")))
    try:
        standby.start()
        yield standby
    finally:
        standby.stop()


def _postgres_bindir() -> Path | None:
    try:
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
    except OSError:
        found = ""
    candidates = [Path(found)] if found else sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((path for path in candidates if (path / "pg_ctl").exists() and (path / "initdb").exists()), None)


class Standby:
    """A primary (``primary_url``) and its hot standby (``standby_url``), each a server of its own."""

    def __init__(self, bindir: Path, directory: Path) -> None:
        self.bindir, self.directory = bindir, directory
        self.ports = _free_ports(2)
        self.primary_url, self.standby_url = (f"postgresql://postgres@127.0.0.1:{port}" for port in self.ports)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def _pg_ctl(self, name: str, port: int, *options: str) -> None:
        settings = f"-p {port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off {' '.join(options)}"
        self._run("pg_ctl", "-D", str(self.directory / name), "-o", settings, "-l", str(self.directory / f"{name}.log"),
                  "-w", "start")  # fmt: skip

    def start(self) -> None:
        if os.geteuid() == 0:
            os.chown(self.directory, *_postgres_ids())
        self._run("initdb", "-D", str(self.directory / "primary"), "-A", "trust", "-U", "postgres", "--no-sync")
        self._pg_ctl("primary", self.ports[0], "-c wal_level=replica")
        self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.ports[0]), "-U", "postgres", "-R", "-X", "stream",
                  "-D", str(self.directory / "standby"))  # fmt: skip
        self._pg_ctl("standby", self.ports[1], "-c hot_standby=on")

    def caught_up(self, timeout: float = 30) -> None:
        """Wait until the standby has replayed everything the primary has written so far."""
        import time

        with psycopg2.connect(f"{self.primary_url}/postgres") as primary:
            # Where WAL is inserted, not written: done records commit without waiting for the WAL to be written.
            (written,) = _one(primary, "select pg_current_wal_insert_lsn()")
        deadline = time.monotonic() + timeout
        with psycopg2.connect(f"{self.standby_url}/postgres") as standby:
            standby.autocommit = True
            while not _one(standby, "select pg_last_wal_replay_lsn() >= %s::pg_lsn", (written,))[0]:
                assert time.monotonic() < deadline, "the standby did not catch up"
                time.sleep(0.05)

    def stop(self) -> None:
        import shutil

        for name in ("standby", "primary"):
            if (self.directory / name / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.directory / name), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


def _one(connection, sql: str, params: tuple = ()) -> tuple:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:  # all bound at once: never the same port twice
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def _slurm_down() -> str:
    """Why no SLURM cluster takes jobs here, or '' if one does."""
    try:
        shown = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo: {exc}"
    states = shown.stdout.split()
    if shown.returncode != 0 or not any(
        s.rstrip("*~#").startswith(("idle", "mixed", "alloc", "complet")) for s in states
    ):
        return (shown.stderr.strip() or f"sinfo shows no usable node: {' '.join(states) or 'none'}").splitlines()[0]
    return ""
