"""Helpers the tests share: running the ``luigi`` and ``astra`` commands, waiting, free ports, luigi processes in
the background, a luigid, the PostgreSQL server the tests use.

Fixtures live in tests/conftest.py, task modules for the luigi command line in tests/*_tasks.py; test files import
from here and from those, never from each other (tests/test_suite_layout.py checks that). Only the standard library
is imported at the top, so that task modules may use ``wait_for`` and stay light for luigi's import.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
#: The console scripts installed beside this Python.
LUIGI = str(Path(sys.executable).with_name("luigi"))
LUIGID = str(Path(sys.executable).with_name("luigid"))
ASTRA = Path(sys.executable).with_name("astra")

#: The PostgreSQL server of the tests and benchmarks, where they create (and drop) databases of their own.
POSTGRES = os.environ.get("ASTRA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432").rstrip("/")
_server = urlsplit(POSTGRES)
POSTGRES_USER = _server.username or "postgres"
POSTGRES_HOST = _server.hostname or "127.0.0.1"
POSTGRES_PORT = _server.port or 5432

#: The example spectra shipped with the workflows.
SPECTRA = sorted(str(path) for path in (REPO / "workflows" / "data" / "spectra").glob("*.fits"))

#: The schema file, as PostgreSQL loads it.
SCHEMA_SQL = REPO / "schema" / "astradb" / "astradb.sql"


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` for its user (trust authentication ignores it: tests check it is never shown)."""
    parts = urlsplit(url)
    user, _, where = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.split(':')[0]}:{password}@{where}"))


# Subprocesses ----------------------------------------------------------------------------------------------------


def subprocess_env(env: dict | None = None) -> dict:
    """This process's environment with ``env`` on top, and this checkout first on PYTHONPATH."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH", "")]))
    return full_env


def run_luigi(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300):
    """Run the real ``luigi`` command line; returns the CompletedProcess (stdout and stderr merged)."""
    return subprocess.run(
        [LUIGI, *args],
        env=subprocess_env(env),
        cwd=cwd or REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def summary(output: str) -> str:
    """luigi's execution summary in the output of a ``luigi`` command."""
    return output.split("===== Luigi Execution Summary =====")[1]


def luigi_error_line(result: subprocess.CompletedProcess) -> str:
    """The astra line of a luigi run that stopped; fails if luigi printed a traceback instead."""
    assert result.returncode != 0
    assert "Traceback" not in result.stdout, result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("astra: ")]
    assert len(lines) == 1, result.stdout
    return lines[0]


#: Seconds after which an astra command counts as hung: a guard, not a measure (on a machine loaded by other work,
#: a command that takes 1 s alone has taken over 60).
HANG = 300


