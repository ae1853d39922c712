"""Start-up: ``import astra``, ``astra --version``, ``astra tasks show`` and a luigi run that finds its task done
import nothing heavy (numpy, astropy, pandas, pyarrow, matplotlib, psycopg 3), on SQLite and PostgreSQL, and on
SQLite no psycopg2.

Each check runs the real entry point in a fresh Python and reads ``sys.modules`` as that process exits.
bench/startup.py measures the times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO, astra, subprocess_env

#: What no light command may import: each costs 0.1-0.3 s of start-up (psycopg is psycopg 3; astra uses psycopg2).
HEAVY = ("numpy", "astropy", "pandas", "pyarrow", "matplotlib", "psycopg")
#: What only the commands and tasks that use them import. (astra.slurm comes with astra.BaseTask: it holds the
#: [slurm] section, which luigi's command line must know, --slurm-time 30, before any task runs.)
ON_DEMAND = ("astra.batch", "astra.export", "astra.results_table")
#: ``import astra`` and ``astra --version`` need no task machinery and no database either (luigi alone is ~0.15 s).
NOT_AT_ALL = (
    "luigi",
    "peewee",
    "playhouse",
    "psycopg2",
    "sqlite3",
    "astra.tasks",
    "astra.database.connection",
    "astra.slurm",
)

#: Runs one entry point (``import astra``, the astra command or the luigi command), then writes the names of the
#: modules the process imported to argv[1].
PROBE = """
import atexit, json, sys
out, kind, args = sys.argv[1], sys.argv[2], sys.argv[3:]
atexit.register(lambda: json.dump(sorted(sys.modules), open(out, "w")))
if kind == "import":
    import astra
elif kind == "astra":
    from astra.cli import main
    main(args)
else:
    from luigi.cmdline import luigi_run
    luigi_run(args)
"""


def imported(tmp_path: Path, kind: str, *args: str) -> tuple[set[str], subprocess.CompletedProcess]:
    """The modules a fresh Python imported to run ``kind`` (import, astra or luigi) with ``args``, and its output."""
    out = tmp_path / "modules.json"
    out.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), kind, *args],
        env=subprocess_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.exists(), (done.returncode, done.stdout, done.stderr)
    return set(json.loads(out.read_text())), done


def among(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Those of ``modules`` that are one of ``names`` or inside one of them."""
    return sorted(m for m in modules if any(m == name or m.startswith(name + ".") for name in names))


def test_import_astra_imports_nothing_heavy(tmp_path):
    modules, _ = imported(tmp_path, "import")
    assert among(modules, HEAVY + ON_DEMAND + NOT_AT_ALL) == []


def test_astra_version_imports_nothing_heavy(tmp_path):
    modules, done = imported(tmp_path, "astra", "--version")
    assert done.returncode == 0 and "astra, version" in done.stdout, done
    assert among(modules, HEAVY + ON_DEMAND + NOT_AT_ALL) == []


def test_a_done_task_and_a_record_import_nothing_heavy(database_url, tmp_path):
    task = ["--module", "tests.startup_tasks", "Light", "--local-scheduler", "--slurm-time", "30"]
    modules, done = imported(tmp_path, "luigi", *task)
    assert "1 ran successfully" in done.stderr + done.stdout, done
    # The driver of the other backend is not imported either (psycopg2 costs ~0.01 s; see astra.database.drivers).
    other_driver = ("psycopg2",) if database_url.startswith("sqlite") else ()
    modules, done = imported(tmp_path, "luigi", *task)
    assert "1 complete ones were encountered" in done.stderr + done.stdout, done
    assert among(modules, HEAVY + ON_DEMAND + other_driver) == []

    pk = json.loads(astra("tasks", "list", "--name", "Light", "--json").stdout)[0]["pk"]
    for command in (["tasks", "show", str(pk)], ["db", "status"]):
        modules, done = imported(tmp_path, "astra", *command)
        assert done.returncode == 0, done
        assert among(modules, HEAVY + ON_DEMAND + other_driver) == [], command


def test_a_command_imports_what_it_needs(sqlite_url, tmp_path):
    """The lazy commands are still there: `astra results` imports the export machinery, `tasks why` the batch."""
    modules, done = imported(tmp_path, "astra", "results", "Light", "--format", "csv")
    assert done.returncode == 1 and "no task is named 'Light'" in done.stderr, done
    assert "astra.export" in modules
    modules, done = imported(tmp_path, "astra", "tasks", "why", "--module", "tests.startup_tasks", "Light")
    assert done.returncode == 1 and "is not recorded" in done.stdout, done
    assert "astra.batch" in modules


def test_peewee_gets_psycopg2_and_psycopg_still_imports(tmp_path):
    """psycopg 3 is hidden from peewee's import only: imported later, by anyone, it works as always; imported
    before astra, peewee keeps it. psycopg2 is given to peewee when it makes its first PostgreSQL database."""
    script = (
        "import astra, peewee, playhouse.migrate, sys; print(peewee.psycopg is None, 'psycopg' in sys.modules); "
        "import psycopg; print(psycopg.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True)
    assert done.stdout.split() == ["True", "False", "psycopg"], done
    later = (
        "import astra, peewee, sys; print(peewee.psycopg2 is None, 'psycopg2' in sys.modules); "
        "db = peewee.PostgresqlDatabase('x'); import psycopg2; "
        "print(type(db._adapter).__name__, peewee.psycopg2 is psycopg2, db._adapter.json_type is psycopg2.extras.Json)"
    )
    done = subprocess.run([sys.executable, "-c", later], env=subprocess_env(), capture_output=True, text=True)
    assert done.stdout.split() == ["True", "False", "Psycopg2Adapter", "True", "True"], done
    before = "import psycopg, astra, peewee; print(peewee.psycopg is psycopg)"
    done = subprocess.run([sys.executable, "-c", before], env=subprocess_env(), capture_output=True, text=True)
    assert done.stdout.split() == ["True"], done


#: Prints how many objects the garbage collector holds frozen as the process ends, after ``import astra.tasks`` or
#: a luigi command.
FROZEN = """
import atexit, gc, sys
atexit.register(lambda: print("frozen", gc.get_freeze_count()))
if sys.argv[1] == "import":
    import astra.tasks
else:  # as the luigi command, whose name astra goes by
    from luigi.cmdline import luigi_run
    sys.argv[0] = "luigi"
    luigi_run(sys.argv[2:])
"""


def test_only_the_luigi_command_freezes_its_imports(sqlite_url):
    """In the luigi command astra puts what was imported out of the garbage collector's sight (a full collection
    of it would cost a run that finds its work done ~0.015 s); a Python that imports astra itself (a notebook,
    pytest) keeps its collector as it was, so garbage it made before is still collected."""

    def frozen(*args: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", FROZEN, *args], env=subprocess_env(), cwd=REPO, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done
        return int(done.stdout.split("frozen")[-1])

    assert frozen("luigi", "--module", "tests.startup_tasks", "Light", "--local-scheduler") > 10_000
    assert frozen("import") == 0
