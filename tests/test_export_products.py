"""Products a release can ship: exports that carry units, descriptions and provenance; plots labelled with them;
output rows in ``astra tasks show``; export trouble in one line; empty arrays that keep their shape."""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
import subprocess
import uuid

import luigi
import numpy as np
import peewee
import pytest
from astropy.io import fits
from astropy.table import Table

from astra import outputs
from astra.database import output_tables
from astra.database.connection import is_postgres
from astra.identity import task_version
from astra.targets import forget_cached
from astra.version import __version__
from tests.helpers import ASTRA, astra, astra_many, main, one_line_error, subprocess_env, with_password
from tests.output_tasks import FindLines, Lines, Sparse, SparseFit, Star, StarFit

PASSWORD = "pw-never-shown-9"

# Reading a FITS file back, astropy warns that "dex" is no FITS unit (it keeps it as written, as astra wrote it).
pytestmark = pytest.mark.filterwarnings("ignore:'dex' did not parse:astropy.units.UnitsWarning")


def build(*tasks: luigi.Task) -> bool:
    forget_cached()
    luigi.task_register.Register.clear_instance_cache()
    return luigi.build(list(tasks), local_scheduler=True, log_level="WARNING")


@pytest.fixture
def stars_db(database_url):
    """Described rows of three stars (one of them of 8 rows), and $ASTRA_DATABASE_URL with a password in it."""
    if is_postgres():
        output_tables.create([Star, Lines])
    assert build(StarFit(star="alpha"), StarFit(star="beta", rows=8), StarFit(star="Ëta Carinae"))
    return with_password(database_url, PASSWORD) if database_url.startswith("postgres") else database_url


def test_fits_ecsv_and_parquet_carry_units_descriptions_and_provenance(stars_db, tmp_path):
    env = {"ASTRA_DATABASE_URL": stars_db}
    path = tmp_path / "stars.fits"
    started = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    made, ecsv = astra_many(
        ("results", "StarFit", "--where", "star=alpha", "--format", "fits", "-o", str(path)),
        ("results", "StarFit", "--where", "star=beta", "--format", "ecsv"),
        env=env,
    )
    assert made.returncode == 0, made.stderr
    table = Table.read(path)
    assert table.colnames == ["task_pk", "star", "rows", "version", "completed", "teff", "logg", "spectrum"]
    assert str(table["teff"].unit) == "K" and str(table["logg"].unit) == "dex"
    assert table["spectrum"].unit.is_equivalent("erg / (Angstrom cm2 s)") and table["spectrum"].shape == (1, 10)
    header = fits.getheader(path, 1)
    comments = {header[f"TTYPE{i}"]: header.get(f"TCOMM{i}") for i in range(1, header["TFIELDS"] + 1)}
    assert comments["teff"] == "effective temperature"
    assert comments["logg"] == "surface gravity, log10(g / (cm s^-2))"
    assert comments["star"] == "name of the star"  # the luigi parameter's description
    assert comments["completed"].startswith("when the task was recorded done")
    assert header["TUNIT6"] == "K"
    assert header["ASTRAVER"] == __version__ and header["TASKNAME"] == "StarFit"
    assert header["TASKVERS"] == task_version(StarFit)  # the declared version's rows, as astra results gives
    assert header["QUERY"] == "StarFit --where=star=alpha"
    assert PASSWORD not in repr(header) and header["DATABASE"] == stars_db.replace(PASSWORD, "***")
    written = datetime.datetime.fromisoformat(header["DATE"]).replace(tzinfo=datetime.timezone.utc)
    assert started - datetime.timedelta(seconds=1) <= written <= datetime.datetime.now(datetime.timezone.utc)

    assert ecsv.returncode == 0, ecsv.stderr
    table = Table.read(ecsv.stdout, format="ascii.ecsv")
    assert len(table) == 8 and str(table["teff"].unit) == "K" and table["teff"].description == "effective temperature"
    assert table.meta["QUERY"] == "StarFit --where=star=beta" and PASSWORD not in ecsv.stdout

    pyarrow = pytest.importorskip("pyarrow.parquet")
    parquet = tmp_path / "stars.parquet"
    made = astra("results", "StarFit", "--format", "parquet", "-o", str(parquet), env=env)
    assert made.returncode == 0, made.stderr
    schema = pyarrow.read_schema(parquet)
    assert schema.field("teff").metadata == {b"description": b"effective temperature", b"unit": b"K"}
    assert schema.field("star").metadata[b"description"] == b"name of the star"
    assert schema.metadata[b"TASKNAME"] == b"StarFit" and PASSWORD.encode() not in schema.metadata[b"DATABASE"]
    read = pyarrow.read_table(parquet)
    assert sorted(read.column("star").to_pylist()) == ["alpha"] + ["beta"] * 8 + ["Ëta Carinae"]
    assert len(read.column("spectrum")[0].as_py()) == 10


