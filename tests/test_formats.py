"""EstimateSNR reads every spectrum layout SDSS-V users have; the files are written here to the SDSS data model.

The writers below follow the data model (https://data.sdss.org/datamodel/) independently of workflows/formats.py,
and the expected ratio is worked out here from the arrays written, not by the code under test.
"""

from __future__ import annotations

from pathlib import Path

import luigi
import numpy as np
import pytest
from astropy.io import fits

import astra
from astra.database import Task
from tests.helpers import run_luigi
from workflows import EstimateSelectedSNR, EstimateSNR
from workflows.formats import (
    UnknownLayoutError,
    load_spectrum,
    read_spectrum,
    signal_to_noise,
    wavelength_range,
)

N_PIXELS = 500


def pixels(seed: int, shape: tuple[int, ...] = (N_PIXELS,)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flux, 1-sigma error and mask; a few masked pixels with absurd flux, a few with no error estimate."""
    rng = np.random.default_rng(seed)
    snr = rng.uniform(5, 60)
    flux = 1.0 + 0.3 * rng.random(shape)
    error = flux / snr * rng.uniform(0.8, 1.2, shape)
    mask = np.zeros(shape, dtype=np.int32)
    bad = rng.random(shape) < 0.05
    mask[bad] = 1 << 4
    flux[bad] = 1e4
    error[rng.random(shape) < 0.02] = 0.0  # no estimate: ivar 0, not a good pixel
    return flux.astype(np.float32), error.astype(np.float32), mask


def expected(flux: np.ndarray, error: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    flux, error, mask = (np.asarray(a, dtype=float).ravel() for a in (flux, error, mask))
    good = (error > 0) & (mask == 0)
    return float(np.median(flux[good] / error[good])), int(good.sum())


def ivar_of(error: np.ndarray) -> np.ndarray:
    return np.where(error > 0, 1 / np.where(error > 0, error, 1) ** 2, 0).astype(np.float32)


def error_of(ivar: np.ndarray) -> np.ndarray:
    return np.where(ivar > 0, 1 / np.sqrt(np.where(ivar > 0, ivar, 1)), 0)


def write_spec(path: Path, seed: int, lite: bool = True) -> tuple[float, int]:
    """BOSS spec/spec-lite: HDU1 COADD table (flux, loglam, ivar, and_mask, ...), HDU2 SPALL, HDU3 ZALL."""
    flux, error, mask = pixels(seed)
    ivar = ivar_of(error)
    coadd = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="FLUX", format="E", array=flux),
            fits.Column(name="LOGLAM", format="E", array=np.linspace(3.55, 4.02, N_PIXELS, dtype=np.float32)),
            fits.Column(name="IVAR", format="E", array=ivar),
            fits.Column(name="AND_MASK", format="J", array=mask),
            fits.Column(name="OR_MASK", format="J", array=mask),
            fits.Column(name="WDISP", format="E", array=np.ones(N_PIXELS, dtype=np.float32)),
        ],
        name="COADD",
    )
    extra = [fits.BinTableHDU.from_columns([fits.Column(name="PLATE", format="J", array=[1])], name="SPALL")]
    if not lite:  # spec (full) files add one HDU per exposure and camera
        extra.append(fits.BinTableHDU.from_columns([fits.Column(name="flux", format="E", array=flux)], name="B1-1"))
    fits.HDUList([fits.PrimaryHDU(), coadd, *extra]).writeto(path)
    return expected(flux, error_of(ivar), mask)


def write_spplate(path: Path, seed: int, fiber: int) -> tuple[float, int]:
    """spPlate: HDU0 flux [fibre, pixel] with COEFF0/COEFF1, HDU1 ivar, HDU2 AND mask, HDU3 OR mask, ..."""
    flux, error, mask = pixels(seed, (20, N_PIXELS))
    ivar = ivar_of(error)
    primary = fits.PrimaryHDU(flux)
    primary.header["COEFF0"] = 3.5523
    primary.header["COEFF1"] = 1e-4
    hdus = [primary, fits.ImageHDU(ivar), fits.ImageHDU(mask), fits.ImageHDU(mask), fits.ImageHDU(flux * 0 + 1)]
    fits.HDUList(hdus).writeto(path)
    row = fiber - 1
    return expected(flux[row], error_of(ivar[row]), mask[row])


def write_apstar(path: Path, seed: int, n_visits: int = 3) -> tuple[float, int]:
    """apStar: HDU0 header only, HDU1 flux, HDU2 error, HDU3 mask [2 combined rows + visits, pixel], CRVAL1/CDELT1.

    A star with one visit has one row, written as a 1-d image.
    """
    flux, error, mask = pixels(seed, (2 + n_visits, N_PIXELS) if n_visits > 1 else (N_PIXELS,))
    hdus = [fits.PrimaryHDU()]
    for data in (flux, error, mask):
        image = fits.ImageHDU(data)
        image.header["CRVAL1"] = 4.179
        image.header["CDELT1"] = 6e-6
        hdus.append(image)
    hdus += [fits.ImageHDU(flux), fits.ImageHDU(error)]  # sky, sky error
    fits.HDUList(hdus).writeto(path)
    if n_visits > 1:
        return expected(flux[0], error[0], mask[0])
    return expected(flux, error, mask)


def write_apvisit(path: Path, seed: int) -> tuple[float, int]:
    """apVisit: HDU0 header, HDU1 flux, HDU2 error, HDU3 mask, HDU4 wavelength [3 chips, pixel], HDU5 sky..."""
    flux, error, mask = pixels(seed, (3, N_PIXELS))
    wavelength = np.linspace(15100, 17000, 3 * N_PIXELS).reshape(3, N_PIXELS)[::-1]
    hdus = [fits.PrimaryHDU(), *(fits.ImageHDU(data) for data in (flux, error, mask, wavelength, flux))]
    fits.HDUList(hdus).writeto(path)
    return expected(flux, error, mask)


def write_mwm(path: Path, seed: int, filled: str, n_rows: int, old_columns: bool = False) -> tuple[float, int]:
    """mwmVisit/mwmStar: HDU1-4 BOSS/APO, BOSS/LCO, APOGEE/APO, APOGEE/LCO tables; empty ones have no rows."""
    flux, error, mask = pixels(seed, (n_rows, N_PIXELS))
    ivar = ivar_of(error)
    hdus = [fits.PrimaryHDU()]
    for name in ("BOSS/APO", "BOSS/LCO", "APOGEE/APO", "APOGEE/LCO"):
        rows = slice(None) if name == filled else slice(0, 0)
        if old_columns:
            spectra = [("E_FLUX", error[rows]), ("BITMASK", mask[rows])]
        else:
            spectra = [("IVAR", ivar[rows]), ("PIXEL_FLAGS", mask[rows])]
        columns = [fits.Column(name="SPECTRUM_PK", format="K", array=np.arange(len(flux[rows])))]
        columns.append(fits.Column(name="FLUX", format=f"{N_PIXELS}E", array=flux[rows]))
        columns += [
            fits.Column(name=column, format=f"{N_PIXELS}{'J' if column in ('BITMASK', 'PIXEL_FLAGS') else 'E'}",
                        array=data)
            for column, data in spectra
        ]  # fmt: skip
        table = fits.BinTableHDU.from_columns(columns, name=name)
        table.header.update(CRVAL=3.5523, CDELT=1e-4, NPIXELS=N_PIXELS)
        hdus.append(table)
    fits.HDUList(hdus).writeto(path)
    if old_columns:
        return expected(flux, error, mask)
    return expected(flux, error_of(ivar), mask)


LAYOUTS = {
    "spec-lite": (lambda path: write_spec(path, seed=1), {}, "spec"),
    "spec": (lambda path: write_spec(path, seed=2, lite=False), {}, "spec"),
    "spPlate": (lambda path: write_spplate(path, seed=3, fiber=7), {"fiber": 7}, "spPlate"),
    "apStar": (lambda path: write_apstar(path, seed=4), {}, "apStar"),
    "apStar, one visit": (lambda path: write_apstar(path, seed=5, n_visits=1), {}, "apStar"),
    "apVisit": (lambda path: write_apvisit(path, seed=6), {}, "apVisit"),
    "mwmStar": (lambda path: write_mwm(path, seed=7, filled="APOGEE/APO", n_rows=1), {}, "mwm"),
    "mwmVisit": (lambda path: write_mwm(path, seed=8, filled="BOSS/LCO", n_rows=4), {"hdu": "BOSS/LCO"}, "mwm"),
    "mwmVisit, e_flux": (
        lambda path: write_mwm(path, seed=9, filled="BOSS/APO", n_rows=2, old_columns=True),
        {},
        "mwm",
    ),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_estimate_snr_reads_each_layout(database_url, tmp_path, layout):
    write, parameters, name = LAYOUTS[layout]
    path = tmp_path / "spectrum.fits"
    snr, n_good = write(path)
    task = (EstimateSelectedSNR if parameters else EstimateSNR)(spectrum_path=str(path), **parameters)
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    row = task.output().read()  # its row of the output table astra.snr
    assert load_spectrum(path, **parameters).layout == name
    assert row.n_good_pixels == n_good
    assert row.snr == pytest.approx(snr, rel=1e-5)
    # The task read the file with fitsio; what it recorded is exactly what the astropy reader gives.
    assert row.snr == signal_to_noise(*read_spectrum(path, reader="astropy", **parameters))[0]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])  # reading the file does not depend on the database
def test_a_fibre_of_an_spplate_from_the_command_line(database_url, tmp_path):
    path = tmp_path / "spPlate-1234-56789.fits"
    snr, _ = write_spplate(path, seed=10, fiber=12)
    args = ["--module", "workflows", "EstimateSelectedSNR", "--spectrum-path", str(path), "--fiber", "12"]
    result = run_luigi(*args)
    assert "1 ran successfully" in result.stdout, result.stdout
    (recorded,) = astra.results(EstimateSelectedSNR)
    assert recorded.snr == pytest.approx(snr, rel=1e-5)

    without = run_luigi("--module", "workflows", "EstimateSNR", "--spectrum-path", str(path))
    assert without.returncode == 30, without.stdout  # [retcode] task_failed, astra's default
    assert "spPlate file of 20 fibres: use EstimateSelectedSNR --fiber 1..20" in without.stdout


@pytest.mark.slow
def test_an_unknown_layout_fails_with_one_line_naming_the_hdus(database_url, tmp_path):
    path = tmp_path / "image.fits"
    fits.HDUList(
        [fits.PrimaryHDU(np.zeros((4, 5))), fits.BinTableHDU.from_columns([fits.Column("RA", "D", array=[1.0])])]
    ).writeto(path)
    result = run_luigi("--module", "workflows", "EstimateSNR", "--spectrum-path", str(path))
    assert result.returncode == 30, result.stdout
    row = Task.get(Task.task_name == "EstimateSNR")
    assert row.status == "failed"
    assert "\n" not in row.error
    assert "HDUs found: 0 PRIMARY (image 4x5), 1 - (table: RA)" in row.error, row.error


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fitsio_reads_the_same_arrays_as_astropy(tmp_path, layout):
    """astropy is the reference: the fitsio reader gives the same pixels, bit for bit (both convert the same stored
    float32 and int32 values to float64 and int64, and take the wavelength grid from the same header values)."""
    write, parameters, _ = LAYOUTS[layout]
    path = tmp_path / "spectrum.fits"
    write(path)
    reference = load_spectrum(path, reader="astropy", **parameters)
    fast = load_spectrum(path, reader="fitsio", **parameters)
    assert fast.layout == reference.layout
    for name in ("wavelength", "flux", "ivar", "mask"):
        got, want = getattr(fast, name), getattr(reference, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    for measure in (signal_to_noise, wavelength_range):
        arrays = [(s.wavelength,) if measure is wavelength_range else () for s in (fast, reference)]
        fast_value = measure(*arrays[0], fast.flux, fast.ivar, fast.mask)
        assert fast_value == measure(*arrays[1], reference.flux, reference.ivar, reference.mask)


def test_both_readers_fail_alike(tmp_path):
    image = tmp_path / "image.fits"
    fits.HDUList(
        [fits.PrimaryHDU(np.zeros((4, 5))), fits.BinTableHDU.from_columns([fits.Column("RA", "D", array=[1.0])])]
    ).writeto(image)
    plate = tmp_path / "spPlate.fits"
    write_spplate(plate, seed=11, fiber=1)
    mwm = tmp_path / "mwmStar.fits"
    write_mwm(mwm, seed=12, filled="BOSS/APO", n_rows=1)
    for path, parameters, error in [
        (image, {}, UnknownLayoutError),
        (plate, {}, ValueError),
        (plate, {"fiber": 21}, ValueError),
        (mwm, {"hdu": "APOGEE/LCO"}, ValueError),
        (mwm, {"hdu": "APOGEE/XYZ"}, ValueError),
    ]:
        messages = []
        for reader in ("astropy", "fitsio"):
            with pytest.raises(error) as raised:
                load_spectrum(path, reader=reader, **parameters)
            messages.append(str(raised.value))
        assert messages[0] == messages[1]
        if path == image:
            assert "HDUs found: 0 PRIMARY (image 4x5), 1 - (table: RA)" in messages[0]


def test_files_fitsio_cannot_open_are_read_by_astropy(tmp_path):
    """A name cfitsio would parse as an instruction, and a file it refuses: astropy reads one, explains the other."""
    odd = tmp_path / "spec[1]+2.fits"
    snr, _ = write_spec(odd, seed=13)
    assert signal_to_noise(*read_spectrum(odd))[0] == pytest.approx(snr, rel=1e-5)
    broken = tmp_path / "broken.fits"
    broken.write_text("not a FITS file")
    with pytest.raises(OSError, match="No SIMPLE card found"):  # astropy's words, as before fitsio
        load_spectrum(broken)
