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

Files are read with ``fitsio`` (cfitsio, in C) when it is installed: about five times faster than astropy on the
tables of ``spec`` files, and it reads one fibre of an spPlate instead of the whole image. astropy stays the
reference (``reader="astropy"``; tests/test_formats.py checks that both give the same arrays), and reads what
fitsio cannot open: a path cfitsio would take for its extended syntax (``file.fits[1]``), or a file it refuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from astropy.io import fits

try:
    import fitsio
except ImportError:  # astropy reads every layout too, only slower
    fitsio = None

#: Example spectra shipped with the repository, used when no other spectra are given.
EXAMPLE_SPECTRA = Path(__file__).resolve().parent / "data" / "spectra"

#: The instrument HDUs of mwmVisit/mwmStar files.
MWM_HDUS = ("BOSS/APO", "BOSS/LCO", "APOGEE/APO", "APOGEE/LCO")

#: The libraries load_spectrum can read files with.
READERS = ("fitsio", "astropy")

#: Paths fitsio is given: cfitsio reads ``[``, ``(``, ``+``, ``!`` and ``scheme://`` in a name as instructions.
_PLAIN_PATH = re.compile(r"[\w./@%=,~ -]+")


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


def read_spectrum(
    path: str | Path, fiber: int | None = None, hdu: str = "", reader: str = ""
) -> tuple[np.ndarray, ...]:
    """Flux, inverse variance and pixel mask of the spectrum in ``path`` (see :func:`load_spectrum`)."""
    spectrum = load_spectrum(path, fiber=fiber, hdu=hdu, reader=reader)
    return spectrum.flux, spectrum.ivar, spectrum.mask


def load_spectrum(path: str | Path, fiber: int | None = None, hdu: str = "", reader: str = "") -> Spectrum:
    """The spectrum in ``path``, in whichever layout the file has; ``fiber`` for spPlate, ``hdu`` for mwm files.

    ``reader`` is "fitsio" or "astropy"; by default fitsio where it is installed and can open the file, else astropy.
    """
    if reader not in ("", *READERS):
        raise ValueError(f"reader must be one of {', '.join(READERS)}, not {reader!r}")
    if Path(path).is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a spectrum file (SummariseSNR --spectra-dir takes one)")
    if reader != "astropy" and fitsio is not None and _PLAIN_PATH.fullmatch(str(path)):
        try:
            with _FitsioFile(str(path)) as hdus:
                return _load(hdus, path, fiber, hdu)
        except OSError:  # a file cfitsio refuses: astropy reads it, or says better than cfitsio what is wrong
            if reader == "fitsio":
                raise
    elif reader == "fitsio":
        raise ValueError(f"fitsio cannot read {path}: " + ("it is not installed" if fitsio is None else "its name"))
    with _AstropyFile(path) as hdus:
        return _load(hdus, path, fiber, hdu)


def _load(hdus: FitsFile, path: str | Path, fiber: int | None, hdu: str) -> Spectrum:
    layout = detect_layout(hdus)
    if fiber is not None and layout != "spPlate":
        raise ValueError(f"{path} is a {layout} file, which holds one spectrum: leave out --fiber")
    if hdu and layout != "mwm":
        raise ValueError(f"{path} is a {layout} file: --hdu is only for mwmVisit/mwmStar files")
    return _READERS[layout](hdus, path=str(path), fiber=fiber, hdu=hdu)


