"""Records made under an older contract are not silently done (issue 18, item 3): EstimateSNR tasks recorded by the
first release (commit 9abb7da), when EstimateSNR had a JSON result and no output table, are carried into astra.snr by
``astra db migrate``, so that a new SummariseSNR over them counts every one, without running them again."""

from __future__ import annotations

import json

import pytest

from tests.helpers import (
    astra,
    luigi_error_line,
    old_schema_database,
    raw_sql,
    run_luigi,
    run_old_luigi,
    summary,
    unpack_commit,
    using_database,
)

FIRST = "9abb7da"


@pytest.fixture(scope="module")
def first_release(tmp_path_factory):
    """astra, its schema and the example workflows of the first release."""
    return unpack_commit(FIRST, ["astra", "schema", "workflows"], tmp_path_factory.mktemp("astra-first"))


@pytest.fixture
def first_release_database(backend, tmp_path, request, first_release, monkeypatch):
    """A database in which the first release ran its SummariseSNR over its 5 example spectra."""
    url = old_schema_database(backend, tmp_path, request, first_release)
    ran = run_old_luigi(first_release, url, "--module", "workflows", "SummariseSNR")
    assert "This progress looks :)" in ran.stdout, ran.stdout
    with using_database(url, monkeypatch):
        yield url


@pytest.mark.slow
def test_first_release_estimates_are_carried_into_the_output_table(first_release_database, first_release):
    url = first_release_database
    spectra = str(first_release / "workflows" / "data" / "spectra")
    old = {
        path: json.loads(result) if isinstance(result, str) else result
        for path, result in raw_sql(
            url,
            "select p.parameter_value, t.result from astra.task t join astra.task_parameter tp on tp.task_pk = t.pk "
            "join astra.parameter p on p.pk = tp.parameter_pk where t.task_name = 'EstimateSNR'",
        )
    }
    assert len(old) == 5 and all(set(result) == {"snr", "n_good_pixels"} for result in old.values())

    upgraded = astra("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    summarise = ("--module", "workflows", "SummariseSNR", "--spectra-dir", spectra, "--pattern", "spec-*.fits")
    line = luigi_error_line(run_luigi(*summarise, "--local-scheduler"))
    assert "done EstimateSNR" in line and "run `astra db migrate --module workflows`" in line, line
    init = astra("db", "init", "--module", "workflows")  # what the user ran: it says the same
    assert init.returncode == 1 and "astra db migrate --module workflows" in init.stderr, init.stdout + init.stderr

    migrated = astra("db", "migrate", "--module", "workflows")
    assert migrated.returncode == 0, migrated.stderr
    assert "their JSON results become rows" in migrated.stdout, migrated.stdout
    shown = astra("results", "EstimateSNR", "--module", "workflows", "--json")
    assert shown.returncode == 0, shown.stderr
    carried = {row["spectrum_path"]: row for row in json.loads(shown.stdout)}
    assert sorted(carried) == sorted(old)
    for path, result in old.items():
        assert carried[path]["snr"] == pytest.approx(result["snr"])
        assert carried[path]["n_good_pixels"] == result["n_good_pixels"]
        assert carried[path]["wavelength_min"] is None  # the first release did not measure it

    ran = run_luigi(*summarise, "--local-scheduler")
    assert "This progress looks :)" in ran.stdout, ran.stdout
    assert "1 ran successfully" in summary(ran.stdout) and "5 complete ones" in summary(ran.stdout), ran.stdout
    (result,) = raw_sql(url, "select result from astra.task where task_name = 'SummariseSNR' order by pk desc limit 1")[
        0
    ]
    assert (json.loads(result) if isinstance(result, str) else result)["n_spectra"] == 5
