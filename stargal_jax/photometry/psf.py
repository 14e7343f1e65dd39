"""The label-free PSF of a set of cutouts: its own bright, isolated, point-like objects stacked, and a compact
Gaussian-mixture model of the stack (or mixtures fitted to given PSF images)."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage, optimize

from stargal_jax.photometry.fitting import BLOCK_SIZE, R_BAND, prepare_band
from stargal_jax.photometry.kernels import levenberg_marquardt, radius_grid, render_mixture, shape_matrix
from stargal_jax.photometry.profiles import GaussianMixture

PSF_COMPONENTS = 3
MIN_PSF_STARS = 5
PSF_LOCUS_TOLERANCE = 0.05  # stars: adaptive size within 5% of the narrowest mode (as morphology)
PSF_ISOLATION_PEAK_FRACTION = 0.05  # a star with a pixel above 5% of its peak at 6-20 px has a neighbour
PSF_NORMALISATION_RADIUS_PX = 8.0
GAUSSIAN_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def gaussian_psf_mixture(fwhm_px: float) -> GaussianMixture:
  """A one-component circular Gaussian PSF of this FWHM (the fallback when no PSF can be measured)."""
  sigma = fwhm_px / GAUSSIAN_FWHM_PER_SIGMA
  return GaussianMixture(np.ones(1), (sigma ** 2 * np.eye(2))[None])


def _adaptive_moments(image, yy, xx, n_iter: int = 25):
  """Elliptical adaptive moments (Bernstein & Jarvis 2002) about the centre: (flux, centroid (2,), M (2, 2)).

  Iterates the Gaussian weight W = N(mu, M) with mu, M <- the W-weighted centroid and 2 x the W-weighted second
  moments; for a Gaussian image of covariance C the fixed point is M = C. NaN where the weighted flux is <= 0.
  """
  def step(carry, _):
    mu, m = carry
    det = m[0, 0] * m[1, 1] - m[0, 1] ** 2
    dy, dx = yy - mu[0], xx - mu[1]
    quadratic = (m[1, 1] * dy ** 2 - 2 * m[0, 1] * dy * dx + m[0, 0] * dx ** 2) / det
    weighted = image * jnp.exp(-0.5 * quadratic)
    total = jnp.sum(weighted)
    new_mu = jnp.stack([jnp.sum(weighted * yy), jnp.sum(weighted * xx)]) / total
    new_mu = jnp.clip(new_mu, -3.0, 3.0)
    dy, dx = yy - new_mu[0], xx - new_mu[1]
    new_m = 2.0 * jnp.array([[jnp.sum(weighted * dy * dy), jnp.sum(weighted * dy * dx)],
                             [jnp.sum(weighted * dy * dx), jnp.sum(weighted * dx * dx)]]) / total
    new_det = new_m[0, 0] * new_m[1, 1] - new_m[0, 1] ** 2
    ok = (total > 0) & (new_m[0, 0] > 0.05) & (new_m[1, 1] > 0.05) & (new_det > 0.0025) & \
        (jnp.trace(new_m) < 800.0) & jnp.all(jnp.isfinite(new_m))
    return (jnp.where(ok, new_mu, mu), jnp.where(ok, new_m, m)), ok

  start = (jnp.zeros(2, image.dtype), 4.0 * jnp.eye(2, dtype=image.dtype))
  (mu, m), ok = jax.lax.scan(step, start, None, length=n_iter)
  det = m[0, 0] * m[1, 1] - m[0, 1] ** 2
  dy, dx = yy - mu[0], xx - mu[1]
  weight = jnp.exp(-0.5 * (m[1, 1] * dy ** 2 - 2 * m[0, 1] * dy * dx + m[0, 0] * dx ** 2) / det)
  flux = jnp.sum(image * weight) / jnp.sum(weight ** 2)  # Gaussian-weighted amplitude
  valid = ok[-1]
  return jnp.where(valid, flux, jnp.nan), jnp.where(valid, mu, jnp.nan), jnp.where(valid, m, jnp.nan)


@functools.lru_cache(maxsize=8)
def _compiled_moments(height: int, width: int):
  y, x = np.indices((height, width), dtype=np.float64)
  yy = jnp.asarray((y - height // 2).ravel(), jnp.float32)
  xx = jnp.asarray((x - width // 2).ravel(), jnp.float32)
  return jax.jit(jax.vmap(lambda image: _adaptive_moments(image, yy, xx)))


def adaptive_moments(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(flux (N,), centroid (N, 2) px from the centre, covariance (N, 2, 2) px^2) of background-subtracted
  (N, H, W) pixels (NaN treated as 0), in blocks of BLOCK_SIZE."""
  n, height, width = pixels.shape
  flat = np.nan_to_num(pixels.reshape(n, -1)).astype(np.float32)
  fn = _compiled_moments(height, width)
  out = [[], [], []]
  for start in range(0, n, BLOCK_SIZE):
    block = flat[start:start + BLOCK_SIZE]
    count = len(block)
    block = np.concatenate([block, np.repeat(block[:1], BLOCK_SIZE - count, axis=0)])
    for target, value in zip(out, fn(block)):
      target.append(np.asarray(value, dtype=np.float64)[:count])
  if n == 0:
    return np.zeros(0), np.zeros((0, 2)), np.zeros((0, 2, 2))
  return tuple(np.concatenate(part) for part in out)