class FitsFile:
    """An open FITS file as the layout readers see it, whichever library reads it: HDUs by number.

    HDU names are upper case (``PRIMARY`` for an unnamed first HDU); :meth:`kind` is "image" (with data), "empty"
    (an image HDU without data), "table" (binary) or "ascii table".
    """

    path = ""
    names: list[str] = []

    def index(self, name: str) -> int:
        return self.names.index(name.upper())

    def kind(self, i: int) -> str:
        raise NotImplementedError

    def shape(self, i: int) -> tuple[int, ...]:
        """The shape of an image HDU's data, as numpy gives it."""
        raise NotImplementedError

    def keywords(self, i: int) -> set[str]:
        raise NotImplementedError

    def value(self, i: int, keyword: str) -> object:
        raise NotImplementedError

    def columns(self, i: int) -> list[str]:
        """The column names of a table HDU, as written."""
        raise NotImplementedError

    def rows(self, i: int) -> int:
        raise NotImplementedError

    def image(self, i: int, row: int | None = None) -> np.ndarray:
        """An image HDU's data, or one row of a 2-d image."""
        raise NotImplementedError

    def column(self, i: int, name: str) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> FitsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _AstropyFile(FitsFile):
    """The reference reader."""

    def __init__(self, path: str | Path) -> None:
        from astropy.io import fits  # imported when needed: it takes longer than reading a few hundred files

        try:
            self.hdus = fits.open(path, memmap=False)
        except OSError as exc:
            if exc.errno is not None:  # missing, unreadable: the system's words say it
                raise
            # astropy's words ("No SIMPLE card found, ...") do not name the file, nor say that it is not FITS.
            raise OSError(f"{path} is not a FITS file: {str(exc).split('. ')[0]}") from exc
        self.path = str(path)
        self.names = [h.name.upper() for h in self.hdus]

    def kind(self, i: int) -> str:
        from astropy.io import fits

        h = self.hdus[i]
        if isinstance(h, fits.BinTableHDU):
            return "table"
        if isinstance(h, fits.TableHDU):
            return "ascii table"
        if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU)) and h.data is not None:
            return "image"
        return "empty"

    def shape(self, i: int) -> tuple[int, ...]:
        return self.hdus[i].data.shape

    def keywords(self, i: int) -> set[str]:
        return set(self.hdus[i].header)

    def value(self, i: int, keyword: str) -> object:
        return self.hdus[i].header[keyword]

    def columns(self, i: int) -> list[str]:
        return list(self.hdus[i].columns.names or [])

    def rows(self, i: int) -> int:
        data = self.hdus[i].data
        return 0 if data is None else len(data)

    def image(self, i: int, row: int | None = None) -> np.ndarray:
        data = self.hdus[i].data
        return data if row is None else data[row]

    def column(self, i: int, name: str) -> np.ndarray:
        return self.hdus[i].data[name]

    def close(self) -> None:
        self.hdus.close()


class _FitsioFile(FitsFile):
    """cfitsio through fitsio: a table is read whole (one read, faster than column by column), an image row alone."""

    _KINDS = {"BINARY_TBL": "table", "ASCII_TBL": "ascii table"}

    def __init__(self, path: str) -> None:
        self.fits = fitsio.FITS(path)
        self.path = path
        self.hdus = list(self.fits)
        self.names = [h.get_extname().strip().upper() for h in self.hdus]
        if self.names and not self.names[0]:
            self.names[0] = "PRIMARY"
        self._headers: dict[int, object] = {}
        self._tables: dict[int, np.ndarray] = {}

    def kind(self, i: int) -> str:
        kind = self.hdus[i].get_exttype()
        if kind == "IMAGE_HDU":
            return "image" if self.hdus[i].has_data() else "empty"
        return self._KINDS.get(kind, "empty")

    def shape(self, i: int) -> tuple[int, ...]:
        return tuple(self.hdus[i].get_dims())

    def _header(self, i: int):
        if i not in self._headers:
            self._headers[i] = self.hdus[i].read_header()
        return self._headers[i]

    def keywords(self, i: int) -> set[str]:
        return set(self._header(i).keys())

    def value(self, i: int, keyword: str) -> object:
        return self._header(i)[keyword]

    def columns(self, i: int) -> list[str]:
        return list(self.hdus[i].get_colnames())

    def rows(self, i: int) -> int:
        return self.hdus[i].get_nrows()

    def image(self, i: int, row: int | None = None) -> np.ndarray:
        if row is None:
            return self.hdus[i].read()
        return self.hdus[i][row : row + 1, :][0]

    def column(self, i: int, name: str) -> np.ndarray:
        if i not in self._tables:
            self._tables[i] = self.hdus[i].read()
        return self._tables[i][name]

    def close(self) -> None:
        self.fits.close()


