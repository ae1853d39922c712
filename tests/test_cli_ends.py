"""How an ``astra`` command ends when its reader goes away, on Ctrl-C, and given a byte that is not Unicode."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import luigi
import pytest

from astra.database import Task
from tests.batch_tasks import MeasureStars
from tests.helpers import ASTRA, HANG, REPO, main, one_line_error, subprocess_env, wait_for


def _reading_one_line(*args: str) -> tuple[int, str]:
    """Run ``astra ARGS``, read one line of its output, go away; its exit code and stderr."""
    command = subprocess.Popen(
        [str(ASTRA), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(), cwd=REPO
    )
    command.stdout.readline()
    command.stdout.close()  # as `| head -1` does
    stderr = command.stderr.read().decode()
    return command.wait(timeout=HANG), stderr


def _read_by_nobody(*args: str) -> tuple[int, str]:
    """Run ``astra ARGS`` with its output going to a pipe whose reader is already gone; its exit code and stderr.
    (A command whose output fits in the pipe's buffer meets a reader that reads one line and goes away only if it
    writes after the reader has gone, which is a race.)"""
    reader, writer = os.pipe()
    os.close(reader)
    with os.fdopen(writer, "wb") as stdout:
        command = subprocess.Popen(
            [str(ASTRA), *args], stdout=stdout, stderr=subprocess.PIPE, env=subprocess_env(), cwd=REPO
        )
    stderr = command.stderr.read().decode()
    return command.wait(timeout=HANG), stderr


@pytest.mark.parametrize("backend", ["postgresql"])  # the reader threads of a streamed export are PostgreSQL's
def test_a_reader_that_goes_away_ends_astra_with_141_and_nothing_said(database_url):
    """As a program that SIGPIPE ends (`set -o pipefail` sees it); before: exit 1 from some commands, 0 or a
    traceback from others."""
    assert luigi.build([MeasureStars(stars=2000)], local_scheduler=True, log_level="WARNING")
    # Far more than a pipe holds, some of it read. A table or ECSV is written at once: Python's buffered stdout
    # dropped what the pipe did not take when its reader left, and said nothing (exit 0).
    for fmt in ("json", "table", "ecsv"):
        assert _reading_one_line("results", "MeasureStar", "--format", fmt) == (141, ""), fmt
    written_to_stdout = [
        ("results", "MeasureStar", "--format", fmt, "-o", to) for fmt in ("csv", "fits") for to in ("-", "/dev/stdout")
    ]  # before: "cannot write", a traceback, or 0 and a file "-"
    for args in [("results", "MeasureStar", "--json"), ("tasks", "forget", "--all", "--dry-run"), *written_to_stdout]:
        code, stderr = _read_by_nobody(*args)
        assert (code, stderr) == (141, ""), args


@pytest.mark.parametrize("backend", ["sqlite"])  # where the file goes does not depend on the database
def test_dash_for_the_output_file_is_stdout(database_url, tmp_path):
    """As it is for most Unix tools, binary formats too; before: a file named '-' in the current folder."""
    assert luigi.build([MeasureStars(stars=3)], local_scheduler=True, log_level="WARNING")
    env = subprocess_env({"PYTHONPATH": str(REPO)})
    here = tmp_path / "here"
    here.mkdir()
    for fmt, start in [("fits", b"SIMPLE  ="), ("csv", b"task_pk,")]:
        ran = subprocess.run(
            [str(ASTRA), "results", "MeasureStar", "--format", fmt, "-o", "-"],
            capture_output=True,
            env=env,
            cwd=here,
        )
        assert ran.returncode == 0 and ran.stdout.startswith(start), (fmt, ran.stderr)
    assert list(here.iterdir()) == []


@pytest.mark.parametrize("backend", ["sqlite"])  # where the output goes does not depend on the database
def test_stdout_on_a_full_disk_is_one_line(database_url):
    """`astra ... > file` on a full disk (here /dev/full); before: an OSError traceback from every command."""
    assert luigi.build([MeasureStars(stars=2)], local_scheduler=True, log_level="WARNING")
    cases = [
        ("tasks", "list"),
        ("tasks", "list", "--json"),
        ("tasks", "show", "1"),
        ("db", "status"),
        ("db", "sql"),
        ("results", "MeasureStar"),
        ("results", "MeasureStar", "--format", "csv"),
        ("--help",),
    ]
    for args in cases:
        with open("/dev/full", "w") as full:
            ran = subprocess.run(
                [str(ASTRA), *args], stdout=full, stderr=subprocess.PIPE, text=True, env=subprocess_env(), cwd=REPO
            )
        assert ran.returncode == 1 and "Traceback" not in ran.stderr, (args, ran.stderr)
        assert ran.stderr.strip() == (
            "astra: cannot write to stdout: No space left on device; what it holds is incomplete"
        ), args


@pytest.mark.parametrize("backend", ["sqlite"])
def test_results_are_not_written_over_the_database(database_url, tmp_path, capsys):
    """`-o` naming the SQLite file the results come from (a slip of the shell's completion); before: the file was
    replaced by the export, and every record lost."""
    assert luigi.build([MeasureStars(stars=2)], local_scheduler=True, log_level="WARNING")
    path = Path(database_url[len("sqlite:///") :])
    before = path.read_bytes()
    (tmp_path / "link.db").symlink_to(path)
    for given in [str(path), str(tmp_path / "link.db"), f"{path}-wal"]:
        for args in [("--format", "csv"), ("--format", "fits"), ("--plot", "star")]:
            line = one_line_error(main(capsys, "results", "MeasureStar", *args, "-o", given), 1)
            assert line.startswith(f"astra: -o {given} is ") and "destroy its records" in line, line
    assert path.read_bytes() == before
    assert main(capsys, "tasks", "list").returncode == 0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_options_a_plot_does_not_use_are_refused(database_url, tmp_path, capsys):
    """Before: the figure was drawn and --format, --json or --columns left unused, without a word."""
    assert luigi.build([MeasureStars(stars=2)], local_scheduler=True, log_level="WARNING")
    figure = str(tmp_path / "p.png")
    for given, said in [
        (("--format", "csv"), "--format csv"),
        (("--json",), "--json"),
        (("--columns", "star"), "--columns"),
    ]:
        line = one_line_error(main(capsys, "results", "MeasureStar", "--plot", "star", *given, "-o", figure), 2)
        assert line.startswith(f"astra: --plot draws a figure of the columns it names; {said} has no place"), line
    assert not Path(figure).exists()


def test_ctrl_c_at_a_prompt_ends_with_130_and_forgets_nothing(database_url):
    assert luigi.build([MeasureStars(stars=2)], local_scheduler=True, log_level="WARNING")
    command = subprocess.Popen(
        [str(ASTRA), "tasks", "forget", "--name", "MeasureStar"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env({"PYTHONUNBUFFERED": "1"}),  # the question reaches the pipe as it is asked
        cwd=REPO,
        # A shell without job control starts what runs in the background with Ctrl-C ignored; a terminal does not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    asked = ""
    while "?" not in asked:  # the question (on stderr, as all that is said to the person)
        asked += os.read(command.stderr.fileno(), 4096).decode()
    # Then the answer is waited for. (Python notes a signal that comes before the read starts only at its next
    # step, so the read would wait on: a person's Ctrl-C comes later.)
    wait_for(lambda: Path(f"/proc/{command.pid}/wchan").read_text() == "anon_pipe_read", what="astra to read")
    command.send_signal(signal.SIGINT)
    assert command.wait(timeout=HANG) == 130
    assert command.stderr.read().decode().strip() == "astra: interrupted"
    command.stdin.close()
    assert Task.select().count() == 2


def test_an_undecodable_byte_in_a_name_is_one_line(database_url, capsys):
    """What Python makes of the byte 0xff on a command line; before: a UnicodeEncodeError traceback."""
    assert luigi.build([MeasureStars(stars=1)], local_scheduler=True, log_level="WARNING")
    for args in [("tasks", "show", "\udcff"), ("tasks", "list", "--name", "\udcff"), ("results", "\udcff")]:
        line = one_line_error(main(capsys, *args), 1)
        assert line.startswith("astra: '\\udcff' (at position 0 of '\\udcff') is not valid Unicode"), line


def test_results_says_which_columns_or_folder_it_cannot_use(database_url, tmp_path, capsys):
    """Before: `--columns ,` answered that no task matched, and a file in place of the folder was "missing"."""
    assert luigi.build([MeasureStars(stars=1)], local_scheduler=True, log_level="WARNING")
    line = one_line_error(main(capsys, "results", "MeasureStar", "--columns", ","), 2)
    assert line.startswith("astra: --columns ',' names no column"), line
    line = one_line_error(main(capsys, "results", "MeasureStar", "--plot", ",", "-o", str(tmp_path / "p.png")), 2)
    assert line.startswith("astra: --plot takes one column (histogram) or two"), line
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    written = main(capsys, "results", "MeasureStar", "--format", "csv", "-o", str(a_file / "x.csv"))
    assert one_line_error(written, 1) == f"astra: cannot write {a_file / 'x.csv'}: {a_file} is a file, not a folder"


def test_results_of_another_module_names_the_module_the_tasks_are_of(database_url, capsys):
    """--module also keeps only the tasks of that module; before, the line said only that none matched."""
    assert luigi.build([MeasureStars(stars=1)], local_scheduler=True, log_level="WARNING")
    line = one_line_error(main(capsys, "results", "MeasureStar", "--module", "workflows"), 1)
    assert line == (
        "astra: no done MeasureStar task of module workflows has results that match; MeasureStar tasks were "
        "recorded from tests.batch_tasks (--module tests.batch_tasks)"
    )


def test_a_value_pasted_by_mistake_is_cut_short_where_an_error_echoes_it(database_url, capsys):
    """A whole file given as a value (`astra tasks show "$(cat f)"`); before: every error line 100 kB long."""
    assert luigi.build([MeasureStars(stars=1)], local_scheduler=True, log_level="WARNING")
    pasted = "x" * 100_000
    cases = [  # (exit code: 1 nothing found, 2 a usage error), arguments
        (1, ("tasks", "show", pasted)),
        (1, ("tasks", "list", "--name", pasted)),
        (2, ("tasks", "list", "--where", pasted)),
        (2, ("tasks", "list", "--since", pasted)),
        (2, ("tasks", "why", pasted)),
        (2, ("results", "MeasureStar", "--columns", "," * 100_000)),
    ]
    for code, args in cases:
        said = one_line_error(main(capsys, *args), code)
        assert len(said) < 400 and "100,000 characters" in said, (args[:2], said[:200])
