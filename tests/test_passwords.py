"""No part of a password is ever shown, whatever the URL looks like; a percent-encoded one reaches the server decoded.

The shared test server trusts every connection, so it cannot tell a right password from a wrong one. These tests
start a private PostgreSQL server (``initdb`` as the ``postgres`` user, scram-sha-256 for every connection) on a
free port, whose only role ``astra`` has a password with every URL separator in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest

from astra.database import mask_password
from tests.helpers import astra, free_port, run_luigi

#: Distinct words, so that a test can look for every piece of the password in the output.
PIECES = ["alpha1", "bravo2", "charlie3", "delta4", "echo5"]
PASSWORD = "alpha1/bravo2#charlie3?delta4@echo5:"
BIN = Path("/usr/lib/postgresql/15/bin")
ESTIMATE = ["--module", "workflows", "EstimateSNR", "--local-scheduler", "--no-lock"]


@pytest.fixture(scope="module")
def password_server():
    """``host:port`` of a private PostgreSQL server where role ``astra`` (password PASSWORD) owns db ``astra``."""
    initdb = shutil.which("initdb") or str(BIN / "initdb")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    if not os.path.exists(initdb):
        pytest.skip("initdb (PostgreSQL server binaries) not found")
    # initdb refuses to run as root: run the server as the postgres user then.
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if run_as and not shutil.which("runuser"):
        pytest.skip("running as root without runuser: cannot start a private PostgreSQL server")
    directory = tempfile.mkdtemp(prefix="astra-pw-")
    if run_as:
        shutil.chown(directory, "postgres")
    password_file = Path(directory, "password")
    password_file.write_text(PASSWORD + "\n")
    if run_as:
        shutil.chown(password_file, "postgres")
    data, port = str(Path(directory, "data")), free_port()
    try:
        subprocess.run(
            [*run_as, initdb, "-D", data, "-U", "astra", "-A", "scram-sha-256", f"--pwfile={password_file}", "-N"],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(Path(directory, "log"))
        subprocess.run(
            [*run_as, pg_ctl, "-D", data, "-o", options, "-l", log, "-w", "start"], check=True, capture_output=True
        )
        subprocess.run(
            [
                str(Path(initdb).with_name("psql")) if Path(initdb).with_name("psql").exists() else "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "astra",
                "-d",
                "postgres",
                "-c",
                "create database astra",
            ],
            env={**os.environ, "PGPASSWORD": PASSWORD},
            check=True,
            capture_output=True,
        )
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


def _assert_no_password(text: str) -> None:
    for piece in PIECES:
        assert piece not in text, text


@pytest.mark.slow
def test_a_percent_encoded_password_reaches_the_server_decoded(password_server, tmp_path):
    url = f"postgresql://astra:{quote(PASSWORD, safe='')}@{password_server}/astra"
    env = {"ASTRA_DATABASE_URL": url, "HOME": str(tmp_path)}
    assert astra("db", "init", "--module", "workflows", env=env).returncode == 0  # with the output table of EstimateSNR
    result = run_luigi(*ESTIMATE, env=env)
    assert "1 ran successfully" in result.stdout, result.stdout
    status = astra("db", "status", env=env)
    assert status.returncode == 0 and "done" in status.stdout, status.stderr
    _assert_no_password(result.stdout + status.stdout + status.stderr)

    # As written (not decoded) the password is wrong: the server itself tells them apart.
    wrong = astra("db", "status", env={"ASTRA_DATABASE_URL": url.replace("%40", "%2540")})
    assert wrong.returncode == 1 and "password authentication failed" in wrong.stderr, wrong.stderr


@pytest.mark.slow
def test_a_password_that_is_not_percent_encoded_still_works_and_is_never_shown(password_server, tmp_path):
    url = f"postgresql://astra:{PASSWORD}@{password_server}/astra"
    env = {"ASTRA_DATABASE_URL": url, "HOME": str(tmp_path)}
    assert astra("db", "init", "--module", "workflows", env=env).returncode == 0  # with the output table of EstimateSNR
    result = run_luigi(*ESTIMATE, env=env)
    # Connected with the right password: it ran the task, or found it done by the test before.
    assert result.returncode == 0, result.stdout
    assert "1 ran successfully" in result.stdout or "1 complete ones were encountered" in result.stdout, result.stdout
    _assert_no_password(result.stdout)


def _wrong_urls(server: str) -> dict[str, str]:
    port = server.rpartition(":")[2]
    return {
        "wrong password": f"postgresql://astra:{PASSWORD}x@{server}/astra",
        "unknown role": f"postgresql://nobody:{PASSWORD}@{server}/astra",
        "bad port": f"postgresql://astra:{PASSWORD}@127.0.0.1:{port}x/astra",
        "nothing listening": f"postgresql://astra:{PASSWORD}@127.0.0.1:{free_port()}/astra",
        "no host": f"postgresql://astra:{PASSWORD}@/astra",
        "password echoed by the driver": f"postgresql://astra:alpha1@{server}/astra?connect_timeout=alpha1",
        "password in the query": f"postgresql://astra@{server}/astra?password={PASSWORD}&sslmode=disable",
        "not a url": f"astra:{PASSWORD}@{server}/astra",
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", list(_wrong_urls("h:1")))
def test_no_part_of_a_password_is_shown_when_the_database_cannot_be_used(password_server, tmp_path, case):
    url = _wrong_urls(password_server)[case]
    for env, args in [
        ({"ASTRA_DATABASE_URL": url}, ESTIMATE),
        ({"ASTRA_DATABASE_URL": ""}, [*ESTIMATE, "--astra-database-url", url]),
    ]:
        env["HOME"] = str(tmp_path)
        result = run_luigi(*args, env=env, timeout=120)
        assert result.returncode != 0, result.stdout
        assert "Traceback" not in result.stdout
        assert len([line for line in result.stdout.splitlines() if line.startswith("astra: ")]) == 1, result.stdout
        _assert_no_password(result.stdout)
    status = astra("db", "status", env={"ASTRA_DATABASE_URL": url, "HOME": str(tmp_path)})
    assert status.returncode == 1 and status.stderr.startswith("astra: "), status.stderr
    assert "Traceback" not in status.stderr and len(status.stderr.strip().splitlines()) == 1, status.stderr
    _assert_no_password(status.stdout + status.stderr)


def test_mask_password_hides_every_piece_of_any_password():
    for url in _wrong_urls("db.example.org:5432").values():
        _assert_no_password(mask_password(url))
    assert mask_password(f"postgresql://astra:{PASSWORD}@db:5432/sdss5db") == "postgresql://astra:***@db:5432/sdss5db"


@pytest.mark.slow
def test_a_short_password_does_not_garble_the_rest_of_the_url():
    assert mask_password("postgresql://u:p@host.example/postgres") == "postgresql://u:***@host.example/postgres"