def detect_layout(hdus: FitsFile | fits.HDUList) -> str:
    """The layout of an open FITS file: spec, spPlate, apStar, apVisit or mwm; UnknownLayoutError if none fits."""
    if not isinstance(hdus, FitsFile):  # an astropy HDUList
        hdus = _wrap(hdus)
    names = hdus.names
    count = len(names)
    if "COADD" in names and _columns(hdus, hdus.index("COADD")) >= {"flux", "ivar"}:
        return "spec"
    if any(name in MWM_HDUS and hdus.kind(hdus.index(name)) == "table" for name in names):
        return "mwm"
    images = [i for i in range(count) if hdus.kind(i) == "image"]
    if (
        0 in images
        and len(hdus.shape(0)) == 2
        and {"COEFF0", "COEFF1"} <= hdus.keywords(0)
        and count >= 3
        and all(i in images and hdus.shape(i) == hdus.shape(0) for i in (1, 2))
    ):
        return "spPlate"
    if hdus.kind(0) == "empty" and count >= 4 and all(i in images for i in (1, 2, 3)):
        shape = hdus.shape(1)
        if all(hdus.shape(i) == shape for i in (2, 3)):
            if {"CRVAL1", "CDELT1"} <= hdus.keywords(1):
                return "apStar"
            if count >= 5 and 4 in images and hdus.shape(4) == shape:
                return "apVisit"
    raise UnknownLayoutError(
        f"{Path(hdus.path or '?').name} is not a spectrum layout astra reads (spec, spPlate, apStar, apVisit, "
        f"mwmVisit/mwmStar); HDUs found: {describe_hdus(hdus)}"
    )


def describe_hdus(hdus: FitsFile | fits.HDUList) -> str:
    """``0 PRIMARY (image 10x3), 1 FOO (table: a, b)``: what a file holds, for an error message."""
    if not isinstance(hdus, FitsFile):  # an astropy HDUList
        hdus = _wrap(hdus)
    parts = []
    for index, name in enumerate(hdus.names):
        kind = hdus.kind(index)
        if kind.endswith("table"):
            columns = hdus.columns(index)
            what = f"table: {', '.join(columns)}" if columns else "table"
        elif kind == "empty":
            what = "no data"
        else:
            what = f"image {'x'.join(str(n) for n in hdus.shape(index))}"
        parts.append(f"{index} {name or '-'} ({what})")
    return ", ".join(parts)


def _wrap(hdus: fits.HDUList) -> _AstropyFile:
    """An HDUList opened elsewhere, seen as a FitsFile (closing it stays with whoever opened it)."""
    wrapped = _AstropyFile.__new__(_AstropyFile)
    wrapped.hdus, wrapped.path = hdus, hdus.filename() or ""
    wrapped.names = [h.name.upper() for h in hdus]
    return wrapped


def _columns(hdus: FitsFile, i: int) -> set[str]:
    return {name.lower() for name in hdus.columns(i)} if hdus.kind(i).endswith("table") else set()


def _column(hdus: FitsFile, i: int, *names: str, dtype: type = float) -> np.ndarray | None:
    """The first of ``names`` that table HDU ``i`` has (FITS column names are case-insensitive), or None."""
    present = {name.lower(): name for name in hdus.columns(i)}
    for name in names:
        if name in present:
            return np.asarray(hdus.column(i, present[name]), dtype=dtype)
    return None


def _ivar_from_error(error: np.ndarray) -> np.ndarray:
    error = np.asarray(error, dtype=float)
    ivar = np.zeros_like(error)
    usable = np.isfinite(error) & (error > 0)
    ivar[usable] = 1.0 / error[usable] ** 2
    return ivar


