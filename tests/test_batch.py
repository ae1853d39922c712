"""Batched tasks: one luigi task, many items, each item recorded as the task it would be on its own."""

from __future__ import annotations

import contextlib
import json
import threading

import luigi
import pytest

from astra.batch import BatchError
from astra.database import Dependency, Parameter, Task, TaskParameter
from astra.identity import items, parameters, task_hash
from astra.targets import forget_cached
from tests import batch_tasks
from tests.batch_tasks import (
    ChainStep,
    ChainSteps,
    Contested,
    DriftingNights,
    MeasureStar,
    MeasureStars,
    NeedsForgottenStars,
    Prepared,
    StarNight,
    StarNights,
    SummariseStars,
    SummariseStarsForgetting,
    SummariseStarsRead,
    SummariseStarsYielded,
    SummariseWrapped,
    UsesPrepared,
    UsesPreparedBatch,
)
from tests.helpers import main, rows_by_path, run_luigi, summary, wait_for
from workflows import EstimateSNR
from workflows.spectra import read_spectrum, signal_to_noise, simulate, write_spectrum


@pytest.mark.slow
def test_estimate_snr_batch_from_the_command_line(database_url, tmp_path):
    spectra = tmp_path / "spectra"
    paths = simulate(spectra, count=6, seed=5)
    broken = spectra / "spec-00007.fits"
    broken.write_text("not a FITS file")
    args = ["--module", "workflows", "EstimateSNRBatch", "--spectra-dir", str(spectra), "--local-scheduler"]

    first = run_luigi(*args)
    assert "1 failed" in summary(first.stdout), first.stdout
    assert "1 of 7 items failed" in first.stdout
    rows = rows_by_path([*paths, broken])
    for path in paths:  # the others' results are kept, each as its own EstimateSNR
        assert rows[str(path)].status == "done"
        row = EstimateSNR(spectrum_path=str(path)).output().read()  # its row in astra.snr, written by the batch
        assert row.snr == pytest.approx(signal_to_noise(*read_spectrum(str(path)))[0])
    failed = rows[str(broken)]
    assert failed.status == "failed" and "OSError" in failed.error and failed.traceback

    # A lone EstimateSNR of a spectrum the batch did is done already.
    lone = run_luigi("--module", "workflows", "EstimateSNR", "--spectrum-path", str(paths[0]), "--local-scheduler")
    assert "1 complete ones were encountered" in summary(lone.stdout), lone.stdout

    # Once the file is repaired, a re-run processes that spectrum only.
    write_spectrum(broken, snr=12.0, seed=7)
    second = run_luigi(*args)
    assert "1 ran successfully" in summary(second.stdout), second.stdout
    after = rows_by_path([*paths, broken])
    assert after[str(broken)].status == "done" and after[str(broken)].attempts == 2
    assert all(after[str(p)].completed == rows[str(p)].completed for p in paths)

    third = run_luigi(*args)
    assert "1 complete ones were encountered" in summary(third.stdout)


@pytest.mark.slow
def test_estimate_snr_batch_takes_a_list_or_a_glob(database_url, tmp_path):
    paths = [str(p) for p in simulate(tmp_path / "spectra", count=4, seed=6)]
    listed = run_luigi(
        "--module", "workflows", "EstimateSNRBatch", "--spectra", json.dumps(paths[:2]), "--local-scheduler"
    )
    assert "1 ran successfully" in summary(listed.stdout), listed.stdout
    assert sorted(row.task_id for row in Task.select()) == sorted(
        EstimateSNR(spectrum_path=p).task_id for p in paths[:2]
    )
    globbed = run_luigi(
        "--module",
        "workflows",
        "EstimateSNRBatch",
        "--spectra-glob",
        str(tmp_path / "spectra" / "spec-*.fits"),
        "--local-scheduler",
    )
    assert "1 ran successfully" in summary(globbed.stdout), globbed.stdout
    rows = rows_by_path(paths)
    assert all(row.status == "done" for row in rows.values())
    # the two listed earlier were not done again
    assert len({row.completed for row in rows.values()}) == 2


def test_a_batch_item_is_recorded_like_a_lone_task(database_url, tmp_path):
    alone, batched = (str(p) for p in simulate(tmp_path / "spectra", count=2, seed=8))
    assert luigi.build([EstimateSNR(spectrum_path=alone)], local_scheduler=True)
    from workflows import EstimateSNRBatch

    EstimateSNRBatch(spectra=[batched]).run()

    def recorded(path: str) -> tuple:
        row = Task.get(Task.task_hash == task_hash(EstimateSNR(spectrum_path=path)))
        params = (
            Parameter.select(Parameter.parameter_name, Parameter.parameter_value)
            .join(TaskParameter)
            .where(TaskParameter.task == row.pk)
            .tuples()
        )
        return row, dict(params)

    row_alone, params_alone = recorded(alone)
    row_batched, params_batched = recorded(batched)
    assert params_alone == {"spectrum_path": alone} and params_batched == {"spectrum_path": batched}
    for field in ("task_module", "task_name", "version", "status", "astra_version"):
        assert getattr(row_alone, field) == getattr(row_batched, field)
    assert row_batched.task_id == EstimateSNR(spectrum_path=batched).task_id


