"""The SLURM job's side of the SLURM executor: rebuild the task that ``$ASTRA_SLURM_SPEC`` describes, take over
the attempt that names this job, run it and record it; or, in an array element, work one share of a batch.

Imported by the job's Python alone (``python -c "from astra.executors.slurm_job import main; ..."``): it imports
what running and recording a task needs, and the task's module.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import pickle
import socket
import sys
import time
from collections.abc import Iterator

import luigi
from luigi.task_register import Register, load_task

from astra import identity
from astra.config import DATABASE_URL_ENV, adopt_command_line, adopt_luigi_config
from astra.database import queries
from astra.executors import inside_job
from astra.executors.slurm import SPEC_ENV
from astra.recording import Claim, run_unrecorded

#: How long a job that finds no attempt naming it waits for one (a worker adopting it notes it just after).
HAND_OVER_SECONDS = 10.0


def main() -> int:
    """The job's entry point: run (a share of) the task that ``$ASTRA_SLURM_SPEC`` (JSON) describes."""
    inside_job()
    spec = json.loads(os.environ.pop(SPEC_ENV))  # not for the task's own subprocesses
    adopt_luigi_config(spec.get("luigi_config"))
    config = luigi.configuration.get_config()
    for name, value in spec["astra"].items():
        config.set("astra", name, value)
    if spec["database_url"]:
        os.environ[DATABASE_URL_ENV] = spec["database_url"]
    importlib.import_module(spec["module"])
    adopt_command_line(spec.get("command_line"))
    if spec.get("values"):  # the values the worker's task has (its text may read back as others: slurm._values)
        task = Register.get_task_cls(spec["family"])(**pickle.loads(base64.b64decode(spec["values"])))
    else:
        task = load_task(spec["module"], spec["family"], spec["params"])
    job_id = os.environ.get("SLURM_JOB_ID", "")
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    if "shares" in spec:
        # Only in an array element: a job submitted from inside one (a pilot's luigi) inherits its SLURM_ARRAY_*.
        job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        share = spec["offset"] + int(os.environ["SLURM_ARRAY_TASK_ID"])
        chained, split = spec.get("chained", False), spec.get("split")
        task.work(share=(share, spec["shares"]), job=(job_id, node), chained=chained, split=split)
        return 0
    return _run_attempt(task, job_id, node)


def _run_attempt(task: luigi.Task, job_id: str, node: str) -> int:
    task_hash = identity.task_hash(task)
    deadline = time.monotonic() + HAND_OVER_SECONDS
    while (attempt := queries.hand_over(task_hash, job_id, node)) is None:
        if time.monotonic() > deadline:
            print(f"astra: {task} is no longer claimed by an attempt that runs SLURM job {job_id} (taken over or "
                  "finished); not run", file=sys.stderr)  # fmt: skip
            return 3
        time.sleep(1.0)
    claim = Claim(task)
    claim.adopt(attempt)
    task._astra_claim = claim
    try:
        result = run_unrecorded(task)
        if isinstance(result, Iterator):
            raise TypeError(
                f"{task.task_family}.run() yields dynamic dependencies, which a SLURM job cannot hand to luigi; "
                "give the class executor = 'local'"
            )
        if not claim.recorded:
            claim.finish(result)
    except BaseException as exc:
        claim.fail(exc)
        raise
    finally:
        claim.release()
        task._astra_claim = None
    return 0
