"""Physically grounded SDSS-like simulator: the project's default data.

Simulates 64 x 64 ugriz cutouts exactly in the study's formats (0.396"/px, sky-subtracted
nanomaggies, object centred to within half a pixel): stars on the SDSS stellar locus, QSOs with
their UV excess, bulge + disk galaxies whose redshift, colour and angular size follow their
apparent magnitude, seen through per-object Kolmogorov PSFs with correlated per-band seeing, with
SDSS sky, gain, dark variance and calibration noise, neighbours, saturation with bleed trails and
frame-edge NaNs. Truth (segmentation masks, magnitudes, sizes, S/N, PSF, neighbours) goes to
separate files.

Modules: `params` (SDSS constants with sources, `SimParams`), `populations` (what is in a cutout),
`render` (pixels and noise), `dataset` (the study's file layout, determinism, workers).
Command line: python -m stargal_jax.simulate --out DIR --n-labelled N --n-unlabelled M --seed S --workers W

Truth mask rule: a pixel belongs to the source whose noiseless g+r+i flux there is largest, if that
flux exceeds `mask_threshold_sigma` (default 1) times the sky noise of the g+r+i sum; labels are
0 background, 1 central object, 2+ neighbours in the order of the truth table.
"""

from stargal_jax.simulate.dataset import Cutout, simulate_cutout, simulate_cutouts, simulate_dataset
from stargal_jax.simulate.params import SIM_VERSION, SimParams

__all__ = ["Cutout", "SIM_VERSION", "SimParams", "simulate_cutout", "simulate_cutouts", "simulate_dataset"]