def test_item_identities_equal_those_of_lone_tasks():
    """Their hashes, task_ids, parameters, and names as luigi writes them (an InputLostError and `astra tasks why` of
    a summary of a batch name its items so; before: astra's sorted parameters, insignificant ones included)."""
    sets = [
        {"star": 1},
        {"star": "2", "band": "r"},
        {"star": 3, "options": {"z": [1], "a": {"y": 2, "x": 1}}, "secret": "s", "scratch": "x", "note": "n"},
    ]
    for item, values in zip(items(MeasureStar, sets), sets):
        task = MeasureStar(**values)
        assert str(item) == str(task)
        assert item.task_hash == task_hash(task)
        assert item.task_id == task.task_id
        assert item.parameters == parameters(task)
        assert item.task.param_kwargs == task.param_kwargs
    with pytest.raises(luigi.parameter.UnknownParameterException):
        list(items(MeasureStar, [{"star": 1, "colour": "red"}]))
    with pytest.raises(luigi.parameter.MissingParameterException):
        list(items(MeasureStar, [{"band": "r"}]))


@pytest.mark.slow
def test_one_failing_item_keeps_the_others_and_a_rerun_does_only_it(database_url):
    MeasureStars.processed = []
    progress, messages = [], []
    batch = MeasureStars(stars=1000, fail_on=517)
    batch.set_progress_percentage, batch.set_status_message = progress.append, messages.append
    with pytest.raises(BatchError, match="1 of 1000 items failed"):
        batch.run()
    assert sorted(MeasureStars.processed) == list(range(1000))
    assert progress[-1] == 100 and messages[-1] == "1000 of 1000 items done or tried, 1 failed"
    done = Task.select().where(Task.task_name == "MeasureStar", Task.status == "done")
    assert done.count() == 999
    failed = Task.get(Task.status == "failed")
    assert failed.task_hash == task_hash(MeasureStar(star=517, fail_on=517))
    assert failed.error == "ValueError: star 517 has no good pixels"
    assert Task.get(Task.task_hash == task_hash(MeasureStar(star=3))).result == 30
    assert batch.complete() is False

    MeasureStars.processed = []
    again = MeasureStars(stars=1000)  # fail_on is not significant: the same items, and star 517 now works
    again.run()
    assert MeasureStars.processed == [517]
    assert again.complete() is True
    assert Task.select().where(Task.status == "done").count() == 1000
    assert MeasureStar(star=517).complete() is True


@pytest.mark.parametrize("way", ["", "ItsWay"])
def test_an_item_whose_requires_is_a_generator_gets_every_input(database_url, tmp_path, way):
    """Identifying the item runs its requires() generator; the item's input() must not find it used up (it did for
    items made the slow way, of a class with an __init__ of its own: they were recorded done with no inputs)."""
    batch, item = getattr(batch_tasks, f"ReadAllExposures{way}"), getattr(batch_tasks, f"ReadsExposures{way}")
    paths = []
    for name in ("a", "b"):
        for suffix in ("", ".flat"):
            (tmp_path / f"{name}.fits{suffix}").write_text("x")
        paths.append(str(tmp_path / f"{name}.fits"))
    assert luigi.build([batch(paths=paths)], local_scheduler=True, log_level="WARNING")
    for path in paths:
        row = Task.get(Task.task_hash == task_hash(item(path=path)))
        assert (row.status, row.result) == ("done", {"inputs": [path, path + ".flat"]})


@pytest.mark.slow
def test_a_done_batch_is_checked_once_per_luigi_run(database_url, tmp_path):
    """luigi asks whether the batch is complete when it schedules, and astra asks again when it judges the run:
    the second answer is the first (a done item stays done), not another walk over every item."""
    tally = tmp_path / "tally"
    args = ["--module", "tests.batch_tasks", "TalliedStars", "--stars", "1200", "--tally", str(tally),
            "--local-scheduler"]  # fmt: skip
    first = run_luigi(*args)
    assert "1 ran successfully" in summary(first.stdout) and first.returncode == 0, first.stdout
    tally.unlink()
    again = run_luigi(*args)
    assert "1 complete ones were encountered" in summary(again.stdout) and again.returncode == 0, again.stdout
    assert tally.read_text().splitlines() == ["read"]
    # Found not done, it is asked again at the end, after the run: the batch ran the item forgotten meanwhile.
    Task.delete().where(Task.task_hash == items(MeasureStar, [{"star": 7}]).__next__().task_hash).execute()
    tally.unlink()
    third = run_luigi(*args)
    assert "1 ran successfully" in summary(third.stdout) and third.returncode == 0, third.stdout
    assert len(tally.read_text().splitlines()) >= 3  # the check, the run, the check of the judge


