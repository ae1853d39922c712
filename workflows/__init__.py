"""Example astra workflows: spectrum files -> EstimateSNR -> SummariseSNR.

luigi --module workflows EstimateSNR --local-scheduler
luigi --module workflows SummariseSNR --spectra-dir /path/to/spectra --local-scheduler
luigi --module workflows EstimateSNRBatch --spectra-dir /path/to/spectra --local-scheduler
"""

from __future__ import annotations

import glob
import math
import os
import statistics

import astra  # first: then peewee does not import psycopg 3, which astra does not use (~0.1 s a start)

# isort: split
import luigi
import peewee

from astra.batch import BatchTask
from workflows.formats import EXAMPLE_SPECTRA, Spectrum, load_spectrum, signal_to_noise, wavelength_range


class SpectrumFile(luigi.ExternalTask):
    """A spectrum file written by the survey's data reduction."""

    path = luigi.Parameter()

    @classmethod
    def get_params(cls) -> list[tuple[str, luigi.Parameter]]:
        # As astra.BaseTask does: luigi walks dir(cls) on every call, several times per instance, and a batch
        # creates one of these per spectrum (to work out each EstimateSNR's identity); the parameters never change.
        params = cls.__dict__.get("_params")
        if params is None:
            params = super().get_params()
            type.__setattr__(cls, "_params", params)
        return list(params)

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(self.path)


class SNR(astra.OutputModel):
    """What EstimateSNR measures in one spectrum: a row of table ``astra.snr``, linked to its task."""

    # help_text and Meta.units describe the columns in exports (FITS TCOMMn/TUNITn, ECSV, Parquet) and plots.
    snr = peewee.DoubleField(null=True, help_text="median of flux * sqrt(ivar) over the good pixels")  # NaN if none
    n_good_pixels = peewee.IntegerField(help_text="pixels with ivar > 0, no mask bit and a finite flux")
    wavelength_min = peewee.DoubleField(null=True, help_text="shortest wavelength of a good pixel")
    wavelength_max = peewee.DoubleField(null=True, help_text="longest wavelength of a good pixel")

    class Meta:
        table_name = "snr"
        units = {"wavelength_min": "Angstrom", "wavelength_max": "Angstrom"}


class EstimateSNR(astra.BaseTask):
    """The signal-to-noise ratio of one spectrum: median of flux * sqrt(ivar) over good pixels.

    Reads BOSS spec/spec-lite, APOGEE apStar and apVisit, and mwmVisit/mwmStar files (the first instrument HDU with
    spectra), recognising the layout from the file (workflows/formats.py). For one fibre of an spPlate file, or
    another HDU of an mwm file, use :class:`EstimateSelectedSNR`.
    """

    output_model = SNR
    spectrum_path = luigi.Parameter(default=str(EXAMPLE_SPECTRA / "spec-00001.fits"), description="spectrum file")

    def requires(self) -> SpectrumFile:
        return SpectrumFile(self.spectrum_path)

    def spectrum(self) -> Spectrum:
        return load_spectrum(self.input().path)

    def run(self) -> dict:
        spectrum = self.spectrum()
        snr, n_good = signal_to_noise(spectrum.flux, spectrum.ivar, spectrum.mask)
        low, high = wavelength_range(spectrum.wavelength, spectrum.flux, spectrum.ivar, spectrum.mask)
        return {"snr": snr, "n_good_pixels": n_good, "wavelength_min": low, "wavelength_max": high}


class EstimateSelectedSNR(EstimateSNR):
    """EstimateSNR of one spectrum in a file that holds several: a fibre of an spPlate, an HDU of an mwm file.

    luigi --module workflows EstimateSelectedSNR --spectrum-path spPlate-1234-56789.fits --fiber 12
    luigi --module workflows EstimateSelectedSNR --spectrum-path mwmStar-0.6.0-123.fits --hdu APOGEE/APO
    """

    fiber = luigi.OptionalIntParameter(default=None, description="fibre number (1-based) in an spPlate file")
    hdu = luigi.Parameter(default="", description="HDU of an mwmVisit/mwmStar file, e.g. APOGEE/APO")

    def spectrum(self) -> Spectrum:
        return load_spectrum(self.input().path, fiber=self.fiber, hdu=self.hdu)


class SummariseSNR(astra.BaseTask):
    """Summary statistics of the signal-to-noise ratios of every spectrum in a directory."""

    spectra_dir = luigi.Parameter(default=str(EXAMPLE_SPECTRA))
    pattern = luigi.Parameter(default="*.fits")

    def requires(self) -> list[EstimateSNR]:
        paths = sorted(glob.glob(os.path.join(self.spectra_dir, self.pattern)))
        return [EstimateSNR(spectrum_path=path) for path in paths]

    def run(self) -> dict:
        rows = list(astra.results(EstimateSNR, tasks=self.requires()))
        if not rows:
            raise ValueError(f"no spectra match {self.pattern!r} in {self.spectra_dir}")
        snrs = [row.snr for row in rows if row.snr is not None and math.isfinite(row.snr)]
        if not snrs:
            raise ValueError(f"no spectrum in {self.spectra_dir} matching {self.pattern!r} has a good pixel")
        return {
            "n_spectra": len(rows),
            "median_snr": statistics.median(snrs),
            "min_snr": min(snrs),
            "max_snr": max(snrs),
        }


class EstimateSNRBatch(BatchTask):
    """EstimateSNR for many spectra in one luigi task; each spectrum is recorded as its own EstimateSNR.

    luigi --module workflows EstimateSNRBatch --spectra-dir /path/to/spectra --local-scheduler
    luigi --module workflows EstimateSNRBatch --spectra-glob '/data/*/spec-*.fits' --local-scheduler
    luigi --module workflows EstimateSNRBatch --spectra '["/data/a.fits", "/data/b.fits"]' --local-scheduler
    """

    item_class = EstimateSNR

    spectra = luigi.ListParameter(default=[], description="spectrum files")
    spectra_dir = luigi.Parameter(default="", description="a directory of spectrum files (with --pattern)")
    pattern = luigi.Parameter(default="*.fits", description="file name pattern inside --spectra-dir")
    spectra_glob = luigi.Parameter(default="", description="a glob of spectrum files, e.g. '/data/*/spec-*.fits'")

    def paths(self) -> list[str]:
        paths = [str(path) for path in self.spectra]
        if self.spectra_dir:
            paths += sorted(glob.glob(os.path.join(self.spectra_dir, self.pattern)))
        if self.spectra_glob:
            paths += sorted(glob.glob(self.spectra_glob))
        return list(dict.fromkeys(paths))

    def parameter_sets(self) -> list[dict]:
        return [{"spectrum_path": path} for path in self.paths()]
