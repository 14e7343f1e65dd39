"""Physically grounded SDSS-like simulator: the project's default data.

Simulates 64 x 64 ugriz cutouts exactly in the study's formats (0.396"/px, sky-subtracted nanomaggies)
the way real cutouts are made: a central object drawn from the star and galaxy number counts of
high-latitude SDSS fields (the point-source fraction, the stars' M-dwarf share and the galaxies' red
share measured on the real fields of shared/data), its field neighbours and the faint undetected
background, seen through per-field PSFs (a Kolmogorov core with Moffat wings, per-band widths) with SDSS
sky, gain, dark variance, calibration, measured noise level, sky residuals and saturation; every band on
its own native pixel grid; the object kept only if the r-band detection of `sdss_frames` finds it above
S/N 5 and unsaturated; then every band interpolated onto the r grid at the detection's windowed centroid
by the same cubic spline as the real cutouts, so the interpolation's correlated noise is there too.
Stars follow the SDSS stellar locus, QSOs the SDSS colour-redshift relation, and galaxies are bulge +
disk systems whose redshift, colour and size follow their apparent magnitude. Truth (segmentation
masks, magnitudes, sizes, S/N, PSF, neighbours, field) goes to separate files.

Modules: `params` (SDSS constants and measured values with sources, `SimParams`), `populations` (what
is in a cutout), `render` (pixels, noise, detection, resampling), `dataset` (the study's file layout,
determinism, workers), `observed` (a real field's conditions for matched simulations).
Command line: python -m stargal_jax.simulate --out DIR --n-labelled N --n-unlabelled M --seed S --workers W
[--param FIELD=VALUE ...]

Truth mask rule: a pixel belongs to the source whose noiseless g+r+i flux there is largest, if that
flux exceeds `mask_threshold_sigma` (default 1) times the sky noise of the g+r+i sum; labels are
0 background, 1 central object, 2+ neighbours in the order of the truth table (the field sources brighter
than neighbour_faint_mag that own mask pixels or whose centre lies in the stamp).
"""

from stargal_jax.simulate.dataset import Cutout, simulate_cutout, simulate_cutouts, simulate_dataset
from stargal_jax.simulate.params import SIM_VERSION, SimParams

__all__ = ["Cutout", "SIM_VERSION", "SimParams", "simulate_cutout", "simulate_cutouts", "simulate_dataset"]