def test_a_batch_whose_items_grow_is_not_done_in_the_same_process(database_url, tmp_path):
    """A batch found complete is asked again: its items may have grown since (new files in its folder), and a
    process that builds it again, say every hour, must run them."""
    listing = tmp_path / "stars"
    listing.write_text("".join(f"{star}\n" for star in range(5)))
    batch = batch_tasks.ListedStars(listing=str(listing))
    assert luigi.build([batch], local_scheduler=True)
    assert batch.complete()
    listing.write_text("".join(f"{star}\n" for star in range(8)))
    assert batch_tasks.ListedStars(listing=str(listing)) is batch  # luigi's instance cache: the same task
    assert not batch.complete()
    assert luigi.build([batch], local_scheduler=True) and batch.complete()
    assert Task.select().where(Task.task_name == "MeasureStar", Task.status == "done").count() == 8


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_a_batch_whose_record_fails_stops_its_helpers_at_once(sqlite_url, monkeypatch, processes):
    """A chunk's record that fails (the server cancelled its COPY: a statement_timeout) ends the batch; its threads
    that ask which items are done (each with a connection), or its pool, stopped only when the garbage collector
    found them, which the failure's traceback put off: at the luigi process's exit, whose clean-up then failed with
    'Exception ignored ... cannot schedule new futures after shutdown'."""
    import multiprocessing

    from astra import batch

    written = []

    def write(*args):
        written.append(args)
        if len(written) == 2:
            raise RuntimeError("canceling statement due to statement timeout")
        return original(*args)

    original = batch._write
    monkeypatch.setattr(batch, "_write", write)
    with pytest.raises(RuntimeError, match="statement timeout") as failure:
        MeasureStars(stars=12000, processes=processes).run()
    assert failure.value.__traceback__ is not None  # kept, as luigi's worker keeps it a while
    assert [thread.name for thread in threading.enumerate() if thread.name.startswith("astra-batch")] == []
    assert multiprocessing.active_children() == []


def test_a_batch_with_a_failed_item_ends_in_lines_that_say_where_the_failures_are(sqlite_url):
    """The batch's BatchError was a traceback, and the last line said the batch "failed before astra could record
    why", when every item's failure was recorded."""
    done = run_luigi(
        "--module", "tests.batch_tasks", "MeasureStars", "--stars", "5", "--fail-on", "3", "--local-scheduler"
    )
    assert done.returncode == 30, done.stdout
    assert "Traceback" not in done.stdout, done.stdout
    assert (
        "failed    MeasureStars(" in done.stdout
        and "1 of 5 items failed (recorded in astra.task); first:" in done.stdout
    )
    last = done.stdout.strip().splitlines()[-1]
    hint = "astra tasks list --name MeasureStar --status failed lists its items recorded as failed"
    assert last.endswith(f"{hint} (one with no identity has no record)"), last


def test_a_task_whose_batch_failed_says_where_the_failures_are(sqlite_url):
    """The same below the requested task: its last line said the batch "failed before astra could record why"."""
    done = run_luigi(
        "--module", "tests.batch_tasks", "NeedsFailingStars", "--stars", "5", "--fail-on", "3", "--local-scheduler"
    )
    assert done.returncode == 30, done.stdout
    last = done.stdout.strip().splitlines()[-1]
    hint = "astra tasks list --name MeasureStar --status failed lists its items recorded as failed"
    assert last.startswith("ERROR: astra: NeedsFailingStars(stars=5, fail_on=3) is not done: MeasureStars("), last
    assert f"fail_on=3) failed (the error is above); {hint} (one with no identity has no record)" in last, last


def test_a_batch_that_failed_with_no_item_recorded_failed_points_at_no_list(sqlite_url):
    """The last line sent the user to `astra tasks list ... --status failed`, which listed nothing (an item without
    an identity has no record; neither have the items of a cancelled SLURM element)."""
    done = run_luigi("--module", "tests.batch_tasks", "TaggedBatch", "--local-scheduler")
    assert done.returncode == 30, done.stdout
    assert (
        done.stdout.strip().splitlines()[-1]
        == "ERROR: astra: TaggedBatch() is not done: it failed (the error is above)"
    )


def test_a_batch_never_takes_a_task_from_a_run_that_holds_it(database_url):
    """A task run alone while a batch records it too: the batch's done record was kept, and the run alone failed
    with "no longer this worker's"; the batch's failure overwrote the run alone, whose result was then lost."""
    for n, kept in ((0, False), (1, True)):  # the batch recorded it done: its result; the batch failed: the run's
        assert luigi.build([Contested(n=n, alone=True)], local_scheduler=True, log_level="WARNING"), n
        row = Task.get(Task.task_hash == task_hash(Contested(n=n)))
        assert row.status == "done" and Contested(n=n).output().read() == {"alone": kept}, (n, row.status)


def _recorded(task: luigi.Task) -> Task | None:
    return Task.get_or_none(Task.task_hash == task_hash(task))


def _edges(task: luigi.Task) -> set[str]:
    """The hashes of the tasks ``task``'s record says it required."""
    required = Task.alias()
    query = (
        Dependency.select(required.task_hash)
        .join(required, on=(Dependency.requires == required.pk))
        .switch(Dependency)
        .join(Task, on=(Dependency.task == Task.pk))
        .where(Task.task_hash == task_hash(task))
    )
    return {row.requires.task_hash for row in query}


