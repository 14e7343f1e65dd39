"""Conditions of a real field for matched simulations, and the PSF width the cutouts show.

A real field's PSF is known from its cutouts as a Gaussian-equivalent FWHM and an aperture correction
(`morphology.estimate_psf`: 2.3548 x the adaptive-moment sigma of the stellar locus, and its stars'
PSF-minus-7.4"-aperture magnitude, which measures the light in the wings). The simulator's PSF is a
Kolmogorov core convolved with Moffat wings, drawn on native pixels and interpolated onto the cutout
grid; `psf_for_field` finds the core FWHM and wing share whose simulated stars show both, so that a
simulation of that field has its seeing.
"""

import functools

import numpy as np
from scipy import optimize

from stargal_jax import morphology
from stargal_jax.simulate import params as P
from stargal_jax.simulate import render
from stargal_jax.simulate.populations import Conditions, Source

GAUSSIAN_FWHM_PER_SIGMA = 2.3548200450309493
PHASES = ((0.0, 0.0), (0.5, 0.25), (0.25, 0.75), (0.75, 0.5))  # sub-pixel positions averaged over


def _unit_conditions(fwhm_arcsec: float, wing_fraction: float) -> Conditions:
  ones = np.ones(5)
  return Conditions(camcol=3, psf_fwhm_arcsec=fwhm_arcsec * ones, psf_g1=0 * ones, psf_g2=0 * ones, sky_dn=ones,
                    nmgy_per_dn=ones, gain=ones, dark_variance=ones, psf_wing_fraction=wing_fraction)


@functools.lru_cache(maxsize=512)
def star_measurements(core_fwhm_arcsec: float, wing_fraction: float = P.PSF_WING_FRACTION,
                      resample: bool = True) -> tuple[float, float]:
  """(Gaussian-equivalent FWHM in px, aperture correction in mag) that `morphology` measures on a
  noiseless star seen through this PSF, rendered and cut out as the simulator does (mean over sub-pixel
  phases); the aperture correction with the PSF width it measures, as `estimate_psf` does."""
  conditions = _unit_conditions(float(core_fwhm_arcsec), float(wing_fraction))
  cuts = []
  for fx, fy in PHASES:
    x, y = render.NATIVE_CENTRE + fx, render.NATIVE_CENTRE + fy
    star = Source(kind="STAR", x=x, y=y, mag=np.full(5, 18.0), z=0.0)
    scene = render.render_scene([star], conditions, wings=wing_fraction > 0, mask_sources=[])
    cut = (render.resample_to_cutout(scene.bands, x, y) if resample else render.integer_cutout(scene.bands, x, y)[0])
    cuts.append(cut)
  cuts = np.stack(cuts)
  width = float(GAUSSIAN_FWHM_PER_SIGMA * np.mean(morphology.adaptive_size(cuts, band=2)))
  correction = float(np.mean(morphology.psf_minus_extended(cuts, 2, psf_fwhm_px=width, aperture_correction_mag=0.0)))
  return width, correction


def measured_width_px(core_fwhm_arcsec: float, wing_fraction: float = P.PSF_WING_FRACTION) -> float:
  return star_measurements(round(float(core_fwhm_arcsec), 4), round(float(wing_fraction), 4))[0]


def core_fwhm_for_width(width_px: float, wing_fraction: float = P.PSF_WING_FRACTION) -> float:
  """The Kolmogorov core FWHM (arcsec) whose simulated stars measure `width_px` (Gaussian-equivalent)."""
  lo, hi = 0.35, 4.0
  f = lambda fwhm: measured_width_px(fwhm, wing_fraction) - width_px  # noqa: E731
  if f(lo) > 0 or f(hi) < 0:
    raise ValueError(f"PSF width {width_px:.2f} px is outside what cores of {lo}-{hi}\" give")
  return float(optimize.brentq(f, lo, hi, xtol=2e-3))


def psf_for_field(width_px: float, aperture_correction_mag: float, iterations: int = 3) -> tuple[float, float]:
  """(core FWHM arcsec, wing share) whose simulated stars measure this width and aperture correction
  (the share clipped to [0, 0.6])."""
  wing = P.PSF_WING_FRACTION
  core = core_fwhm_for_width(width_px, wing)
  for _ in range(iterations):
    g = lambda f: star_measurements(round(core, 4), round(float(f), 4))[1] - aperture_correction_mag  # noqa: E731
    if g(0.0) >= 0:
      wing = 0.0
    elif g(0.6) <= 0:
      wing = 0.6
    else:
      wing = float(optimize.brentq(g, 0.0, 0.6, xtol=2e-3))
    core = core_fwhm_for_width(width_px, wing)
  return core, wing


def field_conditions(camcol: int, sky_dn, nmgy_per_dn, gain, dark_variance, psf_width_px, sky_residual_nmgy,
                     aperture_correction_mag: float | None = None, noise_scale=None, wings: bool = True) -> Conditions:
  """Simulator conditions of a real field (per band u..z): its measured sky, calibration, camera, noise
  level and PSF (widths: Gaussian-equivalent FWHM in px of its stellar locus per band; the r-band
  aperture correction sets the wing share), round PSFs."""
  wing = P.PSF_WING_FRACTION if wings else 0.0
  if wings and aperture_correction_mag is not None:
    _, wing = psf_for_field(float(psf_width_px[2]), float(aperture_correction_mag))
  fwhm = np.array([core_fwhm_for_width(float(w), wing) for w in psf_width_px])
  zeros = np.zeros(5)
  return Conditions(camcol=int(camcol), psf_fwhm_arcsec=fwhm, psf_g1=zeros, psf_g2=zeros.copy(),
                    sky_dn=np.asarray(sky_dn, np.float64), nmgy_per_dn=np.asarray(nmgy_per_dn, np.float64),
                    gain=np.asarray(gain, np.float64), dark_variance=np.asarray(dark_variance, np.float64),
                    sky_residual_nmgy=np.asarray(sky_residual_nmgy, np.float64),
                    noise_scale=np.ones(5) if noise_scale is None else np.asarray(noise_scale, np.float64),
                    psf_wing_fraction=round(float(wing), 4))