def _read_spec(hdus: FitsFile, **_) -> Spectrum:
    coadd = hdus.index("COADD")
    loglam = _column(hdus, coadd, "loglam")
    flux = _column(hdus, coadd, "flux")
    mask = _column(hdus, coadd, "and_mask", dtype=np.int64)
    return Spectrum(
        layout="spec",
        wavelength=10**loglam if loglam is not None else np.full(flux.shape, np.nan),
        flux=flux,
        ivar=_column(hdus, coadd, "ivar"),
        mask=mask if mask is not None else np.zeros(flux.shape, dtype=np.int64),
    )


def _read_spplate(hdus: FitsFile, path: str, fiber: int | None, **_) -> Spectrum:
    n_fibers, n_pixels = hdus.shape(0)
    if fiber is None or not 1 <= fiber <= n_fibers:
        raise ValueError(
            f"{path} is an spPlate file of {n_fibers} fibres: use EstimateSelectedSNR --fiber 1..{n_fibers}"
        )
    row = fiber - 1
    return Spectrum(
        layout="spPlate",
        wavelength=10 ** (hdus.value(0, "COEFF0") + hdus.value(0, "COEFF1") * np.arange(n_pixels)),
        flux=np.asarray(hdus.image(0, row), dtype=float),
        ivar=np.asarray(hdus.image(1, row), dtype=float),
        mask=np.asarray(hdus.image(2, row), dtype=np.int64),
    )


def _read_apstar(hdus: FitsFile, **_) -> Spectrum:
    row = 0 if len(hdus.shape(1)) == 2 else None  # the first (combined) row, or the only one
    flux = np.asarray(hdus.image(1, row), dtype=float)
    return Spectrum(
        layout="apStar",
        wavelength=10 ** (hdus.value(1, "CRVAL1") + hdus.value(1, "CDELT1") * np.arange(flux.size)),
        flux=flux,
        ivar=_ivar_from_error(hdus.image(2, row)),
        mask=np.asarray(hdus.image(3, row), dtype=np.int64),
    )


def _read_apvisit(hdus: FitsFile, **_) -> Spectrum:
    return Spectrum(
        layout="apVisit",
        wavelength=np.asarray(hdus.image(4), dtype=float).ravel(),
        flux=np.asarray(hdus.image(1), dtype=float).ravel(),
        ivar=_ivar_from_error(hdus.image(2)).ravel(),
        mask=np.asarray(hdus.image(3), dtype=np.int64).ravel(),
    )


def _read_mwm(hdus: FitsFile, path: str, hdu: str, **_) -> Spectrum:
    present = [name for name in hdus.names if name in MWM_HDUS]
    with_rows = [name for name in present if hdus.rows(hdus.index(name))]
    if hdu:
        if hdu.upper() not in present:
            raise ValueError(f"{path} has no HDU {hdu!r}; it has {', '.join(present)}")
        name = hdu.upper()
    elif with_rows:
        name = with_rows[0]
    else:
        raise ValueError(f"{path} holds no spectra: its HDUs {', '.join(present)} are all empty")
    table = hdus.index(name)
    if not hdus.rows(table):
        raise ValueError(f"{path}: HDU {name} is empty; these have spectra: {', '.join(with_rows) or 'none'}")
    flux = _column(hdus, table, "flux")
    ivar = _column(hdus, table, "ivar")
    if ivar is None:
        error = _column(hdus, table, "e_flux")
        if error is None:
            raise ValueError(f"{path}: HDU {name} has neither ivar nor e_flux")
        ivar = _ivar_from_error(error)
    mask = _column(hdus, table, "pixel_flags", "bitmask", dtype=np.int64)
    keywords = hdus.keywords(table)
    wavelength = _column(hdus, table, "wavelength", "lambda")
    if wavelength is None and {"CRVAL", "CDELT", "NPIXELS"} <= keywords:
        crval, cdelt, n_pixels = (hdus.value(table, keyword) for keyword in ("CRVAL", "CDELT", "NPIXELS"))
        wavelength = 10 ** (crval + cdelt * np.arange(n_pixels))
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