@pytest.mark.parametrize("backend", ["sqlite"])  # the writer does not depend on the database
def test_a_value_fits_cannot_hold_is_one_line_and_no_file(stars_db, tmp_path, capsys):
    path = tmp_path / "stars.fits"
    refused, chosen = (
        main(capsys, "results", "StarFit", *args, "--format", "fits", "-o", str(path))
        for args in ((), ("--where", "star=Ë*", "--columns", "teff,logg"))
    )
    line = one_line_error(refused, 1)
    assert "FITS holds ASCII text only, and column 'star' holds 'Ëta Carinae'" in line and "--format parquet" in line
    # Left out, the column is no trouble; the query in the header is escaped to ASCII.
    assert chosen.returncode == 0, chosen.stderr
    assert Table.read(path)["teff"].tolist() == [4000.0]
    assert fits.getheader(path, 1)["QUERY"] == "StarFit '--where=star=\\xcb*'"


@pytest.mark.parametrize("backend", ["sqlite"])  # the writer does not depend on the database
def test_export_trouble_is_one_line_and_leaves_no_partial_file(stars_db, tmp_path, capsys):
    env = {"ASTRA_DATABASE_URL": stars_db}
    missing = tmp_path / "no-such-folder" / "stars.fits"
    full = [  # the first as a command, the others in this process
        astra("results", "StarFit", "--format", "csv", "-o", str(missing), env=env),
        main(capsys, "results", "StarFit", "--plot", "teff", "-o", str(missing.with_suffix(".png"))),
        main(capsys, "results", "StarFit", "--where", "star=alpha", "--format", "fits", "-o", "/dev/full"),
    ]
    for made in full[:2]:
        assert one_line_error(made, 1) == (
            f"astra: cannot write {made.args[-1]}: the folder {missing.parent} does not exist (create it first)"
        )
    assert one_line_error(full[2], 1) == "astra: cannot write /dev/full: No space left on device"
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # written to, not replaced by a file
    assert not missing.parent.exists()

    # A disk that fills up half way: the file asked for keeps its old content, and no partial file is left.
    disk = tmp_path / "tiny"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        target = disk / "stars.fits"
        target.write_bytes(b"the previous export\n")
        assert build(StarFit(star="big", rows=2000))  # some 200 kB of FITS
        made = astra("results", "StarFit", "--where", "star=big", "--format", "fits", "-o", str(target), env=env)
        assert one_line_error(made, 1) == f"astra: cannot write {target}: No space left on device"
        assert target.read_bytes() == b"the previous export\n" and os.listdir(disk) == ["stars.fits"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("fmt", ["csv", "fits"])  # JSON is written as CSV is
def test_a_descriptor_a_symlink_or_a_pipe_is_written_not_replaced(sqlite_url, tmp_path, fmt):
    """``-o /dev/stdout`` whose stdout the shell sent to a file, or to a pipe, and a symlink to a file of the user's:
    the file, pipe or link's target gets the table, and /dev/stdout or the link stays what it was. (Replacing the
    path put a regular file in place of /dev/stdout, and left the shell's file empty.)"""
    assert build(StarFit(star="beta", rows=8))
    env = subprocess_env({"ASTRA_DATABASE_URL": sqlite_url})
    descriptor = tmp_path / "stdout"  # as /dev/stdout is, without touching the machine's own
    descriptor.symlink_to("/proc/self/fd/1")
    astra_command = f"{ASTRA} results StarFit --where star=beta --format {fmt} -o"
    out, piped = tmp_path / "out", tmp_path / "piped"
    before = "" if fmt == "fits" else f"echo before > {out} && "  # astropy writes FITS to an empty file only
    shell = f"{before}{astra_command} {descriptor} >> {out} && {astra_command} /dev/stdout | cat > {piped}"
    made = subprocess.run(["sh", "-c", shell], env=env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    assert descriptor.is_symlink() and os.readlink(descriptor) == "/proc/self/fd/1"
    assert os.path.islink("/dev/stdout")
    if before:
        assert out.read_bytes().startswith(b"before\n")  # appended, as the shell asked
        out.write_bytes(out.read_bytes()[len(b"before\n") :])
    for name in ("out", "piped"):
        if fmt == "fits":
            assert len(Table.read(tmp_path / name)) == 8, name
        else:
            assert len(Table.read(tmp_path / name, format="ascii.csv")) == 8, name

    (tmp_path / "v2").mkdir()
    release = tmp_path / "v2" / f"stars.{fmt}"
    release.write_text("the previous export\n")
    latest = tmp_path / f"latest.{fmt}"
    latest.symlink_to(release)
    made = subprocess.run(
        [str(ASTRA), *astra_command.split()[1:], str(latest)], env=env, capture_output=True, text=True, timeout=300
    )
    assert made.returncode == 0, made.stderr
    assert latest.is_symlink() and os.readlink(latest) == str(release)
    assert release.read_text(errors="replace") != "the previous export\n" and sorted(os.listdir(release.parent)) == [
        release.name
    ]


def svg_text(path) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", path.read_text())


@pytest.mark.parametrize("backend", ["sqlite"])  # drawing does not depend on the database
def test_plots_are_labelled_with_descriptions_and_units_and_take_bins_and_log(stars_db, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    config = tmp_path / "matplotlib"
    config.mkdir()
    (config / "matplotlibrc").write_text("svg.fonttype: none\n")  # text as text, for the test to read
    env = {"ASTRA_DATABASE_URL": stars_db, "MPLCONFIGDIR": str(config)}
    assert build(StarFit(star="many", rows=6000))
    histogram, few, many = tmp_path / "h.svg", tmp_path / "few.svg", tmp_path / "many.png"
    made = astra_many(
        ("results", "StarFit", "--plot", "teff", "--bins", "7", "--log", "y", "-o", str(histogram)),
        ("results", "StarFit", "--where", "star=beta", "--plot", "teff,logg", "--log", "x", "-o", str(few)),
        ("results", "StarFit", "--plot", "teff,logg", "--bins", "40", "-o", str(many)),
        env=env,
    )
    # Usage errors, in this process (three processes drawing at once are enough for a busy machine).
    made += [main(capsys, "results", "StarFit", "--plot", "teff", "--log", "z", "-o", str(many))]
    made += [main(capsys, "results", "StarFit", "--bins", "3")]
    made += [main(capsys, "results", "StarFit", "--plot", "teff", "--bins", "100000000", "-o", str(many))]
    assert made[0].returncode == 0, made[0].stderr
    assert made[0].stderr.strip() == f"drew 6010 of 6010 rows into {histogram} (histogram of 7 bins, log y)"
    assert "teff: effective temperature [K]" in svg_text(histogram) and "rows" in svg_text(histogram)
    assert made[1].stderr.strip() == f"drew 8 of 8 rows into {few} (scatter plot, log x)"
    assert "logg: surface gravity, log10(g / (cm s^-2)) [dex]" in svg_text(few)
    assert made[2].stderr.strip() == f"drew 6010 of 6010 rows into {many} (2-D histogram of 40 x 40 bins)"
    assert many.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "--log" in one_line_error(made[3], 2) and "'z' is not one of 'x', 'y', 'xy'" in made[3].stderr
    assert one_line_error(made[4], 2).startswith("astra: --bins shapes a plot: give --plot too")
    assert "100000000 is not in the range 1<=x<=1000" in one_line_error(made[5], 2)  # before: out of memory


def test_tasks_show_shows_the_output_rows(stars_db):
    env = {"ASTRA_DATABASE_URL": stars_db}
    found = json.loads(astra("tasks", "list", "--name", "StarFit", "--where", "star=beta", "--json", env=env).stdout)
    pk = str(found[0]["pk"])
    shown, as_json = astra_many(("tasks", "show", pk), ("tasks", "show", pk, "--json"), env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.split("output rows ", 1)[1].splitlines()
    # The table as a user names it (astra.test_star, or test_star on SQLite where it is in no schema).
    assert re.fullmatch(r"\(8 in (astra\.)?test_star, the first 5 shown; all: astra results StarFit\)", lines[0])
    assert lines[1].split() == ["teff", "logg", "spectrum"] and lines[2].split()[:2] == ["K", "dex"]
    assert [float(line.split()[0]) for line in lines[4:]] == pytest.approx([4000 + 3000 * i / 7 for i in range(5)])
    record = json.loads(as_json.stdout)
    assert record["result"] is None
    assert record["output"]["table"].endswith("test_star") and record["output"]["rows"] == 8
    assert [row["teff"] for row in record["output"]["first_rows"]] == pytest.approx(
        [4000 + 3000 * i / 7 for i in range(5)]
    )
    assert record["output"]["first_rows"][1]["spectrum"] == [1.0] * 10


def test_empty_arrays_keep_their_shape(database_url, tmp_path, capsys):
    import pyarrow.parquet

    if is_postgres():
        output_tables.create([Lines])
    assert build(FindLines(n=0), FindLines(n=2))
    assert FindLines(n=0).output().read().lines.shape == (0, 3)
    assert FindLines(n=2).output().read().lines.shape == (2, 3)
    # Where the shape is not declared, an empty (0, 3) array would read back as (0,) on PostgreSQL: refused on
    # both backends, saying what to declare, and the task is not done.
    assert not build(FindLines(n=0, undeclared=True))
    shown = json.loads(main(capsys, "tasks", "list", "--name", "FindLines", "--status", "failed", "--json").stdout)
    assert len(shown) == 1
    error = json.loads(main(capsys, "tasks", "show", str(shown[0]["pk"]), "--json").stdout)["error"]
    assert "Lines.lines_undeclared: an empty array of shape (0, 3) would read back as (0,) on PostgreSQL" in error
    assert "astra.ArrayField('float64', shape=(None, 3))" in error
    assert build(FindLines(n=1, undeclared=True))  # a (1, 3) array keeps its shape on both without a declaration
    # Exported alone, empty arrays make a column of shape (1, 0, 3): Parquet has lists for it (it refused).
    path = tmp_path / "lines.parquet"
    made = main(
        capsys, "results", "FindLines", "--where", "n=0", "--columns", "n,lines", "--format", "parquet", "-o", str(path)
    )
    assert made.returncode == 0, made.stderr
    assert pyarrow.parquet.read_table(path).to_pydict() == {"n": [0], "lines": [[]]}


@pytest.mark.parametrize("chunk", [1, 1000])
def test_a_missing_array_is_missing_in_every_format(database_url, tmp_path, capsys, monkeypatch, chunk):
    """A task without an array (null) exports no array: an empty cell in CSV as for a missing number, null in JSON,
    masked in FITS and ECSV, null in Parquet; never zeros, nor an array of nulls, that a reader would take as data.
    Streamed a task at a time or whole, the same."""
    import pyarrow.parquet

    from astra import results_table

    if is_postgres():
        output_tables.create([Sparse])
    assert build(*[SparseFit(star=i) for i in range(4)])
    monkeypatch.setattr(results_table, "TASKS_PER_CHUNK", chunk)
    asked = ("results", "SparseFit", "--columns", "star,teff,flux,counts")
    header, *rows = main(capsys, *asked, "--format", "csv").stdout.splitlines()
    assert header == "star,teff,flux,counts"
    assert sorted(rows) == [  # in the order luigi ran them
        '0,5000.0,"[1.5, 1.5, 1.5]","[0, 1, 2]"',
        "1,,,",
        '2,5002.0,"[1.5, 1.5, 1.5]","[0, 1, 2]"',
        "3,,,",
    ]
    records = json.loads(main(capsys, *asked, "--format", "json").stdout)
    assert sorted((r["star"], r["flux"], r["counts"]) for r in records) == [
        (0, [1.5] * 3, [0, 1, 2]),
        (1, None, None),
        (2, [1.5] * 3, [0, 1, 2]),
        (3, None, None),
    ]
    for fmt in ("fits", "ecsv", "parquet"):
        path = tmp_path / f"sparse.{fmt}"
        assert main(capsys, *asked, "--format", fmt, "-o", str(path)).returncode == 0
        if fmt == "parquet":
            made = pyarrow.parquet.read_table(path).sort_by("star").to_pydict()
            assert made["flux"] == [[1.5] * 3, None, [1.5] * 3, None] and made["counts"][1] is None
            continue
        made = Table.read(path)
        made.sort("star")
        for name in ("flux", "counts"):
            assert made[name].mask.all(axis=1).tolist() == [False, True, False, True], (fmt, name)
            assert made[name][2].tolist() == ([1.5] * 3 if name == "flux" else [0, 1, 2])
    # A missing boolean: FITS's null for a logical, a zero byte (astropy wrote True: its fill value).
    path = tmp_path / "flags.fits"
    assert (
        main(capsys, "results", "SparseFit", "--columns", "star,ok", "--format", "fits", "-o", str(path)).returncode
        == 0
    )
    with fits.open(path, logical_as_bytes=True) as made:
        assert sorted(zip(made[1].data["star"], made[1].data["ok"])) == [(0, b"T"), (1, b""), (2, b"F"), (3, b"")]
    ecsv = Table.read(
        main(capsys, "results", "SparseFit", "--columns", "star,ok", "--format", "ecsv").stdout, format="ascii.ecsv"
    )
    ecsv.sort("star")
    assert ecsv["ok"].mask.tolist() == [False, True, False, True] and ecsv["ok"][:1].tolist() == [True]


def test_units_must_name_fields(sqlite_url):
    class Bad(outputs.OutputModel):
        teff = peewee.DoubleField()

        class Meta:
            table_name = f"bad_{uuid.uuid4().hex[:8]}"
            units = {"tef": "K"}

    with pytest.raises(TypeError, match=r"Bad.Meta.units names 'tef', which is not a field \(its fields: teff\)"):
        outputs.units(Bad)
    assert outputs.units(Star) == {"teff": "K", "logg": "dex", "spectrum": "erg / (Angstrom cm2 s)"}
    assert np.dtype(Lines.lines.dtype) == np.float64 and Lines.lines.empty_shape == (0, 3)
