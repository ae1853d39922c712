"""EstimateSNRBatch end to end against a plain Python loop over the same spectrum files (issue 13, goal 1).

    python bench/batch_vs_loop.py                  # 20,000 spectra: the loops, then the batch on SQLite and PostgreSQL
    python bench/batch_vs_loop.py --count 2000     # smaller, to try it out
    python bench/batch_vs_loop.py --profile        # where a one-process batch spends its time (cProfile)
    python bench/run.py --only batch               # the same as the first line

Every figure is the wall time of a whole new process, from start to exit (interpreter start-up and imports
included, the same for every kind), so luigi's start-up and astra's bookkeeping count against the batch:

- loop, astropy: ``[signal_to_noise(*read_spectrum(p, reader="astropy")) for p in paths]``, the anchor (what
  ``read_spectrum`` was before fitsio);
- loop, fitsio: the same loop with ``read_spectrum``'s default reader;
- loop, fitsio, all of EstimateSNR's outputs: that loop computing the wavelength range too, as the batch's items do;
- ``luigi --module workflows EstimateSNRBatch --spectra-dir DIR --local-scheduler [--processes 2]`` on a fresh
  SQLite file and on a fresh PostgreSQL database ($ASTRA_TEST_POSTGRES, default postgresql://postgres@127.0.0.1:5432,
  where it creates and drops astra_bench_batch); the batch records each spectrum as an EstimateSNR task with its
  row in astra.snr (schema and output table made before the clock starts).

The spectra are simulated once (workflows.spectra.simulate, about 4 ms each) and kept in --cache (default
~/.cache/astra-bench/spectra-N), which the output names. The figures are ratios to the astropy loop of the same
run; on a shared machine they move with the load, which is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.run import POSTGRES, admin  # noqa: E402

DATABASE = "astra_bench_batch"
LUIGI = str(Path(sys.executable).with_name("luigi"))

LOOP = """
import glob, os, sys
from workflows.formats import read_spectrum, signal_to_noise
paths = sorted(glob.glob(os.path.join(sys.argv[1], "*.fits")))
snrs = [signal_to_noise(*read_spectrum(path, reader=sys.argv[2]))[0] for path in paths]
assert len(snrs) == len(paths)
"""

#: The loop doing all that EstimateSNR.run() does: the signal-to-noise ratio and the wavelength range.
LOOP_ALL = """
import glob, os, sys
from workflows.formats import load_spectrum, signal_to_noise, wavelength_range
paths = sorted(glob.glob(os.path.join(sys.argv[1], "*.fits")))
rows = []
for path in paths:
    s = load_spectrum(path)
    rows.append((*signal_to_noise(s.flux, s.ivar, s.mask), *wavelength_range(s.wavelength, s.flux, s.ivar, s.mask)))
assert len(rows) == len(paths)
"""

PREPARE = """
import workflows
from astra import outputs
from astra.database import create_schema, output_tables
create_schema()
output_tables.create(outputs.models_in([workflows]))
"""


def spectra(count: int, cache: Path | None) -> Path:
    """The directory of ``count`` simulated spectra, written on first use."""
    directory = cache or Path.home() / ".cache" / "astra-bench" / f"spectra-{count}"
    stamp = directory / "complete"
    if not stamp.exists():
        print(f"writing {count:,} simulated spectra into {directory} (once) ...", flush=True)
        sys.path.insert(0, str(REPO))
        from workflows.spectra import simulate

        shutil.rmtree(directory, ignore_errors=True)
        started = time.perf_counter()
        simulate(directory, count)
        stamp.write_text(f"{count}\n")
        print(f"  took {time.perf_counter() - started:.0f} s", flush=True)
    return directory


def env(url: str = "") -> dict:
    paths = [str(REPO), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths)), "ASTRA_DATABASE_URL": url}


def fresh_database(backend: str, workdir: Path) -> str:
    """An empty astra database with workflows' output tables, on ``backend``; its URL."""
    if backend == "postgresql":
        admin(f"drop database if exists {DATABASE} with (force)", f"create database {DATABASE}")
        url = f"{POSTGRES}/{DATABASE}"
    else:
        for name in ("batch.db", "batch.db-wal", "batch.db-shm"):
            (workdir / name).unlink(missing_ok=True)
        url = f"sqlite:///{workdir / 'batch.db'}"
    subprocess.run([sys.executable, "-c", PREPARE], env=env(url), check=True, cwd=workdir)
    return url


