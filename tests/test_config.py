"""Where astra connects: $ASTRA_DATABASE_URL, [astra] in luigi.cfg, an sdssdb profile, or the SQLite default."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import luigi
import psycopg2
import pytest

from astra.database import describe
from astra.database.connection import reset
from tests.helpers import (
    POSTGRES_HOST,
    POSTGRES_PORT,
    POSTGRES_USER,
    REPO,
    astra,
    astra_many,
    catalogue,
    free_port,
    luigi_error_line,
    main,
    one_line_error,
    run_luigi,
    subprocess_env,
)

SPECTRUM = str(REPO / "workflows" / "data" / "spectra" / "spec-00002.fits")


@pytest.fixture
def luigi_config():
    """luigi's in-process configuration, restored after the test."""
    config = luigi.configuration.get_config()
    yield config
    if config.has_section("astra"):
        config.remove_section("astra")
    reset()


def test_environment_overrides_the_astra_section(tmp_path, monkeypatch, luigi_config):
    monkeypatch.delenv("ASTRA_DATABASE_URL", raising=False)
    luigi_config.set("astra", "database_url", f"sqlite:///{tmp_path / 'from-config.db'}")
    assert describe() == f"sqlite:///{tmp_path / 'from-config.db'}"
    monkeypatch.setenv("ASTRA_DATABASE_URL", f"sqlite:///{tmp_path / 'from-env.db'}")
    assert describe() == f"sqlite:///{tmp_path / 'from-env.db'}"
    assert (tmp_path / "from-env.db").exists()


def test_the_database_follows_its_settings_when_they_change_in_this_process(tmp_path, monkeypatch, luigi_config):
    """A script (a notebook) that runs luigi twice: the second run recorded into the database of the first once the
    first had $ASTRA_DATABASE_URL or --astra-database-url and the second had not, or [astra] database_url changed."""
    from luigi.cmdline_parser import CmdlineParser

    def url(name: str) -> str:
        return f"sqlite:///{tmp_path / name}"

    luigi_config.set("astra", "database_url", url("configured.db"))
    monkeypatch.setenv("ASTRA_DATABASE_URL", url("environment.db"))
    assert describe() == url("environment.db")
    monkeypatch.delenv("ASTRA_DATABASE_URL")
    assert describe() == url("configured.db")
    luigi_config.set("astra", "database_url", url("changed.db"))
    assert describe() == url("changed.db")
    with CmdlineParser.global_instance(["--astra-database-url", url("command-line.db"), "Task"]):
        assert describe() == url("command-line.db")
    assert describe() == url("changed.db")


def test_a_task_done_in_one_database_is_not_done_in_the_next(tmp_path, monkeypatch, luigi_config):
    """A notebook's run in one database, then the next in another: this process remembered the task done, and the
    second run skipped it, recording nothing there (the settings followed, what the process knew did not)."""
    from astra.database import Task
    from astra.targets import forget_cached
    from tests.example_tasks import Leaf

    forget_cached()
    monkeypatch.setenv("ASTRA_DATABASE_URL", f"sqlite:///{tmp_path / 'first.db'}")
    leaf = Leaf(i=7)
    assert luigi.build([leaf], local_scheduler=True, log_level="WARNING") and leaf.complete()
    monkeypatch.setenv("ASTRA_DATABASE_URL", f"sqlite:///{tmp_path / 'second.db'}")
    assert not leaf.complete()
    assert luigi.build([leaf], local_scheduler=True, log_level="WARNING") and leaf.complete()
    assert [row.status for row in Task.select().where(Task.task_name == "Leaf")] == ["done"]  # of second.db
    luigi_config.set("astra", "database_url", f"sqlite:///{tmp_path / 'third.db'}")  # over no $ASTRA_DATABASE_URL
    monkeypatch.delenv("ASTRA_DATABASE_URL")
    assert not leaf.complete()


