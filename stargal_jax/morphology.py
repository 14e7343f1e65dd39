"""Label-free morphology measured on the cutouts: magnitudes, concentration, PSF-vs-extended flux.

These are the classical, physical star-galaxy separators (what the SDSS pipeline itself does
without labels) and serve two purposes: baselines that every learned score is compared with, and
the extendedness that orients a learned score without labels (`metrics.orient_score`).

Conventions: images are numpy float (N, 5, H, W) in nanomaggies, bands u, g, r, i, z, sky-subtracted,
the object at array coordinate (H // 2, W // 2) = (32, 32) of a 64 x 64 cutout (`CUTOUT_CENTRE`, as
`frame[y-32:y+32, x-32:x+32]` makes it). Every measurement:
1. subtracts a residual background: the median of the pixels at radius >= 24 px (9.5"), robust to
   neighbours there;
2. replaces NaN pixels by the median of the valid pixels in the same 1-px ring about the centre
   (the object is centred, so its ring is its best local model), or by 0 if the ring is all NaN;
3. sums with circular apertures whose area is right to 0.1% (pixels split into 32 x 32
   sub-pixels), so that small radii such as 1.5 px are not at the mercy of the pixel grid.
Arrays are processed in chunks so that memory-mapped data sets of any size can be measured.
"""

import functools
import math
import warnings
from typing import Callable, NamedTuple

import numpy as np

from stargal_jax import PIXEL_SCALE_ARCSEC, photometry

R_BAND = 2
ZERO_POINT_MAG = 22.5  # m = 22.5 - 2.5 log10(flux / nanomaggy)
FAINT_MAG = 30.0  # non-positive fluxes are clipped to this magnitude
PETROSIAN_LIKE_RADIUS_PX = 7.4 / PIXEL_SCALE_ARCSEC  # 18.7 px: the total-flux aperture
BACKGROUND_INNER_RADIUS_PX = 24.0
CONCENTRATION_RADII_PX = (1.5, 5.0)
SDSS_EXTENDED_CUT_MAG = 0.145  # SDSS: psfMag - cModelMag > 0.145 means extended (galaxy)
GAUSSIAN_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
LOCUS_SIZE_TOLERANCE = 0.05  # stellar locus: adaptive size within 5% of the PSF's
CHUNK_SIZE = 2048


def _check_images(images) -> None:
  if np.ndim(images) != 4:
    raise ValueError(f"images must be (N, bands, H, W), got shape {np.shape(images)}")


