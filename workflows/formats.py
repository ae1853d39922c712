"""Reading the spectrum files of SDSS, whichever layout they have, and their signal-to-noise ratio.

The layout is recognised from the file itself (its HDUs and headers), not from its name. Layouts, as the SDSS data
model describes them (https://data.sdss.org/datamodel/) and as specutils' ``sdss_v`` loaders read them:

- ``spec``: BOSS ``spec``/``spec-lite``/``specFull`` files: HDU ``COADD``, a binary table with columns ``flux``,
  ``loglam`` (log10 Angstrom), ``ivar`` and ``and_mask`` (datamodel: BOSS_SPECTRO_REDUX/RUN2D/spectra/.../spec).
- ``spPlate``: ``spPlate``/``spField`` images, one row per fibre: HDU 0 flux (with ``COEFF0``/``COEFF1``: log10
  wavelength = COEFF0 + COEFF1 * pixel), HDU 1 inverse variance, HDU 2 AND mask. Needs ``fiber`` (1-based).
- ``apStar``: APOGEE combined spectra: HDU 1 flux, HDU 2 error (1 sigma), HDU 3 pixel mask, each one row per
  visit after two combined rows (or a single row); log10 wavelength from ``CRVAL1``/``CDELT1`` of HDU 1. The first
  (combined) row is used.
- ``apVisit``: APOGEE visit spectra: HDU 1 flux, HDU 2 error, HDU 3 mask, HDU 4 wavelength, one row per detector
  chip; all three chips are used.
- ``mwm``: Milky Way Mapper ``mwmVisit``/``mwmStar``: HDUs ``BOSS/APO``, ``BOSS/LCO``, ``APOGEE/APO``,
  ``APOGEE/LCO``, binary tables with array columns ``flux``, ``ivar`` (older files: ``e_flux``) and
  ``pixel_flags`` (older: ``bitmask``), one row per visit (mwmVisit) or per star (mwmStar); an empty HDU has no
  rows. ``hdu`` names the one to use (default: the first with rows); all its rows are used.

APOGEE errors become inverse variances (1 / error**2, 0 where the error is not positive and finite).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

#: Example spectra shipped with the repository, used when no other spectra are given.
EXAMPLE_SPECTRA = Path(__file__).resolve().parent / "data" / "spectra"

#: The instrument HDUs of mwmVisit/mwmStar files.
MWM_HDUS = ("BOSS/APO", "BOSS/LCO", "APOGEE/APO", "APOGEE/LCO")


class UnknownLayoutError(ValueError):
    """A FITS file none of the known spectrum layouts fits (the message names the HDUs found)."""


@dataclass
class Spectrum:
    """Pixels of one spectrum (flattened), whatever layout they came from."""

    layout: str
    wavelength: np.ndarray  # Angstrom
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray  # 0 = good pixel


def signal_to_noise(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """Median of flux * sqrt(ivar) over good pixels (ivar > 0, no mask bits), and how many pixels were good."""
    flux, ivar, mask = (np.asarray(a).ravel() for a in (flux, ivar, mask))
    good = (ivar > 0) & (mask == 0) & np.isfinite(flux) & np.isfinite(ivar)
    if not good.any():
        return float("nan"), 0
    return float(np.median(flux[good] * np.sqrt(ivar[good]))), int(good.sum())


def wavelength_range(
    wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray
) -> tuple[float | None, float | None]:
    """The shortest and longest wavelength among the good pixels (None, None when none is good or known)."""
    good = (ivar > 0) & (mask == 0) & np.isfinite(flux) & np.isfinite(wavelength)
    if not good.any():
        return None, None
    return float(wavelength[good].min()), float(wavelength[good].max())


def read_spectrum(path: str | Path, fiber: int | None = None, hdu: str = "") -> tuple[np.ndarray, ...]:
    """Flux, inverse variance and pixel mask of the spectrum in ``path`` (see :func:`load_spectrum`)."""
    spectrum = load_spectrum(path, fiber=fiber, hdu=hdu)
    return spectrum.flux, spectrum.ivar, spectrum.mask


def load_spectrum(path: str | Path, fiber: int | None = None, hdu: str = "") -> Spectrum:
    """The spectrum in ``path``, in whichever layout the file has; ``fiber`` for spPlate, ``hdu`` for mwm files."""
    with fits.open(path, memmap=False) as hdus:
        layout = detect_layout(hdus)
        if fiber is not None and layout != "spPlate":
            raise ValueError(f"{path} is a {layout} file, which holds one spectrum: leave out --fiber")
        if hdu and layout != "mwm":
            raise ValueError(f"{path} is a {layout} file: --hdu is only for mwmVisit/mwmStar files")
        spectrum = _READERS[layout](hdus, path=str(path), fiber=fiber, hdu=hdu)
    return spectrum


def detect_layout(hdus: fits.HDUList) -> str:
    """The layout of an open FITS file: spec, spPlate, apStar, apVisit or mwm; UnknownLayoutError if none fits."""
    names = [h.name.upper() for h in hdus]
    if "COADD" in names and _columns(hdus["COADD"]) >= {"flux", "ivar"}:
        return "spec"
    if any(name in MWM_HDUS and isinstance(hdus[name], fits.BinTableHDU) for name in names):
        return "mwm"
    images = [h for h in hdus if _is_image(h)]
    primary = hdus[0]
    if (
        _is_image(primary)
        and primary.data.ndim == 2
        and {"COEFF0", "COEFF1"} <= set(primary.header)
        and len(hdus) >= 3
        and all(_is_image(h) and h.data.shape == primary.data.shape for h in hdus[1:3])
    ):
        return "spPlate"
    if primary.data is None and len(hdus) >= 4 and all(h in images for h in hdus[1:4]):
        shape = hdus[1].data.shape
        if all(h.data.shape == shape for h in hdus[2:4]):
            if {"CRVAL1", "CDELT1"} <= set(hdus[1].header):
                return "apStar"
            if len(hdus) >= 5 and _is_image(hdus[4]) and hdus[4].data.shape == shape:
                return "apVisit"
    raise UnknownLayoutError(
        f"{Path(hdus.filename() or '?').name} is not a spectrum layout astra reads (spec, spPlate, apStar, apVisit, "
        f"mwmVisit/mwmStar); HDUs found: {describe_hdus(hdus)}"
    )


def describe_hdus(hdus: fits.HDUList) -> str:
    """``0 PRIMARY (image 10x3), 1 FOO (table: a, b)``: what a file holds, for an error message."""
    parts = []
    for index, h in enumerate(hdus):
        if isinstance(h, (fits.BinTableHDU, fits.TableHDU)):
            what = f"table: {', '.join(h.columns.names)}" if h.columns.names else "table"
        elif h.data is None:
            what = "no data"
        else:
            what = f"image {'x'.join(str(n) for n in h.data.shape)}"
        parts.append(f"{index} {h.name or '-'} ({what})")
    return ", ".join(parts)


def _is_image(h: fits.hdu.base.ExtensionHDU) -> bool:
    return isinstance(h, (fits.PrimaryHDU, fits.ImageHDU)) and h.data is not None


def _columns(h) -> set[str]:
    return {name.lower() for name in h.columns.names} if isinstance(h, (fits.BinTableHDU, fits.TableHDU)) else set()


def _column(table: fits.FITS_rec, *names: str, dtype: type = float) -> np.ndarray | None:
    """The first of ``names`` that ``table`` has (FITS column names are case-insensitive), or None."""
    present = {name.lower(): name for name in table.columns.names}
    for name in names:
        if name in present:
            return np.asarray(table[present[name]], dtype=dtype)
    return None


def _ivar_from_error(error: np.ndarray) -> np.ndarray:
    error = np.asarray(error, dtype=float)
    ivar = np.zeros_like(error)
    usable = np.isfinite(error) & (error > 0)
    ivar[usable] = 1.0 / error[usable] ** 2
    return ivar


def _read_spec(hdus: fits.HDUList, **_) -> Spectrum:
    data = hdus["COADD"].data
    loglam = _column(data, "loglam")
    flux = _column(data, "flux")
    mask = _column(data, "and_mask", dtype=np.int64)
    return Spectrum(
        layout="spec",
        wavelength=10**loglam if loglam is not None else np.full(flux.shape, np.nan),
        flux=flux,
        ivar=_column(data, "ivar"),
        mask=mask if mask is not None else np.zeros(flux.shape, dtype=np.int64),
    )


def _read_spplate(hdus: fits.HDUList, path: str, fiber: int | None, **_) -> Spectrum:
    flux = hdus[0].data
    n_fibers, n_pixels = flux.shape
    if fiber is None or not 1 <= fiber <= n_fibers:
        raise ValueError(
            f"{path} is an spPlate file of {n_fibers} fibres: use EstimateSelectedSNR --fiber 1..{n_fibers}"
        )
    header = hdus[0].header
    row = fiber - 1
    return Spectrum(
        layout="spPlate",
        wavelength=10 ** (header["COEFF0"] + header["COEFF1"] * np.arange(n_pixels)),
        flux=np.asarray(flux[row], dtype=float),
        ivar=np.asarray(hdus[1].data[row], dtype=float),
        mask=np.asarray(hdus[2].data[row], dtype=np.int64),
    )


def _read_apstar(hdus: fits.HDUList, **_) -> Spectrum:
    def first_row(image: np.ndarray) -> np.ndarray:
        return image[0] if image.ndim == 2 else image

    header = hdus[1].header
    flux = np.asarray(first_row(hdus[1].data), dtype=float)
    return Spectrum(
        layout="apStar",
        wavelength=10 ** (header["CRVAL1"] + header["CDELT1"] * np.arange(flux.size)),
        flux=flux,
        ivar=_ivar_from_error(first_row(hdus[2].data)),
        mask=np.asarray(first_row(hdus[3].data), dtype=np.int64),
    )


def _read_apvisit(hdus: fits.HDUList, **_) -> Spectrum:
    return Spectrum(
        layout="apVisit",
        wavelength=np.asarray(hdus[4].data, dtype=float).ravel(),
        flux=np.asarray(hdus[1].data, dtype=float).ravel(),
        ivar=_ivar_from_error(hdus[2].data).ravel(),
        mask=np.asarray(hdus[3].data, dtype=np.int64).ravel(),
    )


def _read_mwm(hdus: fits.HDUList, path: str, hdu: str, **_) -> Spectrum:
    present = [h.name for h in hdus if h.name in MWM_HDUS]
    with_rows = [name for name in present if hdus[name].data is not None and len(hdus[name].data)]
    if hdu:
        if hdu.upper() not in present:
            raise ValueError(f"{path} has no HDU {hdu!r}; it has {', '.join(present)}")
        name = hdu.upper()
    elif with_rows:
        name = with_rows[0]
    else:
        raise ValueError(f"{path} holds no spectra: its HDUs {', '.join(present)} are all empty")
    table = hdus[name].data
    if table is None or not len(table):
        raise ValueError(f"{path}: HDU {name} is empty; these have spectra: {', '.join(with_rows) or 'none'}")
    flux = _column(table, "flux")
    ivar = _column(table, "ivar")
    if ivar is None:
        error = _column(table, "e_flux")
        if error is None:
            raise ValueError(f"{path}: HDU {name} has neither ivar nor e_flux")
        ivar = _ivar_from_error(error)
    mask = _column(table, "pixel_flags", "bitmask", dtype=np.int64)
    header = hdus[name].header
    wavelength = _column(table, "wavelength", "lambda")
    if wavelength is None and {"CRVAL", "CDELT", "NPIXELS"} <= set(header):
        wavelength = 10 ** (header["CRVAL"] + header["CDELT"] * np.arange(header["NPIXELS"]))
    # One wavelength grid in the header serves every row (visit) of the table.
    wavelength = np.full(flux.shape, np.nan) if wavelength is None else np.asarray(wavelength, dtype=float)
    return Spectrum(
        layout="mwm",
        wavelength=np.broadcast_to(wavelength, flux.shape).ravel(),
        flux=flux.ravel(),
        ivar=ivar.ravel(),
        mask=np.zeros(flux.size, dtype=np.int64) if mask is None else mask.ravel(),
    )


_READERS = {
    "spec": _read_spec,
    "spPlate": _read_spplate,
    "apStar": _read_apstar,
    "apVisit": _read_apvisit,
    "mwm": _read_mwm,
}