def test_settings_follow_luigi_cfg_and_the_command_line(luigi_config):
    """The settings are read once and kept, so every change of what they come from must be seen."""
    from luigi.cmdline_parser import CmdlineParser

    from astra.config import settings

    assert settings().lease == 120.0
    luigi_config.set("astra", "lease", "5")
    assert settings().lease == 5.0
    luigi_config.set("astra", "lease", "7")
    luigi_config.set("astra", "batch_processes", "3")
    assert (settings().lease, settings().batch_processes) == (7.0, 3)
    with CmdlineParser.global_instance(["--astra-lease", "9", "--astra-executor", "slurm", "Task"]):
        assert (settings().lease, settings().executor) == (9.0, "slurm")
    assert (settings().lease, settings().executor) == (7.0, "local")
    luigi_config.remove_section("astra")
    assert (settings().lease, settings().batch_processes) == (120.0, 1)


@pytest.mark.slow
def test_nothing_configured_means_sqlite_in_home(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("ASTRA_DATABASE_URL", "LUIGI_CONFIG_PATH")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", "from astra.database import describe; print(describe())"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"sqlite:///{tmp_path / '.astra' / 'astra.db'}"
    assert (tmp_path / ".astra" / "astra.db").exists()


def luigi_without_database_env(*args: str, tmp_path: Path, **env: str):
    clean = {"ASTRA_DATABASE_URL": "", "HOME": str(tmp_path), **env}
    return run_luigi(*args, env=clean, cwd=tmp_path)


@pytest.mark.slow
def test_sdssdb_profile_connects_with_psycopg2(postgres_database, tmp_path):
    dbname = postgres_database.rsplit("/", 1)[1]
    (tmp_path / "sdssdb.yml").write_text(
        f"astratest:\n  host: {POSTGRES_HOST}\n  port: {POSTGRES_PORT}\n  user: {POSTGRES_USER}\n"
    )
    (tmp_path / "luigi.cfg").write_text(f"[astra]\nprofile = astratest\ndbname = {dbname}\n")
    env = {"SDSSDB_CONFIG_PATH": str(tmp_path / "sdssdb.yml"), "LUIGI_CONFIG_PATH": str(tmp_path / "luigi.cfg")}

    script = (
        "from astra.database import create_schema, database, describe, output_tables\n"
        "from workflows import SNR\n"
        "print(create_schema()); db = database(); print(type(db).__name__, db.psycopg_version)\n"
        "output_tables.create([SNR])  # astra db init --module workflows\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=subprocess_env({**env, "ASTRA_DATABASE_URL": ""}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "sdssdb profile 'astratest'" in out.stdout
    assert "PeeweeDatabaseConnection psycopg2" in out.stdout

    result = luigi_without_database_env(
        "--module",
        "workflows",
        "EstimateSNR",
        "--spectrum-path",
        SPECTRUM,
        "--local-scheduler",
        tmp_path=tmp_path,
        **env,
    )
    assert "1 ran successfully" in result.stdout, result.stdout
    connection = psycopg2.connect(postgres_database)
    cursor = connection.cursor()
    cursor.execute("select task_name, status from astra.task")
    assert cursor.fetchall() == [("EstimateSNR", "done")]
    connection.close()


@pytest.mark.slow
def test_missing_profile_is_one_clear_line(tmp_path):
    (tmp_path / "luigi.cfg").write_text("[astra]\nprofile = no_such_profile\n")
    result = luigi_without_database_env(
        "--module", "workflows", "EstimateSNR", "--local-scheduler", tmp_path=tmp_path,
        LUIGI_CONFIG_PATH=str(tmp_path / "luigi.cfg"),
    )  # fmt: skip
    line = luigi_error_line(result)
    assert "no profile 'no_such_profile'" in line and "sdssdb.yml" in line


@pytest.mark.slow
def test_schema_not_loaded_is_one_clear_line(postgres_database, tmp_path):
    result = run_luigi(
        "--module", "workflows", "EstimateSNR", "--local-scheduler",
        env={"ASTRA_DATABASE_URL": postgres_database}, cwd=tmp_path,
    )  # fmt: skip
    line = luigi_error_line(result)
    assert "no astra schema" in line and "astra db init" in line and "astradb.sql" in line


@pytest.mark.slow
def test_unknown_url_scheme_is_one_clear_line(tmp_path):
    result = run_luigi(
        "--module", "workflows", "EstimateSNR", "--local-scheduler",
        env={"ASTRA_DATABASE_URL": "mysql://root:secret@localhost/astra"}, cwd=tmp_path,
    )  # fmt: skip
    line = luigi_error_line(result)
    assert "expected sqlite:///path or postgresql://" in line
    assert "secret" not in result.stdout


def _child_backend_pid(queue) -> None:
    from astra.database import database
    from astra.database.connection import is_postgres

    db = database()
    queue.put(db.execute_sql("select pg_backend_pid()").fetchone()[0] if is_postgres() else os.getpid())


def test_one_connection_per_process_and_forks_open_their_own(database_url, backend):
    import multiprocessing

    from astra.database import database

    db = database()
    assert database() is db
    connection = db.connection()
    if backend == "postgresql":
        before = db.execute_sql("select pg_backend_pid()").fetchone()[0]
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_child_backend_pid, args=(queue,))
    child.start()
    seen = queue.get(timeout=30)
    child.join(timeout=30)
    assert child.exitcode == 0
    assert database() is db
    if backend == "postgresql":
        # The parent's connection survives the child (which must not have closed or reused it).
        assert db.connection() is connection
        after = db.execute_sql("select pg_backend_pid()").fetchone()[0]
        assert after == before != seen
    else:
        # SQLite's rule: no connection open across fork() (see connection._close_sqlite_before_fork). The parent's was
        # closed as it forked, and the parent opens another on its next use.
        assert seen == child.pid
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            connection.execute("select 1")
        assert db.connection() is not connection and db.execute_sql("select count(*) from task").fetchone() == (0,)


def _recorded(path: Path) -> list[str]:
    import sqlite3

    if not path.exists():
        return []
    with sqlite3.connect(path) as connection:
        return [name for (name,) in connection.execute("select task_name from task")]


@pytest.mark.slow
def test_command_line_beats_environment_beats_luigi_cfg(tmp_path):
    """``--astra-database-url``, then $ASTRA_DATABASE_URL, then ``[astra] database_url``: through the real CLI."""
    places = {name: tmp_path / f"{name}.db" for name in ("cfg", "env", "cmdline")}
    (tmp_path / "luigi.cfg").write_text(f"[astra]\ndatabase_url = sqlite:///{places['cfg']}\n")
    task = ["--module", "workflows", "EstimateSNR", "--spectrum-path", SPECTRUM, "--local-scheduler"]
    runs = [
        ("cfg", [], {}),
        ("env", [], {"ASTRA_DATABASE_URL": f"sqlite:///{places['env']}"}),
        ("cmdline", ["--astra-database-url", f"sqlite:///{places['cmdline']}"],
         {"ASTRA_DATABASE_URL": f"sqlite:///{places['env']}"}),
    ]  # fmt: skip
    for expected, extra, env in runs:
        for path in places.values():
            path.unlink(missing_ok=True)
        result = luigi_without_database_env(*task, *extra, tmp_path=tmp_path, **env)
        assert "1 ran successfully" in result.stdout, result.stdout
        where = {name: _recorded(path) for name, path in places.items()}
        assert where == {name: (["EstimateSNR"] if name == expected else []) for name in places}, (expected, where)


def _profile_run(tmp_path: Path, profile: str, dbname: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    (tmp_path / "sdssdb.yml").write_text(profile)
    (tmp_path / "luigi.cfg").write_text(f"[astra]\nprofile = astratest\ndbname = {dbname}\n")
    started = time.monotonic()
    result = luigi_without_database_env(
        "--module", "workflows", "EstimateSNR", "--local-scheduler", tmp_path=tmp_path,
        SDSSDB_CONFIG_PATH=str(tmp_path / "sdssdb.yml"), **env,
    )  # fmt: skip
    return result, time.monotonic() - started


def _with_pgpass(tmp_path: Path, line: str) -> None:
    (tmp_path / ".pgpass").write_text(line + "\n")
    (tmp_path / ".pgpass").chmod(0o600)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("user", "dbname", "reason"),
    [(POSTGRES_USER, "astra_no_such_database", 'database "astra_no_such_database" does not exist'),
     ("astra_no_such_role", "postgres", 'role "astra_no_such_role" does not exist')],
)  # fmt: skip
def test_profile_that_cannot_connect_says_the_server_reason(postgres_server, tmp_path, user, dbname, reason):
    _with_pgpass(tmp_path, f"{POSTGRES_HOST}:{POSTGRES_PORT}:*:{user}:pr0file-s3cret")
    profile = f"astratest:\n  host: {POSTGRES_HOST}\n  port: {POSTGRES_PORT}\n  user: {user}\n"
    result, seconds = _profile_run(tmp_path, profile, dbname)
    line = luigi_error_line(result)
    assert reason in line and "sdssdb profile 'astratest'" in line, line
    assert "pr0file-s3cret" not in result.stdout
    assert seconds < 30, seconds


@pytest.mark.slow
def test_profile_to_a_silent_server_stops_within_10_seconds(tmp_path):
    """A port that takes connections but never answers (a hung server, a firewall): the 5 s connect timeout."""
    # The same command against a port that refuses at once: how long luigi itself takes on this machine now.
    refused = f"astratest:\n  host: 127.0.0.1\n  port: {free_port()}\n  user: postgres\n"
    result, start_up = _profile_run(tmp_path, refused, "sdss5db")
    assert "Connection refused" in luigi_error_line(result)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # never accept(): the kernel completes the handshake, nobody ever answers
        port = silent.getsockname()[1]
        profile = f"astratest:\n  host: 127.0.0.1\n  port: {port}\n  user: postgres\n"
        result, seconds = _profile_run(tmp_path, profile, "sdss5db")
    line = luigi_error_line(result)
    assert f"127.0.0.1:{port}" in line and "timeout" in line, line
    # Waiting for the silent server adds the 5 s connect timeout; before, it hung until killed. The margin is wide:
    # on a loaded machine the same command took 15.6 s against 3.3 s for the refused port.
    assert seconds - start_up < 30, (seconds, start_up)


#: A bad value of each kind of ``[astra]`` setting, and what the line says of it.
BAD_SETTINGS = {
    "read_helpers": ("abc", "is not a whole number; correct it, or leave it out for the default (2)"),
    "sqlite_lock_timeout": ("x", "is not a number; correct it, or leave it out for the default (60.0)"),
    "pooler": (
        "bogus",
        "is not one of auto, none, session, transaction; correct it, or leave it out for the default (auto)",
    ),
    "synchronous_commit": ("maybe", "is not true or false; correct it, or leave it out for the default (false)"),
}


@pytest.mark.slow
def test_a_bad_astra_setting_is_one_line_naming_it(sqlite_url, tmp_path, luigi_config, capsys):
    from astra.database import Task

    config = tmp_path / "luigi.cfg"
    config.write_text("[astra]\nlease = abc\n")
    said = f"astra: [astra] lease = 'abc' in {config} is not a number; correct it, or leave it out for the default"
    env = {"ASTRA_DATABASE_URL": sqlite_url, "LUIGI_CONFIG_PATH": str(config)}
    assert one_line_error(astra("tasks", "list", env=env), 1).startswith(said)
    task = ["--module", "workflows", "EstimateSNR", "--spectrum-path", SPECTRUM, "--local-scheduler"]
    ran = run_luigi(*task, env=env, cwd=tmp_path)
    assert ran.returncode == 1 and luigi_error_line(ran).startswith(said), ran.stdout
    config.write_text("")
    ran = run_luigi(*task, "--astra-lease", "abc", env=env, cwd=tmp_path)
    assert ran.returncode == 1 and luigi_error_line(ran).startswith("astra: --astra-lease 'abc' is not a number;")
    assert Task.select().count() == 0

    each_refused_in_this_process(BAD_SETTINGS, luigi_config, capsys)


def each_refused_in_this_process(settings: dict[str, tuple[str, str]], luigi_config, capsys) -> None:
    """Each ``[astra]`` setting of ``settings`` (name: its value, what the line says of it), alone in luigi's
    configuration, stops `astra db status` run in this process (the same main() as the command's) in that line."""
    for name, (value, problem) in settings.items():
        luigi_config.remove_section("astra")
        luigi_config.set("astra", name, value)
        reset()
        status = main(capsys, "db", "status")
        assert status.stderr == f"astra: [astra] {name} = {value!r} in luigi's configuration {problem}\n"
        assert status.returncode == 1


#: An ``[astra]`` number that parses but cannot be used, and what the line says it must be.
OUT_OF_RANGE = {
    "lease": ("0", "must be more than 0 (seconds), and finite; correct it, or leave it out for the default (120.0)"),
    "sqlite_lock_timeout": ("nan", "must be 0 or more; correct it, or leave it out for the default (60.0)"),
    "reconnect_seconds": ("-1", "must be 0 or more; correct it, or leave it out for the default (60.0)"),
    "batch_processes": ("-2", "must be 0 or more; correct it, or leave it out for the default (1)"),
}


def test_an_astra_number_out_of_range_is_one_line_naming_it(sqlite_url, tmp_path, luigi_config, capsys):
    """lease = 0 (or inf, or nan) failed each task with a traceback; sqlite_lock_timeout = nan failed luigi's check of
    every task with one (a ValueError computing SQLite's busy timeout), exit code 35 where a bad setting says 1."""
    from astra.database import Task

    task = ["--module", "workflows", "EstimateSNR", "--spectrum-path", SPECTRUM, "--local-scheduler"]
    for option in (["--astra-lease", "inf"], ["--astra-sqlite-lock-timeout", "nan"]):
        ran = run_luigi(*task, *option, env={"ASTRA_DATABASE_URL": sqlite_url}, cwd=tmp_path)
        said = f"astra: {option[0]} {option[1]!r} must be "
        assert ran.returncode == 1 and luigi_error_line(ran).startswith(said), ran.stdout
    assert Task.select().count() == 0
    each_refused_in_this_process(OUT_OF_RANGE, luigi_config, capsys)
    luigi_config.remove_section("astra")
    luigi_config.set("astra", "sqlite_lock_timeout", "inf")  # no limit: SQLite's longest wait
    reset()
    assert main(capsys, "db", "status").returncode == 0


def test_a_name_in_astra_that_is_no_setting_stops_without_showing_its_value(sqlite_url, tmp_path, luigi_config, capsys):
    """A forgotten '=' (configparser splits at the ':' of the URL): luigi warned, printing the password, and went
    on with the default database; so did a misspelt name."""
    config = tmp_path / "luigi.cfg"
    config.write_text("[astra]\ndatabase_url postgresql://me:s3cret@127.0.0.1:5432/x\n")
    task = ["--module", "workflows", "EstimateSNR", "--spectrum-path", SPECTRUM, "--local-scheduler"]
    ran = run_luigi(*task, env={"ASTRA_DATABASE_URL": sqlite_url, "LUIGI_CONFIG_PATH": str(config)}, cwd=tmp_path)
    said = f"astra: [astra] in {config} has 'database_url postgresql', which is no astra setting (its '=' missing"
    assert ran.returncode == 1 and luigi_error_line(ran).startswith(said), ran.stdout
    assert "s3cret" not in ran.stdout
    luigi_config.set("astra", "databse_url", "sqlite:////elsewhere.db")  # in this process
    reset()
    status = main(capsys, "db", "status")
    assert status.returncode == 1 and status.stderr.startswith(
        "astra: [astra] in luigi's configuration has 'databse_url'"
    )


def test_a_percent_encoded_password_in_luigi_cfg_says_to_double_the_percent(tmp_path):
    """README says to percent-encode a password (p%40ss); luigi.cfg reads '%' as the start of "%(name)s", and the line
    said only "'%' must be followed by '%' or '(', found: ...", with the rest of the password masked."""
    config = tmp_path / "luigi.cfg"
    config.write_text("[astra]\ndatabase_url = postgresql://me:p%40ss@127.0.0.1:5432/astra\n")
    said = one_line_error(astra("db", "status", env={"ASTRA_DATABASE_URL": "", "LUIGI_CONFIG_PATH": str(config)}), 1)
    assert said == (
        f"astra: [astra] database_url in {config} cannot be read: a '%' must be written '%%' in luigi.cfg (a "
        "percent-encoded password: p%%40ss for p@ss)"
    )


def test_a_name_that_is_no_setting_in_a_toml_configuration_stops_too(sqlite_url, monkeypatch, capsys):
    """luigi's TOML configuration (LUIGI_CONFIG_PARSER=toml) warns of no unknown name at all: a misspelt
    ``databse_url`` recorded into the default database, silently; astra let it be, as if luigi checked it."""
    from luigi.configuration.toml_parser import LuigiTomlParser

    from astra.config import slurm_settings

    toml = LuigiTomlParser()  # as luigi makes it from luigi.toml (the toml package need not be installed here)
    toml.data = {"astra": {"databse_url": "sqlite:////elsewhere.db", "lease": 30}, "slurm": {"partiton": "gpu"}}
    monkeypatch.setattr(luigi.configuration, "get_config", lambda *args: toml)
    reset()
    status = main(capsys, "db", "status")
    assert status.returncode == 1
    assert status.stderr.startswith("astra: [astra] in luigi's configuration has 'databse_url', which is no astra")
    del toml.data["astra"]["databse_url"]
    reset()
    assert main(capsys, "db", "status").returncode == 0
    with pytest.raises(SystemExit, match="has 'partiton', which is no astra setting"):
        slurm_settings()


def test_a_bad_slurm_setting_fails_the_task_in_one_line(sqlite_url, tmp_path):
    """Read as the task runs (under the SLURM executor, before anything is submitted); before: a traceback."""
    config = tmp_path / "luigi.cfg"
    config.write_text("[slurm]\njobs = abc\n")
    task = ["--module", "workflows", "EstimateSNR", "--spectrum-path", SPECTRUM, "--local-scheduler"]
    env = {"ASTRA_DATABASE_URL": sqlite_url, "LUIGI_CONFIG_PATH": str(config)}
    ran = run_luigi(*task, "--astra-executor", "slurm", env=env, cwd=tmp_path)
    assert ran.returncode == 30 and "Traceback" not in ran.stdout, ran.stdout
    assert f"astra: [slurm] jobs = 'abc' in {config} is not a whole number; correct it" in ran.stdout


@pytest.mark.slow
def test_a_luigi_cfg_that_does_not_parse_is_one_line_naming_it(sqlite_url, tmp_path):
    config = tmp_path / "luigi.cfg"
    env = {"ASTRA_DATABASE_URL": sqlite_url, "LUIGI_CONFIG_PATH": str(config)}
    for text, line in [("[astra\nlease = 1\n", 1), ("[astra]\nlease 120\n", 2)]:
        config.write_text(text)
        said = one_line_error(astra("db", "status", env=env), 1)
        assert said.startswith(f"astra: {config}, line {line} is neither a [section] header nor a name = value"), said


@pytest.mark.slow
def test_an_sdssdb_file_astra_cannot_use_is_one_line_naming_it(tmp_path):
    (tmp_path / "luigi.cfg").write_text("[astra]\nprofile = astratest\n")
    profiles = tmp_path / "sdssdb.yml"
    cases = [
        ("astratest: [\n", str(profiles), f"sdssdb cannot read {profiles}, line 2: expected the node content"),
        ("astratest:\n  host: h\n  port: abc\n", str(profiles), f"'astratest' in {profiles} has port 'abc', which is"),
        ("", str(tmp_path / "missing.yml"), f"sdssdb cannot read {tmp_path / 'missing.yml'}: No such file"),
    ]
    for text, path, said in cases:
        profiles.write_text(text)
        env = {"ASTRA_DATABASE_URL": "", "HOME": str(tmp_path), "SDSSDB_CONFIG_PATH": path}
        env["LUIGI_CONFIG_PATH"] = str(tmp_path / "luigi.cfg")
        assert said in one_line_error(astra("db", "status", env=env), 1)
    ran = luigi_without_database_env(
        "--module", "workflows", "EstimateSNR", "--local-scheduler", tmp_path=tmp_path, **env
    )
    assert ran.returncode == 1 and said in luigi_error_line(ran), ran.stdout


@pytest.mark.slow
def test_a_postgresql_url_libpq_cannot_use_is_one_line_naming_it(tmp_path):
    server = f"postgresql://{POSTGRES_USER}:s3cret@{POSTGRES_HOST}"
    cases = [
        (server, "it names no database: expected postgresql://user@host:port/dbname"),
        ("postgresql://", "it names no database: expected postgresql://user@host:port/dbname"),
        (f"{server}/postgres?bogusopt=1", f"{server.replace('s3cret', '***')}/postgres?bogusopt=1: invalid dsn"),
        # Known options with values libpq cannot use; before: "Check that PostgreSQL is running".
        (f"{server}/postgres?sslmode=bogus", 'invalid sslmode value: "bogus"'),
        (f"{server}/postgres?connect_timeout=soon", 'invalid integer value "soon" for connection option'),
    ]
    for url, said in cases:
        line = one_line_error(astra("db", "status", env={"ASTRA_DATABASE_URL": url}), 1)
        assert line.startswith("astra: cannot use database URL ") and said in line and "s3cret" not in line, line
    for url, said in [cases[0], cases[2]]:
        task = ["--module", "workflows", "EstimateSNR", "--local-scheduler"]
        ran = luigi_without_database_env(*task, tmp_path=tmp_path, ASTRA_DATABASE_URL=url)
        assert ran.returncode == 1 and said in luigi_error_line(ran) and "s3cret" not in ran.stdout, ran.stdout


@pytest.mark.slow
def test_a_reader_does_not_make_the_sqlite_file_it_was_pointed_at(tmp_path):
    path = tmp_path / "typo" / "astra.db"
    env = {"ASTRA_DATABASE_URL": f"sqlite:///{path}"}
    readers = [("tasks", "list"), ("tasks", "show", "1"), ("results", "EstimateSNR"), ("db", "status")]
    for read in astra_many(*readers, env=env):
        said = one_line_error(read, 1)
        assert said.startswith(f"astra: SQLite database {path} does not exist, so nothing is recorded there"), said
    assert not path.parent.exists()
    assert astra("db", "init", env=env).returncode == 0 and path.exists()  # writers still make it


def test_a_reader_makes_nothing_in_an_sqlite_file_without_astras_tables(tmp_path):
    """A catalogue's file (or an empty one) given by mistake: `astra tasks list` made astra's tables in it and
    turned it to WAL, where PostgreSQL says the database has no astra schema."""
    other, empty = catalogue(tmp_path / "catalogue.db"), tmp_path / "empty.db"
    empty.touch()
    for path in (other, empty):
        env = {"ASTRA_DATABASE_URL": f"sqlite:///{path}"}
        before = path.read_bytes()
        for read in astra_many(("tasks", "list"), ("results", "EstimateSNR", "--module", "workflows"), env=env):
            said = one_line_error(read, 1)
            assert said.startswith(f"astra: sqlite:///{path} has no astra schema, so nothing is recorded there"), said
        assert path.read_bytes() == before and not Path(f"{path}-wal").exists()


@pytest.mark.parametrize("name", [":memory:", "file::memory:?cache=shared"])
def test_an_in_memory_sqlite_url_is_one_line_and_makes_no_file(tmp_path, name):
    # Before: a file named ':memory:' in the directory the command ran in, which the next run found done.
    url = f"sqlite:///{name}"
    for command in (["db", "init"], ["db", "status"], ["tasks", "list"]):
        line = one_line_error(astra(*command, env={"ASTRA_DATABASE_URL": url}), 1)
        assert line.startswith(f"astra: {url} is not a file: ") and "sqlite:///astra.db" in line, line
    ran = luigi_without_database_env(
        "--module", "workflows", "EstimateSNR", "--local-scheduler", tmp_path=tmp_path, ASTRA_DATABASE_URL=url
    )
    assert ran.returncode == 1 and f"{url} is not a file" in luigi_error_line(ran), ran.stdout
    assert not [path for path in (*REPO.iterdir(), *tmp_path.iterdir()) if "memory" in path.name]
