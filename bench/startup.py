"""Start-up: whole processes of astra's commands and of luigi runs that find their work done, beside luigi's own.

    python bench/startup.py               # 5 runs of each, interleaved; prints the table for BENCHMARKS.md
    python bench/startup.py --repeat 9 --root-tasks 1000

Each figure is the wall time of a whole process, as a user meets it (interpreter start, imports, the work, exit),
started from this process with the console scripts beside this Python (not through a pyenv shim). Runs are
interleaved (one of each, then the next round), so a slow moment of a shared machine is spread over all of them;
the median is shown, of the wall time and of the CPU time the process (and its children) used: on a shared,
loaded machine the CPU time is the steadier measure of start-up and imports. The issue's absolute goals (0.2 s,
0.3 s) were set where `luigi --help` took 0.13 s, so they are also checked as ratios to this run's `luigi --help`.
astra runs against an SQLite file and a new PostgreSQL database on $ASTRA_TEST_POSTGRES
(default postgresql://postgres@127.0.0.1:5432), dropped at the end.

Every process reads compiled bytecode, as an installed package has it (pip compiles it at install; luigi's is in
site-packages): the processes share a bytecode cache in the work directory (PYTHONPYCACHEPREFIX), filled by one
round that is not timed. Without it, in an environment with PYTHONDONTWRITEBYTECODE=1 (as some containers set),
every process would compile astra's ~30 modules from source (~0.035 s of CPU) and luigi's not. ``--no-bytecode-cache``
times the processes with the environment as it is.

- ``python -c pass``, ``luigi --help``, ``import luigi``: the floor.
- ``import astra``, ``astra --version``, ``astra tasks show PK``, ``astra db status``.
- A luigi run of one done task (``AstraLeaf --i 0`` against ``LocalLeaf --i 0``), and of a done root with its own
  output over N done leaves (``AstraRoot --n N`` against ``LocalRoot --n N``), bench/startup_tasks.py.
- A SLURM job's Python up to ``run()``: the job entry's imports (the module ``python -c`` imports in the job), the
  task's module, ``load_task`` of its task and one query about it (the job's hand-over of the claim is one), as the
  job does before it runs the task.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's astra and bench, not an installed one

from bench.run import POSTGRES, admin, machine  # noqa: E402

BIN = Path(sys.executable).parent
PYTHON, LUIGI, ASTRA = sys.executable, str(BIN / "luigi"), str(BIN / "astra")
#: The task modules, copied to the work directory so that another checkout's astra (--before) can run them.
TASKS, LOCAL_TASKS = "startup_tasks", "startup_local_tasks"


def job_startup(checkout: Path) -> list[str]:
    """What a SLURM job's Python does before run(), on the database of $ASTRA_DATABASE_URL: the job entry's module
    (astra.slurm, or astra.executors.slurm_job once the executors land), the task's module, the task, one query."""
    entry = "astra.executors.slurm_job" if (checkout / "astra" / "executors").is_dir() else "astra.slurm"
    code = (
        f"import sys; import {entry}; import importlib; from luigi.task_register import load_task; "
        f"importlib.import_module({TASKS!r}); assert load_task({TASKS!r}, 'AstraLeaf', {{'i': '0'}}).complete()"
    )
    return [PYTHON, "-c", code]


def commands(root_tasks: int, checkouts: dict[str, Path]) -> dict[str, tuple[list[str], str | None, str]]:
    """What is timed: name -> (command line, astra backend or None, checkout whose astra runs it)."""
    found: dict[str, tuple[list[str], str | None, str]] = {
        "python -c pass": ([PYTHON, "-c", "pass"], None, ""),
        "luigi --help": ([LUIGI, "--help"], None, ""),
        "python -c 'import luigi'": ([PYTHON, "-c", "import luigi"], None, ""),
        "luigi: one done LocalTarget task": ([LUIGI, "--module", LOCAL_TASKS, "LocalLeaf", "--i", "0"], None, ""),
        f"luigi: done LocalTarget root over {root_tasks:,}": (
            [LUIGI, "--module", LOCAL_TASKS, "LocalRoot", "--n", str(root_tasks)],
            None,
            "",
        ),
    }
    for label, checkout in checkouts.items():
        suffix = f", {label}" if label else ""
        found[f"python -c 'import astra'{suffix}"] = ([PYTHON, "-c", "import astra"], None, label)
        found[f"python -c 'import astra; astra.BaseTask'{suffix}"] = (
            [PYTHON, "-c", "import astra; astra.BaseTask"],
            None,
            label,
        )
        found[f"astra --version{suffix}"] = ([ASTRA, "--version"], None, label)
        for backend in ("sqlite", "postgresql"):
            where = f" ({backend}{suffix})"
            found[f"astra tasks show PK{where}"] = ([ASTRA, "tasks", "show", "PK"], backend, label)
            found[f"astra db status{where}"] = ([ASTRA, "db", "status"], backend, label)
            leaf = [LUIGI, "--module", TASKS, "AstraLeaf", "--i", "0"]
            found[f"luigi: one done astra task{where}"] = (leaf, backend, label)
            root = [LUIGI, "--module", TASKS, "AstraRoot", "--n", str(root_tasks)]
            found[f"luigi: done astra root over {root_tasks:,}{where}"] = (root, backend, label)
            found[f"SLURM job's Python up to run(){where}"] = (job_startup(checkout), backend, label)
    return found


