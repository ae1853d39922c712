"""The states of a task's row (``astra.task.status``): the one place their names are written."""

#: Claimed: a process is running the task (``host``, ``pid``, ``heartbeat`` say which, and that it is alive).
RUNNING = "running"
#: Recorded as done, with its result: luigi skips the task.
DONE = "done"
#: The last attempt failed (``error``, ``traceback``); the next run tries again.
FAILED = "failed"

#: Every state, in the order the ``astra`` command lists them.
STATUSES = (DONE, RUNNING, FAILED)