@pytest.mark.parametrize("way", ["", "AndFile", "ItsWay", "ItsOutput"])
def test_an_item_whose_astra_input_is_not_done_is_recorded_failed_and_not_run(database_url, tmp_path, way):
    """A batch does not run its items' requirements: an item whose required astra task never ran, or failed, was
    run anyway and recorded done, its edge to the input left out (no later run made the input)."""
    item, required = getattr(batch_tasks, f"UsesPrepared{way}"), getattr(batch_tasks, f"Prepared{way}", Prepared)
    if way == "ItsOutput":
        required = batch_tasks.PreparedItsOutput
    (tmp_path / "spectrum.fits").write_text("x")
    file = {"path": str(tmp_path / "spectrum.fits")} if way == "AndFile" else {}
    assert luigi.build([required(n=0)], local_scheduler=True, log_level="WARNING")
    assert not luigi.build([required(n=1, fail=True)], local_scheduler=True, log_level="WARNING")
    UsesPrepared.ran = []
    batch = UsesPreparedBatch(numbers=[0, 1, 2], way=way, **file)
    with pytest.raises(BatchError, match="2 of 3 items failed") as failed:
        batch.run()
    assert UsesPrepared.ran == [0], "an item ran without its input"
    assert str(required(n=1)) in str(failed.value)
    assert (_recorded(item(n=0, **file)).status, _edges(item(n=0, **file))) == ("done", {task_hash(required(n=0))})
    for n in (1, 2):
        row = _recorded(item(n=n, **file))
        assert row.status == "failed", (n, row.status)
        needs = f"MissingInputError: {required(n=n)}, which this item needs, is not complete (not recorded done"
        assert row.error.startswith(needs), row.error

    assert luigi.build([required(n=1), required(n=2)], local_scheduler=True, log_level="WARNING")
    UsesPrepared.ran = []
    batch.run()
    assert UsesPrepared.ran == [1, 2]
    for n in range(3):
        assert _recorded(item(n=n, **file)).status == "done"
        assert _edges(item(n=n, **file)) == {task_hash(required(n=n))}


@pytest.mark.slow
def test_a_pool_runs_no_item_whose_astra_input_is_not_done(database_url):
    assert luigi.build([Prepared(n=0)], local_scheduler=True, log_level="WARNING")
    batch = UsesPreparedBatch(numbers=[0, 1], processes=2)
    with pytest.raises(BatchError, match="1 of 2 items failed"):
        batch.run()
    assert _recorded(UsesPrepared(n=0)).status == "done"
    row = _recorded(UsesPrepared(n=1))
    assert (row.status, row.result) == ("failed", None)
    assert row.error.startswith(f"MissingInputError: {Prepared(n=1)}, which this item needs"), row.error


def test_an_item_whose_astra_input_is_forgotten_while_the_batch_works_is_recorded_failed(database_url):
    """The input was done when the item was run, and forgotten (`astra tasks forget`) before its record: the record
    checks it again, in the transaction that writes it."""
    assert luigi.build([Prepared(n=0), Prepared(n=1)], local_scheduler=True, log_level="WARNING")
    UsesPrepared.ran = []
    with pytest.raises(BatchError, match="1 of 1 items failed") as failed:
        UsesPreparedBatch(numbers=[1], forget=True).run()
    assert UsesPrepared.ran == [1]
    row = _recorded(UsesPrepared(n=1))
    assert (row.status, row.result) == ("failed", None)
    forgotten = "or was forgotten while the batch worked"
    assert "which this item needs, is not recorded done" in row.error and forgotten in row.error, row.error
    assert forgotten in str(failed.value)
    assert _recorded(Prepared(n=1)) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "change",
    [
        "DELETE FROM astra.task WHERE task_hash = %s",  # as `astra tasks forget` does
        "UPDATE astra.task SET status = 'failed' WHERE task_hash = %s",  # as a reopen of a stale task does
    ],
)
def test_a_batch_whose_input_is_being_forgotten_waits_for_the_forget_and_fails_the_item(postgres_url, change):
    """The check at the record reads the input with a lock: a forget deleting it meanwhile (not yet committed), or
    a reopen making it not done, is waited for, and its change then seen. Without the lock the record saw the input
    done, then its edge to the row being deleted failed the whole chunk (a foreign key error); with the foreign
    key's lock alone (FOR KEY SHARE) the reopen went through and the item was recorded done on a failed input."""
    import psycopg2

    assert luigi.build([Prepared(n=5)], local_scheduler=True, log_level="WARNING")
    forgetting = psycopg2.connect(postgres_url)  # as `forget` does: the row locked and deleted, not yet committed
    key = bytes.fromhex(task_hash(Prepared(n=5)))
    forgetting.cursor().execute(change, (key,))
    batch, ended = _running(UsesPreparedBatch(numbers=[5]))
    _wait_for_a_lock(postgres_url, what="the batch's record to wait for the forget")
    forgetting.commit()
    forgetting.close()
    batch.join(timeout=60)
    assert isinstance(ended[0], BatchError) and "forgotten while the batch worked" in str(ended[0]), ended
    row = _recorded(UsesPrepared(n=5))
    assert row.status == "failed" and "forgotten while the batch worked" in row.error, row.error


def test_a_chain_in_one_batch_records_each_link_after_the_one_it_needs(database_url):
    """Items that need the item before them (of their own class) are recorded in order, in a chunk or in the
    chunks after it; an item that fails takes down the links after it, whichever chunk they are in, rather than
    leave them done on top of a failure (their edges left out)."""
    _chain(processes=1)


@pytest.mark.slow
def test_a_chain_worked_by_a_pool_records_each_link_after_the_one_it_needs(postgres_url):
    _chain(processes=2)