def astra(*args: str, input: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``astra ARGS`` (the console script; stdin ``input``, so a prompt never waits); stdout and stderr apart."""
    return subprocess.run(
        [str(ASTRA), *args],
        input=input,
        env=subprocess_env(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG,
    )


def astra_many(*commands: tuple[str, ...], env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """Run several read-only ``astra`` commands at once (each one pays for importing luigi)."""
    running = [
        subprocess.Popen(
            [str(ASTRA), *args],
            env=subprocess_env(env),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    done = []
    for args, process in zip(commands, running):
        stdout, stderr = process.communicate(timeout=HANG)
        done.append(subprocess.CompletedProcess([str(ASTRA), *args], process.returncode, stdout, stderr))
    return done


def main(capsys, *args: str) -> subprocess.CompletedProcess:
    """Run ``astra ARGS`` in this process, through the same ``main()`` as the console script.

    Cheaper than a subprocess (which spends most of its time importing luigi); the tests use it for the many
    variations of a command once the subprocess has shown the command itself.
    """
    import pytest

    from astra import cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["astra", *args], exit_info.value.code, out, err)


def one_line_error(result: subprocess.CompletedProcess, code: int) -> str:
    """Assert that the ``astra`` command failed with ``code`` and a single line on stderr; return that line."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("astra: ")
    return lines[0]


def record_at_once(cls: type, parameter_sets: list[dict], result: Callable[[dict], object] | None = None) -> None:
    """Tasks ``cls(**values)`` recorded done, with their parameters, edges and ``result(values)``, in one
    transaction, as a batch records a chunk. A batch works a chain (each item requiring the one before) a link and a
    transaction at a time, ~5 ms a link on PostgreSQL: this is for long chains that only need to be there."""
    from astra import values as texts
    from astra.database import queries
    from astra.identity import items
    from astra.recording import fields

    rows = [
        {
            **fields(cls, item.task_id, item.task_hash, item.version),
            "parameters": item.parameters,
            "requires": item.requires,
            "result": None if result is None else texts.dumps(result(item.values)),
        }
        for item in items(cls, parameter_sets)
    ]
    with queries.transaction():
        queries.record_items(rows, "done")


def run_pipeline(*tasks) -> None:
    """Run the example pipeline (5 EstimateSNR -> SummariseSNR), plus ``tasks``, in this process."""
    import luigi

    from workflows import SummariseSNR

    assert luigi.build([SummariseSNR(), *tasks], local_scheduler=True, log_level="WARNING") is not None


# Waiting and ports -----------------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], object], timeout: float = 30, what: str = "a condition") -> object:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Relay:
    """A TCP relay to the test PostgreSQL server that a test can take away, as a server that goes down for good:
    :meth:`stop` closes its port and every connection through it."""

    def __init__(self, port: int = 0) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))  # a port of a relay stopped: the server back
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database_url: str) -> str:
        """``database_url`` (of the test server) through the relay."""
        parts = urlsplit(database_url)
        return urlunsplit(parts._replace(netloc=f"{parts.username or POSTGRES_USER}@127.0.0.1:{self.port}"))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection((POSTGRES_HOST, POSTGRES_PORT))
            except OSError:
                return
            with self.lock:
                self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way: close() alone would not
        self.listener.close()
        with self.lock:
            for end in self.sockets:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


# luigi processes in the background, and a luigid ----------------------------------------------------------------


def _hears_ctrl_c() -> None:
    # A command started in the background by a shell without job control (`pytest ... &` in a script) ignores
    # Ctrl-C, and so does every process it starts: luigi would not hear the tests that press it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Luigi:
    """A ``luigi`` command line running in the background, its output going to a file."""

    def __init__(self, args: list[str], output: Path, env: dict | None = None) -> None:
        self.output = output
        with open(output, "w") as sink:
            # Its own process group, so that the test can stop (or kill) it with all of its worker processes.
            self.process = subprocess.Popen(
                [LUIGI, *args],
                env=subprocess_env(env),
                cwd=REPO,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_hears_ctrl_c,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self) -> str:
        return self.output.read_text()

    def signal(self, number: int) -> None:
        os.killpg(self.process.pid, number)

    def wait(self, timeout: float = 120) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait()


@contextmanager
def background(*runs: tuple[list[str], Path] | tuple[list[str], Path, dict]) -> Iterator[list[Luigi]]:
    """Start luigi command lines in the background; kill whatever is left of them afterwards."""
    started = []
    try:
        for run in runs:
            started.append(Luigi(*run))
        yield started
    finally:
        for process in started:
            process.stop()


def finished_cleanly(processes: list[Luigi], timeout: float = 600) -> None:
    """Wait for each luigi process; each must exit 0 with "This progress looks :)" and no ERROR line."""
    for process in processes:
        assert process.wait(timeout=timeout) == 0, process.text()
    for process in processes:
        output = process.text()
        assert "This progress looks :)" in output, output
        assert "ERROR" not in output, output


def start_later(started: list[Luigi], args: list[str], output: Path, env: dict | None = None) -> Luigi:
    """Start one more luigi process that ``background`` will clean up."""
    process = Luigi(args, output, env)
    started.append(process)
    return process


