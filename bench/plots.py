"""`astra results` over a million output rows: plots and an export, as whole ``astra`` processes, on both backends.

    python bench/plots.py                       # 1,000 FieldStars items of 1,000 rows each: 1,000,000 rows
    python bench/plots.py --fields 10 --stars 1000

The rows are recorded first by ``luigi --module bench.tasks Fields`` (not timed). Each command is then run
``--repeat`` times; the table gives the median wall time and the CPU time of that run (the machine is shared: wall
time is what a user waits, CPU time what the command itself costs).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.run import POSTGRES, admin, machine  # noqa: E402

BIN = Path(sys.executable).parent

COMMANDS = {
    "--plot teff,logg (2-D histogram)": ["--plot", "teff,logg", "-o", "{dir}/hr.png"],
    "--plot snr --log x (histogram)": ["--plot", "snr", "--log", "x", "-o", "{dir}/snr.png"],
    "--columns teff,logg,snr --format fits": ["--columns", "teff,logg,snr", "--format", "fits", "-o", "{dir}/s.fits"],
}


def timed(args: list[str], env: dict) -> tuple[float, float]:
    """Wall and CPU seconds of one command (CPU of its process and any it starts)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(backend: str, url: str, fields: int, stars: int, repeat: int, workdir: Path) -> None:
    env = {**os.environ, "ASTRA_DATABASE_URL": url, "PYTHONPATH": str(REPO)}
    subprocess.run([BIN / "astra", "db", "init", "--module", "bench.tasks"], env=env, check=True, capture_output=True)
    start = time.perf_counter()
    made = subprocess.run(
        [BIN / "luigi", "--module", "bench.tasks", "Fields", "--n", str(fields), "--stars", str(stars),
         "--local-scheduler"], env=env, capture_output=True, text=True, cwd=workdir,
    )  # fmt: skip
    if "1 ran successfully" not in made.stdout + made.stderr:
        raise SystemExit(made.stdout + made.stderr)
    print(f"\n{backend}: {fields * stars:,} rows recorded in {time.perf_counter() - start:.0f} s (not timed below)")
    print("| command | wall (s), runs | median wall (s) | CPU (s) of that run |\n|---|---|---|---|")
    for label, args in COMMANDS.items():
        command = [str(BIN / "astra"), "results", "FieldStars", *(a.format(dir=workdir) for a in args)]
        runs = [timed(command, env) for _ in range(repeat)]
        walls = [wall for wall, _ in runs]
        middle = sorted(runs)[len(runs) // 2]
        print(
            f"| `{label}` | {', '.join(f'{w:.1f}' for w in walls)} | {statistics.median(walls):.1f} | {middle[1]:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=1000)
    parser.add_argument("--stars", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    options = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="astra-plots-") as workdir:
        if options.backend in ("sqlite", "both"):
            url = f"sqlite:///{workdir}/plots.db"
            run("SQLite", url, options.fields, options.stars, options.repeat, Path(workdir))
        if options.backend in ("postgresql", "both"):
            name = f"astra_bench_plots_{uuid.uuid4().hex[:8]}"
            admin(f"create database {name}")
            try:
                run("PostgreSQL", f"{POSTGRES}/{name}", options.fields, options.stars, options.repeat, Path(workdir))
            finally:
                admin(f"drop database if exists {name} with (force)")


if __name__ == "__main__":
    main()
