"""Simulated BOSS-style spectrum files (FITS, HDU 1 "COADD": flux, loglam, ivar, and_mask).

python -m workflows.spectra DIRECTORY --count 5 writes DIRECTORY/spec-00001.fits ... Reading spectra of every
layout is workflows/formats.py (imported here too, so ``from workflows.spectra import read_spectrum`` still works).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from astropy.io import fits

from workflows.formats import EXAMPLE_SPECTRA, load_spectrum, read_spectrum, signal_to_noise

__all__ = [
    "EXAMPLE_SPECTRA",
    "load_spectrum",
    "read_spectrum",
    "signal_to_noise",
    "simulate",
    "write_spectrum",
]


def write_spectrum(path: str | Path, snr: float, seed: int, n_pixels: int = 3000) -> Path:
    """Write a simulated spectrum whose true signal-to-noise ratio is about ``snr``."""

    rng = np.random.default_rng(seed)
    loglam = np.linspace(3.5523, 4.0171, n_pixels)  # 3600 to 10400 Angstrom, as in SDSS/BOSS
    continuum = 1.0 + 0.2 * np.sin(loglam * 40.0)
    sigma = continuum / snr
    flux = continuum + rng.normal(0.0, sigma)
    ivar = 1.0 / sigma**2
    and_mask = np.zeros(n_pixels, dtype=np.int32)
    bad = rng.choice(n_pixels, size=n_pixels // 50, replace=False)
    and_mask[bad] = 1 << 23  # BRIGHTSKY, say: these pixels must be ignored
    flux[bad] = 1e4
    columns = [
        fits.Column(name="flux", format="E", array=flux.astype(np.float32)),
        fits.Column(name="loglam", format="E", array=loglam.astype(np.float32)),
        fits.Column(name="ivar", format="E", array=ivar.astype(np.float32)),
        fits.Column(name="and_mask", format="J", array=and_mask),
    ]
    table = fits.BinTableHDU.from_columns(columns, name="COADD")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path, overwrite=True)
    return path


def simulate(directory: str | Path, count: int, seed: int = 0) -> list[Path]:
    """Write ``count`` simulated spectra ``spec-00001.fits``... into ``directory``."""
    rng = np.random.default_rng(seed)
    return [
        write_spectrum(Path(directory) / f"spec-{i:05d}.fits", snr=float(rng.uniform(5, 50)), seed=seed * 100003 + i)
        for i in range(1, count + 1)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="Write simulated SDSS-style spectra.")
    parser.add_argument("directory")
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in simulate(args.directory, args.count, args.seed):
        print(path)


if __name__ == "__main__":
    main()