class Luigid:
    """A luigid on a free loopback port with its own state file and log directory (the ``luigid`` fixture)."""

    def __init__(self, directory: Path, scheduler: str = "") -> None:
        """``scheduler``: lines for luigid's own ``[scheduler]`` section."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = directory / "state.pickle"
        self.logdir = directory / "logs"
        self.logdir.mkdir(parents=True)
        self.config = directory / "luigid.cfg"
        self.config.write_text(f"[scheduler]\n{scheduler}\n")
        # What a user writes to use this luigid (the repository's luigi.cfg picks the local scheduler).
        self.client_config = directory / "client.cfg"
        self.client_config.write_text(
            f"[core]\nlocal_scheduler = false\nscheduler_host = 127.0.0.1\nscheduler_port = {self.port}\n"
        )
        self.start()

    def start(self) -> None:
        """Start luigid on :attr:`port` (again, after :meth:`kill`: as an operator restarts a lost one)."""
        command = [LUIGID, "--address", "127.0.0.1", "--port", str(self.port)]
        command += ["--state-path", str(self.state), "--logdir", str(self.logdir)]
        env = {**os.environ, "LUIGI_CONFIG_PATH": str(self.config)}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(self._answers, timeout=30, what=f"luigid on port {self.port}")

    def kill(self) -> None:
        """SIGKILL luigid, as a lost host would: it saves no state."""
        self.process.kill()
        self.process.wait()

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"luigid exited with {self.process.returncode}: {self.log()}")
        try:
            self.api("task_list", status="DONE")
        except OSError:
            return False
        return True

    def api(self, method: str, **data: object) -> object:
        """``GET /api/<method>?data=<json>``, as the dashboard does; the response."""
        import urllib.request
        from urllib.parse import quote

        with urllib.request.urlopen(f"{self.url}/api/{method}?data={quote(json.dumps(data))}", timeout=10) as answer:
            return json.load(answer)["response"]

    def worker_args(self) -> list[str]:
        return ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(self.port)]

    def log(self) -> str:
        path = self.logdir / "luigi-server.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> int:
        """Stop luigid as an operator would (SIGTERM): it saves its state and exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


# SLURM -----------------------------------------------------------------------------------------------------------


def slurm_args(log_dir: Path, *args: str) -> list[str]:
    """``args`` with astra's SLURM executor, its logs in ``log_dir``, polling often."""
    return [
        *args,
        "--astra-executor",
        "slurm",
        "--slurm-log-dir",
        str(log_dir),
        "--slurm-poll",
        "0.2",
        "--slurm-poll-max",
        "2",
    ]


def jobs_of(log_dir: Path) -> dict[str, str]:
    """The jobs that ran, from their stderr files (``<task_id>-<job>.err``): job id -> job name."""
    jobs = {}
    for path in log_dir.glob("*.err") if log_dir.exists() else []:
        name, _, job = path.stem.rpartition("-")
        jobs[job] = name
    return jobs


def scontrol(job_id: str) -> dict[str, str]:
    """What ``scontrol show job`` says of a job, as a dict."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


# Checking what was stored ----------------------------------------------------------------------------------------


def result_of(task) -> object:
    """A task row's result as Python (the result column holds JSON)."""
    return json.loads(task.result) if isinstance(task.result, str) else task.result