@pytest.mark.parametrize("processes", [1, 2])
def test_each_link_of_a_chain_runs_after_the_link_it_needs_is_recorded(database_url, processes):
    """A link's run() reads the result of the link before, as a lone task would find it. Before, the links of a
    chunk ran before the chunk was recorded: each found no total (read() gives None), and each run added one link;
    in a pool, a link could run before the chunk before it was recorded, whatever the chunk."""
    batch_tasks.RunningTotals(nights=10, processes=processes).run()
    totals = [_recorded(batch_tasks.RunningTotal(night=night)) for night in range(10)]
    assert [(row.status, row.result) for row in totals] == [("done", n * (n + 1) // 2) for n in range(10)]


def test_a_link_given_before_the_link_it_needs_is_not_run(database_url):
    """A link that parameter_sets() gives before the link it needs, in the same chunk, is not run: the link it
    needs is not recorded yet, so it fails unrun, as one in a later chunk does, and each run of the batch adds a
    link. Before, it ran first (its read() gave None) and was recorded with what it made of no input."""
    with pytest.raises(BatchError, match="3 of 4 items failed"):
        batch_tasks.RunningTotalsBackwards(nights=4).run()
    rows = [_recorded(batch_tasks.RunningTotal(night=night)) for night in range(4)]
    assert (rows[0].status, rows[0].result) == ("done", 0)
    for night, row in enumerate(rows[1:], 1):
        needs = f"MissingInputError: {batch_tasks.RunningTotal(night=night - 1)}, which this item needs"
        assert (row.status, row.error.startswith(needs)) == ("failed", True), row.error
    for _ in range(3):
        with contextlib.suppress(BatchError):
            batch_tasks.RunningTotalsBackwards(nights=4).run()
    rows = [_recorded(batch_tasks.RunningTotal(night=night)) for night in range(4)]
    assert [(row.status, row.result) for row in rows] == [("done", n * (n + 1) // 2) for n in range(4)]


@pytest.mark.parametrize("processes", [1, 2])
def test_a_link_finds_the_link_it_needs_complete(database_url, processes):
    """self.input().exists() in a link's run(): the link before is recorded done by then, and read() gave it, but
    exists() said False, from a "not done" this process (or the pool process) had kept since it identified the
    items."""
    batch_tasks.SeeInputs(nights=9, processes=processes).run()
    rows = [_recorded(batch_tasks.SeesItsInput(night=night)) for night in range(9)]
    assert [(row.status, row.result) for row in rows] == [("done", True)] * 9


def _chain(processes: int) -> None:
    ChainSteps.processed = []
    with pytest.raises(BatchError, match="6 of 10 items failed"):
        ChainSteps(n=10, fail_on=4, processes=processes).run()
    if processes == 1:  # the links after the one that failed are not run (in a pool, processed is the pool's)
        assert ChainSteps.processed == [0, 1, 2, 3, 4]
    statuses = {k: _recorded(ChainStep(k=k)).status for k in range(10)}
    assert statuses == {k: "done" if k < 4 else "failed" for k in range(10)}, statuses
    assert _recorded(ChainStep(k=4)).error == "ValueError: step 4 went wrong"
    for k in range(5, 10):  # named by its luigi id where found at the record, as in a lone task's summary before
        names = (ChainStep(k=k - 1).task_id, str(ChainStep(k=k - 1)))
        needs = tuple(f"MissingInputError: {name}, which this item needs, is not recorded done" for name in names)
        assert _recorded(ChainStep(k=k)).error.startswith(needs), (k, _recorded(ChainStep(k=k)).error)
    before = [{task_hash(ChainStep(k=k - 1))} for k in range(1, 4)]
    assert [_edges(ChainStep(k=k)) for k in range(4)] == [set(), *before]

    ChainSteps(n=10, processes=processes).run()
    assert all(_recorded(ChainStep(k=k)).status == "done" for k in range(10))
    assert all(_edges(ChainStep(k=k)) == {task_hash(ChainStep(k=k - 1))} for k in range(1, 10))


def test_an_item_whose_input_is_stale_is_not_run(database_url):
    """An input recorded done whose dynamic dependency was forgotten is not complete (luigi runs it again before a
    lone item); a batch ran the item on top of it."""
    from tests.dynamic_tasks import Yielder
    from tests.example_tasks import Leaf

    assert luigi.build([Yielder(n=1)], local_scheduler=True, log_level="WARNING")
    Task.delete().where(Task.task_hash == task_hash(Leaf(i=0))).execute()  # forgotten without --cascade
    forget_cached()
    assert not Yielder(n=1).complete()
    with pytest.raises(BatchError, match="1 of 1 items failed"):
        batch_tasks.UsesYielders(numbers=[3]).run()
    row = _recorded(batch_tasks.UsesYielder(n=3))
    assert row.status == "failed" and f"{Yielder(n=1)}, which this item needs, is not complete" in row.error

    assert luigi.build([Yielder(n=1)], local_scheduler=True, log_level="WARNING")  # made again
    batch_tasks.UsesYielders(numbers=[3]).run()
    assert _recorded(batch_tasks.UsesYielder(n=3)).status == "done"


@pytest.mark.parametrize("way", ["", "ItsWay"])
def test_an_item_without_an_identity_fails_the_batch_and_the_others_run(database_url, way):
    batch_tasks.Calibrated.ran = []
    batch = batch_tasks.CalibratedBatch(numbers=[0, 1, 2, 3], broken=1, way=way)
    assert batch.complete() is False  # not an error: luigi runs the batch
    with pytest.raises(BatchError, match=r"^1 item has no identity \(not run, not recorded\); first: cannot identify"):
        batch.run()
    assert batch_tasks.Calibrated.ran == [0, 2, 3]
    item_class = batch.item_class
    assert sorted(row.task_id for row in Task.select().where(Task.status == "done")) == sorted(
        item_class(n=n).task_id for n in [0, 2, 3]
    )
    assert Task.select().count() == 3  # nothing recorded of night 1: it has no hash to be recorded under
    assert batch.complete() is False

    batch_tasks.Calibrated.ran = []
    mended = batch_tasks.CalibratedBatch(numbers=[0, 1, 2, 3], way=way)
    assert luigi.build([mended], local_scheduler=True, log_level="WARNING")
    assert batch_tasks.Calibrated.ran == [1]
    assert mended.complete() is True


def test_an_item_whose_values_luigi_cannot_write_fails_alone(database_url):
    """Naming the item for its error wrote its values again (luigi's repr), raised again, and took the batch down
    with a traceback before any item ran."""
    with pytest.raises(BatchError, match=r"^1 item has no identity .* first: cannot identify Tagged\(i=3, tags="):
        batch_tasks.TaggedBatch().run()
    assert sorted(row.result for row in Task.select().where(Task.status == "done")) == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("broken", [0, 5])  # 0: the first part of the pool, one item, has none with an identity
def test_a_pool_works_the_items_beside_one_without_an_identity(database_url, broken):
    batch = batch_tasks.CalibratedBatch(numbers=list(range(8)), broken=broken, processes=2)
    messages: list[str] = []
    batch.set_status_message = messages.append
    with pytest.raises(BatchError, match=r"^1 item has no identity"):
        batch.run()
    assert messages[-1] == "8 of 8 items done or tried, 1 failed"
    recorded = {row.task_id for row in Task.select().where(Task.status == "done")}
    assert recorded == {batch_tasks.Calibrated(n=n).task_id for n in range(8) if n != broken}
    assert Task.select().count() == 7
    result = luigi.build([batch], local_scheduler=True, log_level="WARNING", detailed_summary=True)
    assert result.status == luigi.execution_summary.LuigiStatusCode.FAILED  # it ran, and failed: not unschedulable


def test_an_item_whose_requires_raises_when_asked_again_fails_alone(database_url):
    """A requires() that names an input the first time and raises after: each item fails, where it was asked
    again (the names of what item 2 lacks; item 1's task, made to run), not the batch's chunk."""
    assert luigi.build([Prepared(n=1)], local_scheduler=True, log_level="WARNING")
    batch_tasks.Fickle.calls = {}
    with pytest.raises(BatchError, match="2 of 2 items failed"):
        batch_tasks.FickleBatch(numbers=[1, 2]).run()
    rows = {row.task_id: row for row in Task.select().where(Task.task_name == "Fickle")}  # no hash: it raises
    row = rows[batch_tasks.Fickle(n=1).task_id]
    assert row.status == "failed" and row.error == "ValueError: asked 2 times", row.error
    row = rows[batch_tasks.Fickle(n=2).task_id]
    assert row.status == "failed" and row.error.startswith("MissingInputError: "), row.error


def test_a_parameter_set_luigi_refuses_fails_the_batch_and_the_others_run(database_url):
    MeasureStars.processed = []
    batch = batch_tasks.GappyStars(stars=0)
    with pytest.raises(BatchError, match=r"1 item has no identity .*cannot make MeasureStar\(\*\*\{'band': 'r'\}\)"):
        batch.run()
    assert MeasureStars.processed == [0, 2]
    assert Task.select().where(Task.status == "done").count() == 2


@pytest.mark.parametrize("processes", [1, 2])
def test_a_parameter_set_given_twice_is_recorded_and_counted_once(database_url, tmp_path, processes):
    listing = tmp_path / "stars"
    listing.write_text("".join(f"{star}\n" for star in [0, 1, 2, 1, 3, 0, 1]))
    MeasureStars.processed = []
    messages: list[str] = []
    batch = batch_tasks.ListedStars(listing=str(listing), fail_on=1, processes=processes)
    batch.set_status_message = messages.append
    with pytest.raises(BatchError, match="^1 of 4 items failed"):
        batch.run()
    assert Task.select().where(Task.status == "done").count() == 3
    assert messages[-1] == "7 of 7 items done or tried, 1 failed"
    if processes == 1:  # worked here, each once (a pool hashes the items, in parts: only its records are counted)
        assert MeasureStars.processed == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_batch_record_that_deadlocks_with_a_forget_is_written_again_after_it(postgres_url):
    """A forget --cascade locks a task, then what needs it; a batch's record locks its inputs in the order of their
    keys, which can be the other order (a task's row is made when it is claimed: a Yielder's before the Leaf it
    yields). PostgreSQL ends the deadlock by rolling one back; the batch's record runs again after the forget, and
    finds its inputs gone. Before, the chunk's records were lost and the batch failed with the deadlock's error."""
    import psycopg2

    from tests.dynamic_tasks import Leaf, Yielder

    assert luigi.build([Yielder(n=1)], local_scheduler=True, log_level="WARNING")
    keys = {name: bytes.fromhex(task_hash(task)) for name, task in [("yielder", Yielder(n=1)), ("leaf", Leaf(i=0))]}
    forgetting = psycopg2.connect(postgres_url)
    cursor = forgetting.cursor()
    cursor.execute("SET deadlock_timeout = '60s'")  # the batch, whose check comes first, is the one rolled back
    cursor.execute("SELECT pk FROM astra.task WHERE task_hash = %s FOR UPDATE", (keys["leaf"],))  # level 0
    batch, ended = _running(batch_tasks.UsesYielderAndLeafs(numbers=[3]))
    _wait_for_a_lock(postgres_url, what="the batch's record to hold the Yielder and wait for the Leaf")
    cursor.execute("SELECT pk FROM astra.task WHERE task_hash = %s FOR UPDATE", (keys["yielder"],))  # level 1
    cursor.execute("DELETE FROM astra.dependency WHERE requires_pk IN (SELECT pk FROM astra.task WHERE task_hash = "
                   "ANY(%s))", ([keys["leaf"], keys["yielder"]],))  # fmt: skip
    cursor.execute("DELETE FROM astra.task WHERE task_hash = ANY(%s)", ([keys["leaf"], keys["yielder"]],))
    forgetting.commit()
    forgetting.close()
    batch.join(timeout=60)
    assert isinstance(ended[0], BatchError) and "forgotten while the batch worked" in str(ended[0]), ended
    row = _recorded(batch_tasks.UsesYielderAndLeaf(n=3))
    assert row.status == "failed" and "forgotten while the batch worked" in row.error, row.error


def _running(batch: luigi.Task) -> tuple[threading.Thread, list[BaseException | None]]:
    """``batch.run()`` in a thread; the list gets what it ended with (None: it returned)."""
    ended: list[BaseException | None] = []

    def run() -> None:
        try:
            batch.run()
            ended.append(None)
        except BaseException as exc:
            ended.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, ended


def _wait_for_a_lock(url: str, what: str) -> None:
    """Until a session of the database at ``url`` waits for a lock."""
    import psycopg2

    with contextlib.closing(psycopg2.connect(url)) as watching:
        watching.autocommit = True  # each look a new snapshot of pg_stat_activity
        cursor = watching.cursor()

        def waiting() -> bool:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = %s",
                           (watching.info.dbname,))  # fmt: skip
            return cursor.fetchone()[0] > 0

        wait_for(waiting, what=what)


def test_forget_cascade_of_an_item_reaches_what_was_made_from_its_batch(database_url, capsys):
    """A batch has no record of its own: a task that requires it, or yields it, links to each item instead. Before:
    no link, so forgetting an item with --cascade left the summary done, made from a result that is gone."""
    summaries = [SummariseStars(stars=25), SummariseStarsYielded(stars=25)]
    assert luigi.build(summaries, local_scheduler=True, log_level="WARNING")
    items = {task_hash(MeasureStar(star=star)) for star in range(25)}
    for summary_task in summaries:
        record = Task.get(Task.task_hash == task_hash(summary_task))
        linked = Task.select(Task.task_hash).join(Dependency, on=Dependency.requires == Task.pk)
        assert {t.task_hash for t in linked.where(Dependency.task == record.pk)} == items
    shown = main(capsys, "tasks", "show", str(record.pk)).stdout
    assert "requires (25)" in shown and "  ... and 5 more\n" in shown, shown
    third = Task.get(Task.task_hash == task_hash(MeasureStar(star=3)))
    forgot = main(capsys, "tasks", "forget", str(third.pk), "--cascade", "--yes")
    assert forgot.returncode == 0 and "3 tasks to forget" in forgot.stdout, forgot.stdout + forgot.stderr
    assert sorted(t.task_name for t in Task.select()) == ["MeasureStar"] * 24
    forget_cached()
    MeasureStars.processed = []
    assert luigi.build(summaries, local_scheduler=True, log_level="WARNING")
    assert MeasureStars.processed == [3]  # the item alone, then both summaries again
    assert Task.select().where(Task.task_name.startswith("SummariseStars"), Task.status == "done").count() == 2


def test_a_summary_whose_batch_loses_an_item_while_it_runs_is_not_recorded_done(database_url):
    """Its record checks that every item is still done, and says which one is not, in one line."""
    assert not luigi.build([SummariseStarsForgetting(stars=25)], local_scheduler=True, log_level="WARNING")
    record = Task.get(Task.task_hash == task_hash(SummariseStarsForgetting(stars=25)))
    assert record.status == "failed" and "\n" not in record.error, record.error
    assert record.error.startswith("InputLostError: astra: MeasureStar(star=3, band=g, "), record.error
    assert ", which this task needs, is not recorded done any more" in record.error, record.error
    assert not Dependency.select().where(Dependency.task == record.pk).exists()


def test_read_many_reads_the_results_of_a_batchs_items(database_url):
    """The input of a batch is a BatchTarget: read_many gives its items' results as one list, in their order, and so
    does its read(). Before: read_many(flatten(self.input())) failed with AttributeError, as it had no task_hash
    (and before that, the batch's input was an empty list that flatten() dropped)."""
    summaries = [SummariseStarsRead(stars=5), SummariseStars(stars=5), SummariseStarsYielded(stars=5)]
    assert luigi.build(summaries, local_scheduler=True, log_level="WARNING")
    read, alone, yielded = (Task.get(Task.task_hash == task_hash(task)).result for task in summaries)
    assert read == {"stars": [0, 10, 20, 30, 40], "prepared": {"n": 5}, "read": [0, 10, 20, 30, 40]}
    assert alone == yielded == {"sum": 100}  # read_many(self.input()), and the read() of what run() yielded


def test_read_many_gives_back_the_structure_of_self_input(database_url):
    """``read_many(self.input())`` of a task whose requires() is a dict: it took the dict's keys for targets and
    failed with "AttributeError: 'str' object has no attribute 'task_hash'". Dicts and nested lists come back as
    they went in; what is no astra target is named."""
    import astra
    from tests.example_tasks import Leaf

    assert luigi.build([Leaf(i=1), Leaf(i=2), MeasureStars(stars=2)], local_scheduler=True, log_level="WARNING")
    inputs = {
        "one": Leaf(i=1).output(),
        "more": [Leaf(i=2).output(), {"not done": Leaf(i=3).output()}],
        "batch": MeasureStars(stars=2).output(),
    }
    expected = {"one": {"square": 1}, "more": [{"square": 4}, {"not done": None}], "batch": [0, 10]}
    assert astra.read_many(inputs) == expected
    assert astra.read_many([inputs["one"], (inputs["batch"],)]) == [{"square": 1}, [[0, 10]]]
    with pytest.raises(TypeError, match=r"read_many: Leaf\(i=1\) is no astra target \(a Leaf\)"):
        astra.read_many({"task, not its output": Leaf(i=1)})


def test_the_shares_of_a_batch_keep_each_chain_together():
    """Items linked by what they require go to the share of the first of them; the others by place mod shares."""
    from astra.batch import _numbered, _Unidentified
    from astra.executors.shares import shares_of

    batch = StarNights(stars=3, nights=4)  # places: star s's night n at 3n + s
    placed = shares_of(_numbered(StarNight, batch.parameter_sets(), _Unidentified()), 2)
    assert placed.chained and placed.shares == [0, 1, 0] * 4  # star 2's chain starts at place 2: share 0
    assert [placed.share(place) for place in range(12)] == placed.shares
    lone = shares_of(_numbered(MeasureStar, [{"star": star} for star in range(5)], _Unidentified()), 2)
    assert not lone.chained and lone.shares == [0, 1, 0, 1, 0]
    repeated = shares_of(_numbered(MeasureStar, [{"star": star} for star in (0, 1, 2, 1)], _Unidentified()), 3)
    assert repeated.chained and repeated.shares == [0, 1, 2, 1]  # the repeat at place 3 joins place 1's share
    # A chain given backwards, and a first link that is not in the batch: linked all the same.
    backwards = shares_of(_numbered(ChainStep, [{"k": k} for k in (5, 4, 3, 2)], _Unidentified()), 3)
    assert backwards.chained and backwards.shares == [0, 0, 0, 0]


def test_forget_cascade_goes_through_a_wrapper_task(database_url, capsys):
    """A luigi.WrapperTask has no output of its own: a task that requires one is linked to what the wrapper requires
    (here a batch's items and a lone task). Before: to nothing, so a cascade stopped at the wrapper."""
    assert luigi.build([SummariseWrapped(stars=3)], local_scheduler=True, log_level="WARNING")
    for forgotten in (MeasureStar(star=1), Prepared(n=3)):
        pk = Task.get(Task.task_hash == task_hash(forgotten)).pk
        assert main(capsys, "tasks", "forget", str(pk), "--cascade", "--yes").returncode == 0
        assert not Task.select().where(Task.task_name == "SummariseWrapped").exists()
        forget_cached()
        assert luigi.build([SummariseWrapped(stars=3)], local_scheduler=True, log_level="WARNING")


@pytest.mark.parametrize("nights", [1, 2])  # a plain split, and chains
@pytest.mark.parametrize("drift", ["drop", "add"])
def test_a_share_whose_parameter_sets_are_not_those_split_fails_and_works_nothing(
    sqlite_url, monkeypatch, drift, nights
):
    """A share recomputes the split from parameter_sets(); when they changed since the luigi process split them (a
    folder's files, the time), its items would not be those the luigi process waits for: some worked twice, some
    by no share. The share says so, and works nothing."""
    from astra.executors.shares import SplitChangedError, shares_of

    batch = DriftingNights(stars=3, nights=nights, drift=drift)
    placed = shares_of(batch._numbered_items(), 2)
    assert placed.chained == (nights > 1)
    split = placed.split(3 * nights, [0, 1])
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")  # inside the element, the sets drift
    with pytest.raises(SplitChangedError, match="not those the luigi process split into shares"):
        batch.work(share=(1, 2), chained=placed.chained, split=split)
    assert Task.select().count() == 0


def test_a_share_leaves_the_parameter_sets_added_after_the_split_to_the_next_run(sqlite_url, monkeypatch):
    from astra.executors.shares import shares_of

    batch = DriftingNights(stars=3, nights=2, drift="append")
    placed = shares_of(batch._numbered_items(), 2)
    split = placed.split(6, [0, 1])
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    for share in (0, 1):
        batch.work(share=(share, 2), chained=placed.chained, split=split)
    assert Task.select().where(Task.status == "done").count() == 6
    assert _recorded(StarNight(star=-1, night=0)) is None


def test_a_batch_forgotten_before_what_needs_it_runs_is_not_retried_in_a_loop(database_url):
    """luigi reschedules a task whose input is missing at run time at most [worker] max_reschedules times, counting
    the input by its text; a BatchTarget's held its address, new at each try, so the task failed again and again
    (34 times on SQLite) until luigi's scheduler let the batch run again."""
    NeedsForgottenStars.failures.clear()
    assert not luigi.build([NeedsForgottenStars(stars=3)], local_scheduler=True, log_level="CRITICAL")
    assert len(NeedsForgottenStars.failures) == 2, NeedsForgottenStars.failures
    assert "(BatchTarget(ForgottenStars_" in NeedsForgottenStars.failures[0]