def record_all(root_tasks: int, env: dict) -> int:
    """Record AstraLeaf 0..N-1 (one batch) and AstraRoot as done in the database of ``env``; the pk of AstraLeaf 0."""
    setup = f"""
import luigi
from astra.batch import BatchTask
from astra.database import create_schema, records
from {TASKS} import AstraLeaf, AstraRoot

class Leaves(BatchTask):
    item_class = AstraLeaf
    chunk_size = 5000
    def parameter_sets(self):
        return ({{"i": i}} for i in range({root_tasks}))
    def process(self, chunk):
        return [None] * len(chunk)

create_schema()
assert luigi.build([Leaves()], local_scheduler=True, log_level="WARNING")
assert luigi.build([AstraRoot(n={root_tasks})], local_scheduler=True, log_level="WARNING")
filters = records.Filters(names=("AstraLeaf",), where=(("i", "0"),))
print(records.find(filters, 1)[0].pk)
"""
    done = subprocess.run([PYTHON, "-c", setup], env=env, capture_output=True, text=True, cwd=env["BENCH_CWD"])
    if done.returncode != 0:
        raise RuntimeError(f"setting up the records failed:\n{done.stdout}\n{done.stderr}")
    return int(done.stdout.split()[-1])


def run_once(command: list[str], env: dict) -> tuple[float, float]:
    """The wall time of ``command`` as a whole process, and the CPU time (user + system) it and its children used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=env["BENCH_CWD"])
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or "Traceback" in done.stderr:
        raise RuntimeError(f"{command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    if "--module" in command and "complete ones were encountered" not in done.stderr + done.stdout:
        raise RuntimeError(f"{command} did not find its task done:\n{done.stdout}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command (default 5)")
    parser.add_argument("--root-tasks", type=int, default=5000, help="done leaves below the done root")
    parser.add_argument(
        "--before", type=Path, help="another checkout of astra (e.g. one of the code before a change) to time beside"
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="no shared bytecode cache: with PYTHONDONTWRITEBYTECODE=1 set, each process compiles astra from source",
    )
    args = parser.parse_args()
    checkouts = {"": REPO, **({"before": args.before.resolve()} if args.before else {})}

    bytecode_off = os.environ.get("PYTHONDONTWRITEBYTECODE", "")
    workdir = Path(tempfile.mkdtemp(prefix="astra-startup-"))
    # A directory without luigi.cfg, as a user's: luigi runs with --local-scheduler from the environment below.
    (workdir / "luigi.cfg").write_text("[core]\nlocal_scheduler = true\n")
    for name in [f"leaf-{i}" for i in range(args.root_tasks)] + [f"root-{args.root_tasks}"]:
        (workdir / f"{name}.txt").write_text("done\n")
    for module in (TASKS, LOCAL_TASKS):
        shutil.copy(REPO / "bench" / f"{module}.py", workdir)
    database = f"astra_startup_{uuid.uuid4().hex[:8]}"
    admin(f"create database {database}")
    urls = {
        None: f"sqlite:///{workdir / 'unused.db'}",
        "sqlite": f"sqlite:///{workdir / 'astra.db'}",
        "postgresql": f"{POSTGRES}/{database}",
    }

    def env(backend: str | None, label: str) -> dict:
        path = [str(checkouts[label]), str(workdir), os.environ.get("PYTHONPATH", "")]
        found = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, path)),
            "BENCH_DIR": str(workdir),
            "BENCH_CWD": str(workdir),
            "ASTRA_DATABASE_URL": urls[backend],
        }
        if not args.no_bytecode_cache:
            found.pop("PYTHONDONTWRITEBYTECODE", None)
            found["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache" / (label or "this"))
        return found

    try:
        print(machine(), flush=True)
        pks = {backend: record_all(args.root_tasks, env(backend, "")) for backend in ("sqlite", "postgresql")}
        timed = commands(args.root_tasks, checkouts)
        if args.no_bytecode_cache:
            print(f"bytecode: as the environment has it (PYTHONDONTWRITEBYTECODE={bytecode_off or 'unset'})")
        else:
            print("bytecode: a cache shared by the processes, filled by one round that is not timed")
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in timed}
        for round_ in range(args.repeat + 1):
            if round_ == 0:  # fills the bytecode cache (and the file system's): not timed
                for command, backend, label in timed.values():
                    run_once([str(pks[backend]) if part == "PK" else part for part in command], env(backend, label))
                continue
            for name, (command, backend, label) in timed.items():
                command = [str(pks[backend]) if part == "PK" else part for part in command]
                runs[name].append(run_once(command, env(backend, label)))
        print(f"load average at the end: {os.getloadavg()[0]:.2f}\n")
        print(table(runs))
        for label, index in (("wall time", 0), ("CPU time", 1)):
            medians = {name: statistics.median(run[index] for run in found) for name, found in runs.items()}
            print(f"\nGoals of issue 22, on {label}:\n\n" + goals(medians, args.root_tasks))
    finally:
        admin(f"drop database if exists {database} with (force)")
        shutil.rmtree(workdir, ignore_errors=True)


def table(runs: dict[str, list[tuple[float, float]]]) -> str:
    wall = {name: statistics.median(run[0] for run in found) for name, found in runs.items()}
    cpu = {name: statistics.median(run[1] for run in found) for name, found in runs.items()}
    lines = [
        "| process | wall, median (s) | wall, runs (s) | CPU, median (s) | CPU beyond `python -c pass` (s) |",
        "|---|---|---|---|---|",
    ]
    for name, found in runs.items():
        shown = ", ".join(f"{run[0]:.2f}" for run in found)
        beyond = cpu[name] - cpu["python -c pass"]
        lines.append(f"| {name} | {wall[name]:.3f} | {shown} | {cpu[name]:.3f} | {beyond:+.3f} |")
    return "\n".join(lines)


def goals(medians: dict[str, float], root_tasks: int) -> str:
    """Each goal of issue 22, met or not by these medians."""
    luigi = medians["python -c 'import luigi'"]
    help_ = medians["luigi --help"]
    lines = [
        goal("`import astra` <= `import luigi` + 0.10 s", medians["python -c 'import astra'"], luigi + 0.10),
        goal("(`import astra; astra.BaseTask` <= `import luigi` + 0.10 s)",
             medians["python -c 'import astra; astra.BaseTask'"], luigi + 0.10),
        goal("`astra --version` <= 0.2 s", medians["astra --version"], 0.2),
        goal("`astra --version` <= 0.2 / 0.13 `luigi --help`", medians["astra --version"], help_ * 0.2 / 0.13),
    ]  # fmt: skip
    for backend in ("sqlite", "postgresql"):
        lines.append(
            goal(f"`astra tasks show PK` ({backend}) <= 0.3 s", medians[f"astra tasks show PK ({backend})"], 0.3)
        )
        local, mine = medians["luigi: one done LocalTarget task"], medians[f"luigi: one done astra task ({backend})"]
        lines.append(goal(f"one done task ({backend}) <= 1.15x LocalTarget", mine, 1.15 * local, mine / local))
        local = medians[f"luigi: done LocalTarget root over {root_tasks:,}"]
        mine = medians[f"luigi: done astra root over {root_tasks:,} ({backend})"]
        lines.append(
            goal(f"done root over {root_tasks:,} ({backend}) <= 1.3x LocalTarget", mine, 1.3 * local, mine / local)
        )
        job = medians[f"SLURM job's Python up to run() ({backend})"]
        lines.append(
            goal(f"SLURM job start-up ({backend}) <= `python -c pass` + 0.5 s", job, medians["python -c pass"] + 0.5)
        )
    return "\n".join(lines)


def goal(what: str, measured: float, limit: float, ratio: float | None = None) -> str:
    shown = f"{measured:.3f} s" + (f" ({ratio:.2f}x)" if ratio is not None else "")
    return f"- {what}: {shown}, limit {limit:.3f} s: {'met' if measured <= limit else 'NOT met'}"


if __name__ == "__main__":
    main()