def narrowest_mode(values: np.ndarray, min_relative_height: float = 0.2) -> float:
  """The smallest-valued local maximum of a Gaussian KDE of `values` at least this high vs the peak."""
  values = np.sort(values)
  lower_half = values[: max(len(values) // 2, 2)]
  spread = min(lower_half.std(), np.subtract(*np.percentile(lower_half, [75, 25])) / 1.34)
  bandwidth = max(0.9 * spread * len(values) ** -0.2, 0.02)  # Silverman on the compact half
  grid = np.linspace(values[0] - 3 * bandwidth, values[-1] + 3 * bandwidth, 2048)
  density = np.exp(-0.5 * ((grid[:, None] - values[None]) / bandwidth) ** 2).sum(axis=1)
  interior = (density[1:-1] >= density[:-2]) & (density[1:-1] > density[2:])
  peaks = np.flatnonzero(interior) + 1
  peaks = peaks[density[peaks] >= min_relative_height * density.max()]
  return float(grid[peaks[0]]) if peaks.size else float(grid[np.argmax(density)])


def _psf_mixture_residual(params, image, weight, yy, xx, n_components: int):
  p = params.reshape(n_components, 4)
  amps = jnp.exp(p[:, 0])
  covs = jnp.exp(2 * p[:, 1])[:, None, None] * jax.vmap(shape_matrix)(p[:, 2:4])
  return jnp.sqrt(weight) * (image - render_mixture(amps, covs, jnp.zeros(2, image.dtype), yy, xx))


def _fit_psf_mixture_one(image, yy, xx, n_components: int, n_steps: int):
  """Mixture of `n_components` concentric elliptical Gaussians fitted to one centred PSF image (P,)."""
  peak = jnp.max(image)
  # Poisson-like weights of a bright star: the wings count as well as the core.
  weight = 1.0 / (jnp.maximum(image, 0.0) + 3e-3 * peak)
  weight = jnp.where(yy ** 2 + xx ** 2 <= 20.0 ** 2, weight, 0.0)
  total, _, m = _adaptive_moments(image, yy, xx)
  sigma = jnp.sqrt(jnp.sqrt(jnp.maximum(m[0, 0] * m[1, 1] - m[0, 1] ** 2, 0.04)))
  sigma = jnp.where(jnp.isfinite(sigma), sigma, 1.5)
  flux = jnp.sum(image)
  ratios = jnp.asarray((0.8, 1.4, 3.0)[:n_components] + (5.0,) * max(0, n_components - 3), image.dtype)
  fractions = jnp.asarray((0.6, 0.32, 0.08)[:n_components] + (0.02,) * max(0, n_components - 3), image.dtype)
  fractions = fractions / jnp.sum(fractions)
  start = jnp.stack([jnp.log(flux * fractions), jnp.log(sigma * ratios), jnp.zeros(n_components),
                     jnp.zeros(n_components)], axis=1).reshape(-1)
  residual = lambda p: _psf_mixture_residual(p, image, weight, yy, xx, n_components)
  clip = lambda p: p.reshape(n_components, 4).at[:, 1].set(
      jnp.clip(p.reshape(n_components, 4)[:, 1], math.log(0.2), math.log(30.0))).at[:, 2:4].set(
      jnp.clip(p.reshape(n_components, 4)[:, 2:4], -1.0, 1.0)).reshape(-1)
  params, _ = levenberg_marquardt(residual, start, n_steps, clip)
  p = params.reshape(n_components, 4)
  amps = jnp.exp(p[:, 0])
  covs = jnp.exp(2 * p[:, 1])[:, None, None] * jax.vmap(shape_matrix)(p[:, 2:4])
  return amps / jnp.sum(amps), covs


@functools.lru_cache(maxsize=8)
def _compiled_psf_fit(height: int, width: int, n_components: int, n_steps: int):
  y, x = np.indices((height, width), dtype=np.float64)
  yy = jnp.asarray((y - height // 2).ravel(), jnp.float32)
  xx = jnp.asarray((x - width // 2).ravel(), jnp.float32)
  return jax.jit(jax.vmap(lambda image: _fit_psf_mixture_one(image, yy, xx, n_components, n_steps)))


def psf_mixture_from_images(psf_images, n_components: int = PSF_COMPONENTS, n_steps: int = 40
                            ) -> GaussianMixture:
  """Unit-flux Gaussian mixtures fitted to PSF images centred on the array centre: (H, W) -> shared,
  (N, H, W) -> per object. The images must be pixel-convolved PSFs sampled at pixel centres (as a stack of
  stars, or GalSim's default drawImage), so that the fitted models are pixel-integrated."""
  psf_images = np.asarray(psf_images, dtype=np.float64)
  single = psf_images.ndim == 2
  stack = psf_images[None] if single else psf_images
  if stack.ndim != 3:
    raise ValueError(f"psf_images must be (H, W) or (N, H, W), got shape {psf_images.shape}")
  n, height, width = stack.shape
  # Unit peak so that the fixed weight floor and float32 arithmetic are well scaled.
  peaks = np.nanmax(stack.reshape(n, -1), axis=1)
  flat = (np.nan_to_num(stack) / peaks[:, None, None]).reshape(n, -1).astype(np.float32)
  fn = _compiled_psf_fit(height, width, n_components, n_steps)
  block = min(BLOCK_SIZE, max(n, 1))
  amps, covs = [], []
  for start in range(0, n, block):
    part = flat[start:start + block]
    count = len(part)
    part = np.concatenate([part, np.repeat(part[:1], block - count, axis=0)])
    a, c = fn(part)
    amps.append(np.asarray(a, np.float64)[:count])
    covs.append(np.asarray(c, np.float64)[:count])
  amps, covs = np.concatenate(amps), np.concatenate(covs)
  return GaussianMixture(amps[0], covs[0]) if single else GaussianMixture(amps, covs)


def mixture_image(mixture: GaussianMixture, height: int = 64, width: int = 64) -> np.ndarray:
  """A shared mixture rendered at pixel centres about the array centre, (H, W)."""
  y, x = np.indices((height, width), dtype=np.float64)
  image = render_mixture(jnp.asarray(mixture.amplitudes, jnp.float32), jnp.asarray(mixture.covariances, jnp.float32),
                  jnp.zeros(2), jnp.asarray((y - height // 2).ravel(), jnp.float32),
                  jnp.asarray((x - width // 2).ravel(), jnp.float32))
  return np.asarray(image, np.float64).reshape(height, width)


def mixture_fwhm_px(mixture: GaussianMixture) -> float:
  """FWHM of a shared mixture's circularised profile (half the central value), px."""
  amps = np.asarray(mixture.amplitudes, np.float64)
  sigma2 = np.sqrt(np.linalg.det(np.asarray(mixture.covariances, np.float64)))
  profile = lambda r: float(np.sum(amps / sigma2 * np.exp(-0.5 * r ** 2 / sigma2)))
  return 2.0 * float(optimize.brentq(lambda r: profile(r) - 0.5 * profile(0.0), 1e-3, 100.0))


class PsfModel(NamedTuple):
  """The label-free PSF of a set in one band (see `estimate_psf_model`)."""
  image: np.ndarray  # (H, W) median stack of the stars, unit sum, centred on the array centre
  mixture: GaussianMixture  # shared unit-flux mixture fitted to `image`
  fwhm_px: float  # of the mixture
  n_stars: int
  star_indices: np.ndarray  # indices into the set of the stacked stars


def select_psf_stars(images, band: int = R_BAND, psf_sigma_px: float | None = None,
                     bright_fraction: float = 0.3, max_objects: int = 2000) -> np.ndarray:
  """Indices of bright, isolated, point-like objects: the candidates for the PSF stack.

  The brightest `bright_fraction` (Gaussian-weighted flux, at most `max_objects`, evenly thinned) whose
  adaptive size sqrt(sqrt(det M)) lies within PSF_LOCUS_TOLERANCE of the narrowest mode of the log sizes (or of
  `psf_sigma_px` when given), with no pixel above PSF_ISOLATION_PEAK_FRACTION of the peak (and 5 sigma) at 6-20 px and no NaN
  within 8 px. Saturated stars have flat cores and come out larger than the locus, so they drop out.
  """
  pixels, sigma = prepare_band(images, band)
  flux, _, moments = adaptive_moments(pixels)
  finite = np.isfinite(flux) & (flux > 0)
  order = np.flatnonzero(finite)[np.argsort(-flux[finite], kind="stable")]
  n_bright = max(int(round(bright_fraction * len(order))), min(len(order), 20))
  bright = order[:n_bright]
  bright = np.sort(bright[np.linspace(0, len(bright) - 1, min(len(bright), max_objects)).astype(np.int64)]) \
      if len(bright) else bright
  sizes = np.sqrt(np.sqrt(np.clip(np.linalg.det(moments[bright]), 1e-12, None))) if len(bright) else np.zeros(0)
  if len(bright) < 3:
    return np.zeros(0, dtype=np.int64)
  locus_sigma = psf_sigma_px if psf_sigma_px is not None else float(np.exp(narrowest_mode(np.log(sizes))))
  point_like = np.abs(sizes / locus_sigma - 1.0) < PSF_LOCUS_TOLERANCE
  radius = radius_grid(*pixels.shape[1:])
  annulus = (radius >= 6.0) & (radius <= 20.0)
  core = radius <= 8.0
  candidates = bright[point_like]
  block = pixels[candidates]
  peak = np.nanmax(np.where(core, block, -np.inf), axis=(1, 2))
  # A neighbour is a pixel above 5% of the peak and above the noise's own maxima (5 sigma) at 6-20 px.
  limit = np.maximum(PSF_ISOLATION_PEAK_FRACTION * peak, 5.0 * sigma[candidates])
  isolated = np.nanmax(np.where(annulus, block, -np.inf), axis=(1, 2)) < limit
  complete = ~np.isnan(np.where(core, block, 0.0)).any(axis=(1, 2))
  return candidates[isolated & complete & (peak > 0)]


def stack_psf(images, indices, band: int = R_BAND) -> np.ndarray:
  """(H, W) unit-sum median stack of the objects `indices`, each recentred (Fourier shift of its adaptive
  centroid onto the array centre) and normalised by its flux within PSF_NORMALISATION_RADIUS_PX."""
  pixels, _ = prepare_band(np.asarray(images[np.sort(indices)]), band)
  pixels = np.nan_to_num(pixels)
  _, centroids, _ = adaptive_moments(pixels)
  radius = radius_grid(*pixels.shape[1:])
  stamps = []
  for stamp, centroid in zip(pixels, centroids):
    if not np.all(np.isfinite(centroid)):
      continue
    shifted = np.real(np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(stamp), -centroid)))
    norm = shifted[radius <= PSF_NORMALISATION_RADIUS_PX].sum()
    if norm > 0:
      stamps.append(shifted / norm)
  if not stamps:
    raise ValueError("no measurable star to stack")
  stack = np.median(np.array(stamps), axis=0)
  return stack / stack.sum()


def estimate_psf_model(images, band: int = R_BAND, psf_fwhm_px: float | None = None,
                       n_components: int = PSF_COMPONENTS, **selection) -> PsfModel:
  """The set's own PSF in one band, label-free: `select_psf_stars`, `stack_psf`, `psf_mixture_from_images`.

  One PSF for the whole set (see the module docstring for what that cannot follow). Raises ValueError when
  fewer than MIN_PSF_STARS stars qualify. `psf_fwhm_px` fixes the size of the stellar locus (else its mode).
  """
  sigma = None if psf_fwhm_px is None else psf_fwhm_px / GAUSSIAN_FWHM_PER_SIGMA
  stars = select_psf_stars(images, band, sigma, **selection)
  if len(stars) < MIN_PSF_STARS:
    raise ValueError(f"only {len(stars)} bright isolated point-like objects (need {MIN_PSF_STARS}): "
                     "cannot estimate the PSF from this set; pass a PSF")
  image = stack_psf(images, stars, band)
  mixture = psf_mixture_from_images(image, n_components)
  return PsfModel(image, mixture, mixture_fwhm_px(mixture), int(len(stars)), stars)