def assert_same(got: object, want: object, where: str = "result") -> None:
    """Equal values of the very same types (an int is not a float, NaN equals NaN, -0.0 is not 0.0)."""
    assert type(got) is type(want), f"{where}: {got!r} ({type(got).__name__}) != {want!r} ({type(want).__name__})"
    if isinstance(want, float):
        assert (math.isnan(got) and math.isnan(want)) or (
            got == want and math.copysign(1, got) == math.copysign(1, want)
        ), f"{where}: {got!r} != {want!r}"
    elif isinstance(want, dict):
        assert list(sorted(got)) == list(sorted(want)), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{where}: {len(got)} items, not {len(want)}"
        for index, (one, other) in enumerate(zip(got, want)):
            assert_same(one, other, f"{where}[{index}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def rows_by_path(paths) -> dict:
    """The EstimateSNR row of each spectrum path (None where there is none), read afresh."""
    from astra.database import Task
    from astra.identity import task_hash
    from astra.targets import forget_cached
    from workflows import EstimateSNR

    forget_cached()
    return {
        str(path): Task.get_or_none(Task.task_hash == task_hash(EstimateSNR(spectrum_path=str(path)))) for path in paths
    }


def assert_no_key_burnt() -> None:
    """Every pk given out so far belongs to a row: 1..n, and on PostgreSQL the sequence stands at n."""
    from astra.database import Parameter, Task, database
    from astra.database.connection import is_postgres

    for model, table in ((Task, "task"), (Parameter, "parameter")):
        pks = sorted(pk for (pk,) in model.select(model.pk).tuples())
        assert pks == list(range(1, len(pks) + 1)), table
        if is_postgres():
            (last,) = database().execute_sql(f"select last_value from astra.{table}_pk_seq").fetchone()
            assert last == len(pks), f"{table}: the sequence gave out {last} keys for {len(pks)} rows"


class QueryCounter(logging.Handler):
    """Counts the SQL statements peewee runs in this process (peewee logs each one at DEBUG)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.process == os.getpid():
            self.count += 1

    def __enter__(self) -> QueryCounter:
        self._logger = logging.getLogger("peewee")
        self._level = self._logger.level
        self._logger.setLevel(logging.DEBUG)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)


def looked_for_lost_rows(*classes: type) -> None:
    """Take now the look astra takes once per process at the first done task of a class without an output model
    (for rows its tasks wrote when it had one: ``DatabaseTarget._found_done``), so that a count of queries that
    follows counts only the check it is about."""
    from astra.targets import look_for_lost_model

    for cls in classes:
        look_for_lost_model(cls)


# Older releases --------------------------------------------------------------------------------------------------


def unpack_commit(commit: str, paths: list[str], where: Path) -> Path:
    """``paths`` of this repository as they were at ``commit``, unpacked into ``where`` (skips the test if the
    checkout does not have that commit)."""
    import io
    import tarfile

    import pytest

    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, *paths], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"commit {commit} is not in this checkout ({exc}); the test needs its code")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(where, filter="data")
    return where


def run_old_luigi(checkout: Path, url: str, *args: str, path: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``luigi ARGS --local-scheduler`` with the astra of an unpacked older ``checkout`` on database ``url``
    (``path``: more directories on PYTHONPATH after it, e.g. this checkout for a tests/ task module)."""
    env = {**os.environ, "ASTRA_DATABASE_URL": url, "PYTHONPATH": os.pathsep.join(map(str, [checkout, *path]))}
    return subprocess.run(
        [LUIGI, *args, "--local-scheduler"],
        env=env, cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )  # fmt: skip


def old_schema_database(backend: str, tmp_path: Path, request, checkout: Path) -> str:
    """The URL of a new database for the astra of an older ``checkout``: an SQLite file it creates itself, or a
    PostgreSQL database (the ``postgres_database`` fixture) with that checkout's schema file loaded."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'astra.db'}"
    url = request.getfixturevalue("postgres_database")
    loaded = psql(url, checkout / "schema" / "astradb" / "astradb.sql")
    assert loaded.returncode == 0, loaded.stderr
    return url


@contextmanager
def using_database(url: str, monkeypatch) -> Iterator[str]:
    """$ASTRA_DATABASE_URL set to ``url`` (for this process and those it starts), with nothing cached from before;
    this process's connection closed afterwards."""
    from astra.database.connection import reset
    from astra.targets import forget_cached

    monkeypatch.setenv("ASTRA_DATABASE_URL", url)
    forget_cached()
    try:
        yield url
    finally:
        forget_cached()
        reset()


def catalogue(path: Path) -> Path:
    """An SQLite file of another kind at ``path`` (a catalogue's: a table of stars), for commands given it by
    mistake."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("create table stars (id integer)")
        connection.commit()
    return path


def _raw(url: str, statement: str) -> tuple:
    """A connection to ``url`` that is not astra's, and ``statement`` for it (``astra.`` names the schema on
    PostgreSQL, nothing on SQLite)."""
    import sqlite3

    import psycopg2

    if url.startswith("sqlite:///"):
        return sqlite3.connect(url[len("sqlite:///") :]), statement.replace("astra.", "")
    return psycopg2.connect(url), statement


def raw_sql(url: str, statement: str) -> list[tuple]:
    """The rows of ``statement``, run without astra (``astra.`` names the schema on PostgreSQL, nothing on SQLite)."""
    connection, statement = _raw(url, statement)
    try:
        cursor = connection.cursor()
        cursor.execute(statement)
        return cursor.fetchall()
    finally:
        connection.close()


def raw_execute(url: str, statement: str) -> None:
    """Run ``statement`` without astra, and commit it (``astra.`` as for :func:`raw_sql`)."""
    connection, statement = _raw(url, statement)
    try:
        connection.cursor().execute(statement)
        connection.commit()
    finally:
        connection.close()


# PostgreSQL ------------------------------------------------------------------------------------------------------


#: main before schema versions: its schema file and code are schema 1 (the ``old_astra`` fixture unpacks them).
OLD = "9abb7da"


def old_luigi(old: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``luigi ARGS`` with the old astra (and this checkout's tests package for the task module)."""
    return run_old_luigi(old, url, "--module", "tests.upgrade_tasks", *args, path=(REPO,))