@functools.lru_cache(maxsize=8)
def _radius_grid(height: int, width: int) -> np.ndarray:
  """Distance of each pixel centre from the array centre, in pixels."""
  y, x = np.indices((height, width), dtype=np.float64)
  return np.hypot(y - (height // 2), x - (width // 2))


@functools.lru_cache(maxsize=32)
def aperture_weights(radius_px: float, height: int = 64, width: int = 64,
                     supersample: int = 32) -> np.ndarray:
  """Fraction of each pixel inside a circle of `radius_px` about the array centre (sums to ~pi r^2)."""
  offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
  y, x = np.indices((height, width), dtype=np.float64)
  sub_y = y[:, :, None, None] + offsets[None, None, :, None] - (height // 2)
  sub_x = x[:, :, None, None] + offsets[None, None, None, :] - (width // 2)
  inside = sub_y ** 2 + sub_x ** 2 < radius_px ** 2
  weights = inside.mean(axis=(2, 3))
  weights.flags.writeable = False  # cached: callers must not modify it
  return weights


def _fill_nan_by_ring_median(pixels: np.ndarray) -> np.ndarray:
  """Replaces NaN pixels (in place) by the median of the valid pixels in the same 1-px ring."""
  has_nan = np.isnan(pixels).any(axis=(1, 2))
  if not has_nan.any():
    return pixels
  rings = np.floor(_radius_grid(*pixels.shape[1:])).astype(np.int64)
  block = pixels[has_nan]
  for ring in np.unique(rings):
    in_ring = rings == ring
    values = block[:, in_ring]
    missing = np.isnan(values)
    if not missing.any():
      continue
    valid_count = (~missing).sum(axis=1)
    # Median of the valid values per row without nanmedian's all-NaN warning: np.sort puts NaN
    # last, so the valid values are the first `valid_count` of each sorted row.
    ordered = np.sort(values, axis=1)
    rows = np.arange(len(values))
    lower = ordered[rows, np.maximum((valid_count - 1) // 2, 0)]
    upper = ordered[rows, np.maximum(valid_count // 2, 0)]
    ring_median = np.where(valid_count > 0, 0.5 * (lower + upper), 0.0)
    values[missing] = np.broadcast_to(ring_median[:, None], values.shape)[missing]
    block[:, in_ring] = values
  pixels[has_nan] = block
  return pixels


def _prepared_band(images, band: int, start: int, stop: int) -> np.ndarray:
  """One chunk of one band as float64, background-subtracted and NaN-filled."""
  pixels = np.array(images[start:stop, band], dtype=np.float64)
  outer = _radius_grid(*pixels.shape[1:]) >= BACKGROUND_INNER_RADIUS_PX
  outer_values = pixels[:, outer]
  valid = np.isfinite(outer_values)
  # nanmedian without its all-NaN warning: all-NaN rows get background 0.
  background = np.zeros(len(pixels))
  rows = valid.any(axis=1)
  if rows.any():
    background[rows] = np.nanmedian(np.where(valid[rows], outer_values[rows], np.nan), axis=1)
  pixels -= background[:, None, None]
  pixels[~np.isfinite(pixels)] = np.nan  # +-inf are as unusable as NaN
  return _fill_nan_by_ring_median(pixels)


def _map_chunks(images, band: int, measure: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  """Applies `measure` (prepared (n, H, W) -> (n,)) chunk by chunk over the whole set."""
  _check_images(images)
  n = len(images)
  if n == 0:
    return np.zeros(0)
  return np.concatenate([measure(_prepared_band(images, band, start, min(start + CHUNK_SIZE, n)))
                         for start in range(0, n, CHUNK_SIZE)])


def aperture_flux(images, radius_px: float, band: int = R_BAND) -> np.ndarray:
  """(N,) background-subtracted flux in nanomaggies inside a circle of `radius_px` about the centre."""
  height, width = np.shape(images)[-2:]
  weights = aperture_weights(float(radius_px), height, width)
  return _map_chunks(images, band, lambda pixels: np.einsum("nhw,hw->n", pixels, weights))


def flux_to_magnitude(flux) -> np.ndarray:
  """m = 22.5 - 2.5 log10(flux / nanomaggy); non-positive or NaN flux gives FAINT_MAG (30)."""
  floor = 10.0 ** ((ZERO_POINT_MAG - FAINT_MAG) / 2.5)
  flux = np.nan_to_num(np.asarray(flux, dtype=np.float64), nan=floor)
  return ZERO_POINT_MAG - 2.5 * np.log10(np.maximum(flux, floor))


def r_magnitude(images, band: int = R_BAND) -> np.ndarray:
  """(N,) total magnitude from the flux in a 7.4" (18.7 px) radius aperture (SDSS-Petrosian-like).

  Background from the median at radius >= 24 px; fluxes <= 0 are clipped to magnitude 30. For a
  point source the aperture holds all the flux; for large galaxies it misses their outer wings,
  as a Petrosian magnitude does.
  """
  return flux_to_magnitude(aperture_flux(images, PETROSIAN_LIKE_RADIUS_PX, band))


def concentration_index(images, band: int = R_BAND) -> np.ndarray:
  """(N,) flux inside 1.5 px divided by flux inside 5 px (0.6" and 2"): larger = more concentrated.

  Chosen over R90/R50 because aperture fluxes stay stable for faint objects, where a growth-curve
  radius is noise-dominated. A Gaussian PSF of sigma 1.5 px gives about 0.38; extended objects less.
  NaN where the 5 px flux is not positive (no measurable object).
  """
  inner = aperture_flux(images, CONCENTRATION_RADII_PX[0], band)
  outer = aperture_flux(images, CONCENTRATION_RADII_PX[1], band)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(outer > 0, inner / outer, np.nan)


def gaussian_psf(sigma_px: float, height: int = 64, width: int = 64) -> np.ndarray:
  """Unit-sum circular Gaussian sampled at pixel centres, centred on the array centre."""
  r = _radius_grid(height, width)
  psf = np.exp(-0.5 * (r / sigma_px) ** 2)
  return psf / psf.sum()


def psf_weighted_flux(images, psf_sigma_px: float, band: int = R_BAND) -> np.ndarray:
  """(N,) PSF flux: the least-squares amplitude sum(P I) / sum(P^2) of a unit-sum Gaussian PSF P.

  Exact (noise aside) for a point source of this PSF; an extended object spreads its light
  beyond the PSF and gets less than its total flux.
  """
  height, width = np.shape(images)[-2:]
  psf = gaussian_psf(psf_sigma_px, height, width)
  matched_filter = psf / np.sum(psf ** 2)
  return _map_chunks(images, band, lambda pixels: np.einsum("nhw,hw->n", pixels, matched_filter))


def _adaptive_sigma(pixels: np.ndarray, n_iter: int = 30) -> np.ndarray:
  """Adaptive Gaussian-weighted size about the centre: iterate sigma_w^2 <- <r^2>_w.

  For a circular Gaussian of width s the weighted <r^2> is 2 s^2 sigma_w^2 / (s^2 + sigma_w^2),
  whose fixed point is sigma_w = s (the error halves each step). NaN if the weighted flux is <= 0.
  """
  r2 = _radius_grid(*pixels.shape[1:]) ** 2
  sigma = np.full(len(pixels), 2.0)
  valid = np.ones(len(pixels), dtype=bool)
  for _ in range(n_iter):
    weighted = pixels * np.exp(-0.5 * r2[None] / sigma[:, None, None] ** 2)
    flux = weighted.sum(axis=(1, 2))
    second_moment = np.einsum("nhw,hw->n", weighted, r2)
    valid = (flux > 0) & (second_moment > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
      sigma = np.where(valid, np.clip(np.sqrt(second_moment / flux), 0.3, 20.0), sigma)
  return np.where(valid, sigma, np.nan)


def adaptive_size(images, band: int = R_BAND) -> np.ndarray:
  """(N,) adaptive-moment Gaussian sigma in pixels (the sigma of the best-matching circular Gaussian)."""
  return _map_chunks(images, band, _adaptive_sigma)


def _narrowest_mode(values: np.ndarray, min_relative_height: float = 0.2) -> float:
  """The smallest-valued prominent KDE mode (`photometry.narrowest_mode`, shared with the PSF stack)."""
  return photometry.narrowest_mode(values, min_relative_height)


class PsfEstimate(NamedTuple):
  """The label-free PSF model of a data set (see `estimate_psf`)."""
  fwhm_px: float
  aperture_correction_mag: float  # median psf-minus-aperture magnitude of the stellar locus
  n_locus: int  # bright objects within LOCUS_SIZE_TOLERANCE of the PSF size


def _bright_subset(images, band: int, bright_fraction: float, max_objects: int) -> np.ndarray:
  """Sorted indices of the brightest `bright_fraction` (5 px flux), thinned to `max_objects`."""
  brightness = aperture_flux(images, CONCENTRATION_RADII_PX[1], band)
  order = np.argsort(-brightness, kind="stable")
  n_bright = max(int(round(bright_fraction * len(order))), min(len(order), 20))
  bright = order[:n_bright]
  return np.sort(bright[np.linspace(0, len(bright) - 1, min(len(bright), max_objects)).astype(np.int64)])


def _psf_minus_aperture_mag(images, psf_fwhm_px: float, band: int) -> np.ndarray:
  """Raw -2.5 log10(PSF flux / 7.4" aperture flux); NaN where either flux is not positive."""
  psf_flux = psf_weighted_flux(images, psf_fwhm_px / GAUSSIAN_FWHM_PER_SIGMA, band)
  extended_flux = aperture_flux(images, PETROSIAN_LIKE_RADIUS_PX, band)
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = np.where((psf_flux > 0) & (extended_flux > 0), psf_flux / extended_flux, np.nan)
    return -2.5 * np.log10(ratio)


def estimate_psf(images, band: int = R_BAND, psf_fwhm_px: float | None = None,
                 bright_fraction: float = 0.3, max_objects: int = 2000) -> PsfEstimate:
  """Label-free PSF width and aperture correction from the bright objects of the set.

  Width: point sources all share the PSF's size and pile up at the smallest adaptive sizes,
  while galaxies spread to larger ones, so the first prominent mode of the size distribution (a
  KDE in log size) is the PSF (skipped when `psf_fwhm_px` is given). Only the brightest
  `bright_fraction` (by 5 px flux) take part, where noise does not blur the pile-up, evenly
  subsampled in brightness order to at most `max_objects`.
  Aperture correction: a real PSF has wings that a Gaussian matched filter does not model (on
  SDSS r-band frames stars come out ~0.12 mag fainter in PSF flux than in the 7.4" aperture), so,
  as SDSS does for psfMag, the median offset of the stellar locus (bright objects within 5% of
  the PSF size) is measured here and removed in `psf_minus_extended`.
  One PSF for the whole set: seeing varies from field to field, which this cannot follow.
  """
  _check_images(images)
  bright = np.asarray(images[_bright_subset(images, band, bright_fraction, max_objects)])
  sizes = adaptive_size(bright, band)
  finite = np.isfinite(sizes)
  if finite.sum() < 3:
    raise ValueError(f"only {finite.sum()} bright objects have a measurable size: "
                     "cannot estimate the PSF")
  if psf_fwhm_px is None:
    psf_fwhm_px = float(np.exp(_narrowest_mode(np.log(sizes[finite])))) * GAUSSIAN_FWHM_PER_SIGMA
  psf_sigma = psf_fwhm_px / GAUSSIAN_FWHM_PER_SIGMA
  locus = finite & (np.abs(sizes / psf_sigma - 1.0) < LOCUS_SIZE_TOLERANCE)
  offsets = _psf_minus_aperture_mag(bright[locus], psf_fwhm_px, band)
  offsets = offsets[np.isfinite(offsets)]
  correction = float(np.median(offsets)) if offsets.size else 0.0
  return PsfEstimate(float(psf_fwhm_px), correction, int(offsets.size))


def estimate_psf_fwhm(images, band: int = R_BAND, bright_fraction: float = 0.3,
                      max_objects: int = 2000) -> float:
  """Label-free PSF FWHM in pixels: the narrowest mode of bright objects' sizes (see `estimate_psf`)."""
  return estimate_psf(images, band, None, bright_fraction, max_objects).fwhm_px


def psf_minus_extended(images, band: int = R_BAND, psf_fwhm_px: float | None = None,
                       aperture_correction_mag: float | None = None) -> np.ndarray:
  """(N,) psfMag - extendedMag (magnitudes): ~0 for point sources, larger = more extended.

  The analogue of SDSS psfMag - cModelMag: the PSF flux (`psf_weighted_flux`, a Gaussian matched
  filter of FWHM `psf_fwhm_px`) against the 7.4" aperture flux, minus the stellar locus's
  aperture correction so that point sources sit at 0. Both are estimated label-free from the
  images (`estimate_psf`) when None; pass aperture_correction_mag=0 for the raw difference. SDSS
  calls an object extended when psfMag - cModelMag > 0.145 (`SDSS_EXTENDED_CUT_MAG`). NaN where
  either flux is not positive. The large aperture makes the faint end noisier than SDSS's
  model fits.
  """
  if psf_fwhm_px is None or aperture_correction_mag is None:
    estimate = estimate_psf(images, band, psf_fwhm_px)
    psf_fwhm_px = estimate.fwhm_px
    if aperture_correction_mag is None:
      aperture_correction_mag = estimate.aperture_correction_mag
  return _psf_minus_aperture_mag(images, psf_fwhm_px, band) - aperture_correction_mag


def _fill_with_median(values: np.ndarray) -> np.ndarray:
  """Non-finite entries take the median of the finite ones: a neutral rank, neither end."""
  values = np.array(values, dtype=np.float64)
  finite = np.isfinite(values)
  values[~finite] = np.median(values[finite]) if finite.any() else 0.0
  return values


def extendedness(images, psf_fwhm_px: float | None = None,
                 aperture_correction_mag: float | None = None) -> np.ndarray:
  """(N,) the label-free extendedness that orients scores: r-band psf_minus_extended, NaN -> median."""
  return _fill_with_median(psf_minus_extended(images, R_BAND, psf_fwhm_px, aperture_correction_mag))


def sdss_model_criteria(images, psf_fwhm_px: float | None = None,
                        psf: "photometry.GaussianMixture | None" = None) -> dict[str, np.ndarray]:
  """r-band model-fit criteria (`photometry.sdss_criteria`): psfMag - cModelMag and its S/N-aware significance.

  The PSF: `psf` when given (shared or per object), else the set's own stacked stars
  (`photometry.estimate_psf_model`, stellar locus at `psf_fwhm_px` when given), else, for sets with fewer than
  photometry.MIN_PSF_STARS usable stars, a Gaussian of `psf_fwhm_px` or of `estimate_psf`'s width.
  """
  if psf is None:
    try:
      psf = photometry.estimate_psf_model(images, R_BAND, psf_fwhm_px).mixture
    except ValueError as error:
      warnings.warn(f"{error}; using a Gaussian PSF", stacklevel=2)
      fwhm = psf_fwhm_px if psf_fwhm_px is not None else estimate_psf(images, R_BAND).fwhm_px
      psf = photometry.gaussian_psf_mixture(fwhm)
  return photometry.sdss_criteria(images, R_BAND, psf)


def classical_indices(images, psf_fwhm_px: float | None = None, aperture_correction_mag: float | None = None,
                      psf: "photometry.GaussianMixture | None" = None) -> dict[str, np.ndarray]:
  """{name: (N,)} the r-band physical measurements behind the classical baselines, NaN where undefined (no
  measurable flux): `concentration_index` (F(1.5 px) / F(5 px)), `psf_minus_extended` (mag), SDSS's
  `sdss_psf_minus_cmodel` (psfMag - cModelMag, mag) and its S/N-aware `sdss_psf_minus_cmodel_significance`."""
  model_criteria = sdss_model_criteria(images, psf_fwhm_px, psf)
  return {
      "concentration_index": concentration_index(images, R_BAND),
      "psf_minus_extended": psf_minus_extended(images, R_BAND, psf_fwhm_px, aperture_correction_mag),
      "sdss_psf_minus_cmodel": model_criteria["psf_minus_cmodel"],
      "sdss_psf_minus_cmodel_significance": model_criteria["psf_cmodel_significance"],
  }


def baseline_scores_from_indices(indices: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The baselines' scores (see `classical_baseline_scores`) from `classical_indices`: oriented so that larger
  is more extended, undefined values at the median score."""
  return {
      "concentration": _fill_with_median(-indices["concentration_index"]),
      "psf_minus_extended": _fill_with_median(indices["psf_minus_extended"]),
      "sdss_psf_minus_cmodel": _fill_with_median(indices["sdss_psf_minus_cmodel"]),
      "sdss_psf_minus_cmodel_significance": _fill_with_median(indices["sdss_psf_minus_cmodel_significance"]),
  }


def classical_baseline_scores(images, psf_fwhm_px: float | None = None,
                              aperture_correction_mag: float | None = None,
                              psf: "photometry.GaussianMixture | None" = None) -> dict[str, np.ndarray]:
  """{name: (N,) score}, larger = more extended (galaxy): the physical cuts SDSS uses without labels.

  `concentration` is minus the r-band concentration_index; `psf_minus_extended` is the r-band
  psfMag - extendedMag (Gaussian matched filter against the 7.4" aperture); `sdss_psf_minus_cmodel` is SDSS's
  own criterion psfMag - cModelMag from PSF, deV and exp model fits (> 0.145: extended); and
  `sdss_psf_minus_cmodel_significance` is its S/N-aware version, the difference in units of its uncertainty
  (noise and the set's stellar-locus width; ~0 with unit spread for point sources at every magnitude; see
  `photometry.psf_cmodel_significance`). Undefined values (no measurable flux) take the median score.
  """
  return baseline_scores_from_indices(classical_indices(images, psf_fwhm_px, aperture_correction_mag, psf))