def timed(command: list[str], url: str, workdir: Path) -> tuple[float, float]:
    """Wall seconds the command takes, start to exit, and the CPU seconds (user + system) of it and the processes
    it waited for (not those of the PostgreSQL server, nor a batch pool's, forked by the forkserver); a batch must
    also have succeeded."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env(url), cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    failed = LUIGI in command and "This progress looks :)" not in done.stdout + done.stderr
    if done.returncode != 0 or failed:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, cpu


def batch_command(directory: Path, processes: int, *extra: str) -> list[str]:
    return [LUIGI, "--module", "workflows", "EstimateSNRBatch", "--spectra-dir", str(directory), "--local-scheduler",
            "--processes", str(processes), *extra]  # fmt: skip


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


def compare(directory: Path, count: int, repeat: int, backends: list[str], workdir: Path) -> None:
    kinds = [("loop, astropy reader (anchor)", "loop", "astropy"), ("loop, fitsio reader", "loop", "")]
    kinds += [("loop, fitsio reader, all of EstimateSNR's outputs", "loop-all", "")]
    for backend in backends:
        kinds += [(f"EstimateSNRBatch, {backend}, 1 process", backend, 1)]
        kinds += [(f"EstimateSNRBatch, {backend}, --processes 2", backend, 2)]
    runs: dict[str, list[tuple[float, float, str]]] = {name: [] for name, _, _ in kinds}
    for turn in range(repeat):
        for name, what, how in kinds:  # interleaved, so a busy moment of the machine is spread over every kind
            if what.startswith("loop"):
                script = LOOP if what == "loop" else LOOP_ALL
                seconds, cpu = timed([sys.executable, "-c", script, str(directory), how], "", workdir)
            else:
                url = fresh_database(what, workdir)
                seconds, cpu = timed(batch_command(directory, how), url, workdir)
            runs[name].append((seconds, cpu, load()))
            print(f"  run {turn + 1}: {name}: {seconds:.1f} s, CPU {cpu:.1f} s ({load()})", flush=True)

    def median(name: str, index: int = 0) -> float:
        return statistics.median(run[index] for run in runs[name])

    anchor, fast = median(kinds[0][0]), median(kinds[1][0])
    cpu_anchor, cpu_fast = median(kinds[0][0], 1), median(kinds[1][0], 1)
    print(f"\n{count:,} spectra, whole processes, median of {repeat} run(s) each. CPU: user + system seconds of the")
    print("process and those it started (the PostgreSQL server's not), less moved by other load; a pool's processes")
    print("(--processes) are not counted: they are children of multiprocessing's forkserver, not waited for.\n")
    print("| what | wall s | ratio to astropy loop | ratio to fitsio loop | CPU s | CPU ratio to astropy loop | CPU "
          "ratio to fitsio loop | runs: wall s (load 1/5 min) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, _, _ in kinds:
        seconds, cpu = median(name), median(name, 1)
        each = ", ".join(f"{s:.1f} ({where})" for s, _, where in runs[name])
        print(
            f"| {name} | {seconds:.1f} | {seconds / anchor:.2f}x | {seconds / fast:.2f}x | {cpu:.1f} | "
            f"{cpu / cpu_anchor:.2f}x | {cpu / cpu_fast:.2f}x | {each} |"
        )


def profile(directory: Path, backend: str, processes: int, top: int, workdir: Path) -> None:
    """One batch under cProfile, whole process: the top entries, and a line per part of the work."""
    url = fresh_database(backend, workdir)
    output = workdir / "batch.prof"
    command = [sys.executable, "-m", "cProfile", "-o", str(output), *batch_command(directory, processes)]
    seconds, _ = timed(command, url, workdir)
    stats = pstats.Stats(str(output))
    print(f"\ncProfile of EstimateSNRBatch on {backend}, {processes} process(es): {seconds:.1f} s under the profiler\n")
    total = max(entry[3] for entry in stats.stats.values())  # cumulative time of the outermost call
    parts = [
        ("reading the files (load_spectrum)", "formats.py", "load_spectrum"),
        ("signal_to_noise + wavelength_range", "formats.py", ("signal_to_noise", "wavelength_range")),
        ("item identities (hashing)", "identity.py", "items"),
        ("asking which items are done (in a helper thread or the pool: cProfile sees none)", "batch.py", "_done"),
        ("records made from results", "batch.py", "_records"),
        ("writing records (record_items)", "queries.py", "record_items"),
        ("writing astra.snr rows", "output_tables.py", "insert"),
        ("waiting for the pool (--processes)", "_base.py", "wait"),
        ("BatchTask.run, all of it", "batch.py", "run"),
    ]
    print("| part | cumulative s | share of the process |")
    print("|---|---|---|")
    for label, filename, names in parts:
        names = (names,) if isinstance(names, str) else names
        cumulative = sum(
            entry[3]
            for (path, _, function), entry in stats.stats.items()
            if path.endswith(filename) and function in names
        )
        print(f"| {label} | {cumulative:.2f} | {cumulative / total:.0%} |")
    print(f"| the whole process (imports, luigi, astra, work) | {total:.2f} | 100% |\n")
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20000, help="spectra (default 20,000)")
    parser.add_argument("--cache", type=Path, help="where the simulated spectra are kept")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each kind, interleaved (default 1)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--profile", action="store_true", help="profile one batch instead of comparing")
    parser.add_argument("--profile-backend", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--profile-processes", type=int, default=1)
    parser.add_argument("--top", type=int, default=25, help="profile entries shown")
    args = parser.parse_args(argv)

    directory = spectra(args.count, args.cache)
    print(f"spectra: {directory} ({args.count:,} files); {os.cpu_count()} CPUs, {load()} at start", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="astra-bench-batch-"))
    backends = args.backends.split(",")
    try:
        if args.profile:
            profile(directory, args.profile_backend, args.profile_processes, args.top, workdir)
        else:
            compare(directory, args.count, args.repeat, backends, workdir)
    finally:
        if "postgresql" in backends or args.profile_backend == "postgresql":
            admin(f"drop database if exists {DATABASE} with (force)")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