def run_upgrade_tasks(old: Path, url: str) -> None:
    """tests/upgrade_tasks.py run by the old astra: 10 spectra and their summary by luigi, 10 by a batch, 1 failed."""
    for args in (
        ["UpgradeSummary", "--n", "10"],
        ["UpgradeSpectra", "--start", "10", "--stop", "20"],
        ["UpgradeFails"],
    ):
        ran = old_luigi(old, url, *args)
        assert "This progress looks" in ran.stdout, ran.stdout


def psql(url: str, sql_file: Path) -> subprocess.CompletedProcess:
    """Load ``sql_file`` with psql, stopping at the first error."""
    with open(sql_file) as stdin:
        return subprocess.run(
            ["psql", "-v", "ON_ERROR_STOP=1", "-q", "-d", url], stdin=stdin, capture_output=True, text=True
        )


#: How many sessions of other processes are in the database of the connection that asks.
OTHER_SESSIONS = "select count(*) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"


def sessions(url: str, condition: str = "true") -> int:
    """How many sessions of other processes in the database at ``url`` meet ``condition`` (SQL on
    pg_stat_activity), e.g. ``wait_event_type = 'Lock'``."""
    import psycopg2

    connection = psycopg2.connect(url)
    try:
        cursor = connection.cursor()
        cursor.execute(f"{OTHER_SESSIONS} and ({condition})")
        return cursor.fetchone()[0]
    finally:
        connection.close()


def describe_schema(url: str) -> dict:
    """Columns, indexes and constraints of schema astra, as PostgreSQL reports them."""
    import psycopg2

    connection = psycopg2.connect(url)
    try:
        cursor = connection.cursor()
        cursor.execute(
            "select table_name, column_name, data_type, is_nullable from information_schema.columns "
            "where table_schema = 'astra' order by table_name, column_name"
        )
        columns = cursor.fetchall()
        cursor.execute("select indexname, indexdef from pg_indexes where schemaname = 'astra' order by indexname")
        indexes = cursor.fetchall()
        cursor.execute(
            "select conrelid::regclass::text, contype, pg_get_constraintdef(oid) from pg_constraint "
            "where connamespace = 'astra'::regnamespace order by 1, 2, 3"
        )
        constraints = cursor.fetchall()
        return {"columns": columns, "indexes": indexes, "constraints": constraints}
    finally:
        connection.close()


class ServerConnections:
    """Counts, in a thread, the server's connections to the database of ``url`` (pg_stat_activity) every 20 ms, the
    counter's own excepted: :attr:`now` and the most seen, :attr:`most`."""

    def __init__(self, url: str) -> None:
        import threading

        import psycopg2

        self.connection = psycopg2.connect(url)
        self.connection.autocommit = True
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._count, daemon=True)

    @property
    def now(self) -> int:
        return self.scalar(OTHER_SESSIONS)

    def scalar(self, sql: str) -> object:
        """What ``sql`` answers, asked on the counter's own connection (which is not counted)."""
        with self.connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()[0]

    def _count(self) -> None:
        while not self._stop.wait(0.02):
            self.most = max(self.most, self.now)

    def __enter__(self) -> ServerConnections:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.connection.close()
