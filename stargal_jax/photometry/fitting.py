"""PSF, de Vaucouleurs, exponential and cModel fits of every object of a set in one band, as SDSS PHOTO does
(see the package docstring), and the criteria read directly off the fits."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from stargal_jax.photometry.kernels import (box_coordinates, convolved_mixture, levenberg_marquardt,
                                            profiled_fit, radius_grid, render_mixture)
from stargal_jax.photometry.profiles import DEV_MIXTURE, EXP_MIXTURE, GaussianMixture

R_BAND = 2
SDSS_EXTENDED_CUT_MAG = 0.145  # SDSS: psfMag - cModelMag > 0.145 means extended
BACKGROUND_INNER_RADIUS_PX = 24.0  # as morphology: the background and noise come from radius >= 9.5"
MAD_TO_SIGMA = 1.4826
FIT_BOX = 28  # model fits use the central 28 x 28 px (11"): the object, not its neighbours' wings
MAX_SHIFT_PX = 1.5  # the centre may move this far from the detected centre
MIN_RADIUS_PX, MAX_RADIUS_PX = 0.05, 30.0
MAX_ETA = 3.0  # |eta| = ln(1 / q): axis ratio q >= 0.05
N_LM_STEPS = 6
N_PSF_LM_STEPS = 4  # the PSF fit has only the centre shift to find
START_RADII_PX = (0.5, 1.5, 4.5)
NEIGHBOUR_THRESHOLD_SIGMA = 3.0  # of the 1-px-smoothed image's noise
BLOCK_SIZE = 16  # objects per compiled call: one compilation serves sets of any size; small blocks stay in cache
ZERO_POINT_MAG = 22.5


def prepare_band(images, band: int) -> tuple[np.ndarray, np.ndarray]:
  """(pixels (N, H, W) float64 background-subtracted with NaN kept, noise sigma (N,)) of one band.

  Background: median of the finite pixels at radius >= 24 px; noise: 1.4826 x their median absolute deviation
  (robust to neighbours there). Rows with no finite outer pixel get background 0 and noise NaN.
  """
  if np.ndim(images) != 4:
    raise ValueError(f"images must be (N, bands, H, W), got shape {np.shape(images)}")
  pixels = np.array(images[:, band], dtype=np.float64)
  pixels[~np.isfinite(pixels)] = np.nan
  outer = pixels[:, radius_grid(*pixels.shape[1:]) >= BACKGROUND_INNER_RADIUS_PX]
  background = np.zeros(len(pixels))
  sigma = np.full(len(pixels), np.nan)
  rows = np.isfinite(outer).any(axis=1)
  if rows.any():
    background[rows] = np.nanmedian(outer[rows], axis=1)
    sigma[rows] = MAD_TO_SIGMA * np.nanmedian(np.abs(outer[rows] - background[rows, None]), axis=1)
  return pixels - background[:, None, None], sigma


def neighbour_mask(pixels: np.ndarray, sigma: np.ndarray, threshold: float = NEIGHBOUR_THRESHOLD_SIGMA
                   ) -> np.ndarray:
  """(N, H, W) bool, True on pixels of other sources: connected regions of the 1-px Gaussian-smoothed image
  above `threshold` times its noise that do not contain the central pixel (a label-free deblend)."""
  n, height, width = pixels.shape
  mask = np.zeros(pixels.shape, dtype=bool)
  # Smoothing by a unit-sum Gaussian of 1 px lowers white noise by 1 / (2 sqrt(pi) x 1 px).
  smoothed_sigma = sigma / (2.0 * math.sqrt(math.pi))
  for i in range(n):
    if not np.isfinite(sigma[i]) or sigma[i] <= 0:
      continue
    smooth = ndimage.gaussian_filter(np.nan_to_num(pixels[i]), 1.0)
    labels, count = ndimage.label(smooth > threshold * smoothed_sigma[i])
    if count:
      central = labels[height // 2, width // 2]
      mask[i] = (labels > 0) & (labels != central)
  return mask


def _clip_params(params):
  shift = jnp.clip(params[:2], -MAX_SHIFT_PX, MAX_SHIFT_PX)
  log_radius = jnp.clip(params[2:3], math.log(MIN_RADIUS_PX), math.log(MAX_RADIUS_PX))
  eta = params[3:5]
  norm = jnp.sqrt(jnp.sum(eta ** 2) + 1e-12)
  eta = eta * jnp.minimum(1.0, MAX_ETA / norm)
  return jnp.concatenate([shift, log_radius, eta])


def _start_eta(data, weight, yy, xx, psf_amps, psf_covs):
  """Ellipticity start: the weighted second moments (Gaussian weight of the PSF's size) minus the PSF's."""
  psf_cov = jnp.sum(psf_amps[:, None, None] * psf_covs, axis=0) / jnp.sum(psf_amps)
  window = jnp.exp(-0.5 * (yy ** 2 + xx ** 2) / (2.0 * jnp.trace(psf_cov)))
  mass = jnp.where(weight > 0, data, 0.0) * window
  total = jnp.sum(mass)
  myy, mxy, mxx = (jnp.sum(mass * yy * yy) / total, jnp.sum(mass * yy * xx) / total,
                   jnp.sum(mass * xx * xx) / total)
  e1 = (myy - mxx) / (myy + mxx)
  e2 = 2 * mxy / (myy + mxx)
  e = jnp.sqrt(e1 ** 2 + e2 ** 2 + 1e-12)
  valid = jnp.isfinite(e) & (total > 0) & (e < 0.95)
  eta_norm = jnp.arctanh(jnp.clip(e, 0.0, 0.95))
  return jnp.where(valid, jnp.stack([e1, e2]) / e * eta_norm, jnp.zeros(2))


def _fit_one(data, weight, psf_amps, psf_covs, yy, xx):
  """All fits of one object (data and weight (P,) in the box): a dict of scalars."""
  dtype = data.dtype
  psf_template = lambda shift: render_mixture(psf_amps, psf_covs, shift, yy, xx)

  def psf_residual(shift):
    return profiled_fit(psf_template(shift), data, weight)[1]

  shift, chi2_psf = levenberg_marquardt(psf_residual, jnp.zeros(2, dtype), N_PSF_LM_STEPS,
                                         lambda s: jnp.clip(s, -MAX_SHIFT_PX, MAX_SHIFT_PX))
  psf_image = psf_template(shift)
  psf_flux, _ = profiled_fit(psf_image, data, weight)
  psf_norm = jnp.sum(weight * psf_image ** 2)

  # Extension template: d/ds^2 of PSF x N(0, s^2 I) at s = 0, i.e. (1/2) Laplacian of the PSF (heat equation).
  a, b, c = psf_covs[:, 0, 0], psf_covs[:, 0, 1], psf_covs[:, 1, 1]
  det = a * c - b * b
  dy, dx = yy - shift[0], xx - shift[1]
  iyy, ixy, ixx = c / det, -b / det, a / det  # C^-1
  gy = iyy[:, None] * dy + ixy[:, None] * dx  # C^-1 r
  gx = ixy[:, None] * dy + ixx[:, None] * dx
  gauss = psf_amps[:, None] / (2 * jnp.pi * jnp.sqrt(det))[:, None] * jnp.exp(
      -0.5 * (dy * gy + dx * gx))
  laplacian = jnp.sum(gauss * (gy ** 2 + gx ** 2 - (iyy + ixx)[:, None]), axis=0)
  extension_template = 0.5 * laplacian
  normal = jnp.array([[psf_norm, jnp.sum(weight * psf_image * extension_template)],
                      [jnp.sum(weight * psf_image * extension_template), jnp.sum(weight * extension_template ** 2)]])
  rhs = jnp.array([jnp.sum(weight * data * psf_image), jnp.sum(weight * data * extension_template)])
  coefficients = jnp.linalg.solve(normal, rhs)
  covariance = jnp.linalg.inv(normal)
  extension_z = coefficients[1] / jnp.sqrt(covariance[1, 1])

  eta0 = _start_eta(data, weight, yy - shift[0], xx - shift[1], psf_amps, psf_covs)
  results = {"psf_flux": psf_flux, "psf_flux_err": 1.0 / jnp.sqrt(psf_norm), "chi2_psf": chi2_psf,
             "shift_y": shift[0], "shift_x": shift[1], "extension_z": extension_z,
             "extension_variance_px2": coefficients[1] / coefficients[0]}
  # deV and exp share one compiled fit, vmapped over the two profiles (both have the same number of components).
  profile_amps = jnp.asarray([DEV_MIXTURE.amplitudes, EXP_MIXTURE.amplitudes], dtype)
  profile_vars = jnp.asarray([DEV_MIXTURE.variances, EXP_MIXTURE.variances], dtype)
  starts = jnp.stack([jnp.concatenate([shift, jnp.log(jnp.asarray([radius], dtype)), eta0])
                      for radius in START_RADII_PX])

  def galaxy_fit(amps_k, vars_k):
    def template(params):
      amps, covs = convolved_mixture(amps_k, vars_k, params, psf_amps, psf_covs)
      return render_mixture(amps, covs, params[:2], yy, xx)

    residual = lambda params: profiled_fit(template(params), data, weight)[1]
    start_chi2 = jax.vmap(lambda p: jnp.sum(residual(p) ** 2))(starts)
    start = starts[jnp.argmin(jnp.where(jnp.isfinite(start_chi2), start_chi2, jnp.inf))]
    params, chi2 = levenberg_marquardt(residual, start, N_LM_STEPS, _clip_params)
    image = template(params)
    return params, chi2, image, profiled_fit(image, data, weight)[0]

  params, chi2, images, fluxes = jax.vmap(galaxy_fit)(profile_amps, profile_vars)
  templates = {}
  for i, name in enumerate(("dev", "exp")):
    eta_norm = jnp.sqrt(jnp.sum(params[i, 3:5] ** 2))
    templates[name] = images[i]
    results.update({f"{name}_flux": fluxes[i], f"chi2_{name}": chi2[i], f"{name}_radius_px": jnp.exp(params[i, 2]),
                    f"{name}_axis_ratio": jnp.exp(-eta_norm),
                    f"{name}_angle": 0.5 * jnp.arctan2(params[i, 4], params[i, 3])})

  # cModel: best non-negative a T_deV + b T_exp (2-d NNLS: the interior solution, else the best single one).
  t_dev, t_exp = templates["dev"], templates["exp"]
  gram = jnp.array([[jnp.sum(weight * t_dev ** 2), jnp.sum(weight * t_dev * t_exp)],
                    [jnp.sum(weight * t_dev * t_exp), jnp.sum(weight * t_exp ** 2)]])
  projection = jnp.array([jnp.sum(weight * data * t_dev), jnp.sum(weight * data * t_exp)])
  det = gram[0, 0] * gram[1, 1] - gram[0, 1] ** 2
  interior = jnp.array([gram[1, 1] * projection[0] - gram[0, 1] * projection[1],
                        gram[0, 0] * projection[1] - gram[0, 1] * projection[0]]) / jnp.where(det > 0, det, 1.0)
  interior_ok = (det > 1e-6 * gram[0, 0] * gram[1, 1]) & jnp.all(interior >= 0)
  dev_only = jnp.maximum(projection[0] / gram[0, 0], 0.0)
  exp_only = jnp.maximum(projection[1] / gram[1, 1], 0.0)
  chi2_of = lambda coef: jnp.sum(weight * (data - coef[0] * t_dev - coef[1] * t_exp) ** 2)
  single = jnp.where(chi2_of(jnp.array([dev_only, 0.0])) <= chi2_of(jnp.array([0.0, exp_only])),
                     jnp.array([dev_only, 0.0]), jnp.array([0.0, exp_only]))
  coef = jnp.where(interior_ok, interior, single)
  total = coef[0] + coef[1]
  frac_dev = jnp.where(total > 0, coef[0] / jnp.where(total > 0, total, 1.0),
                       jnp.where(results["chi2_dev"] <= results["chi2_exp"], 1.0, 0.0))
  results["frac_dev"] = jnp.clip(frac_dev, 0.0, 1.0)
  results["cmodel_flux"] = results["frac_dev"] * results["dev_flux"] + (1 - results["frac_dev"]) * results["exp_flux"]
  results["chi2_cmodel"] = chi2_of(coef)
  results["n_pixels"] = jnp.sum(weight > 0).astype(dtype)
  return results


@functools.lru_cache(maxsize=8)
def compiled_fit(height: int, width: int, box: int):
  _, _, yy, xx = box_coordinates(height, width, box)
  return jax.jit(jax.vmap(lambda d, w, pa, pc: _fit_one(d, w, pa, pc, yy, xx)))


class ModelFits(NamedTuple):
  """Per-object (N,) results of `fit_models` (fluxes in nanomaggies, sizes in px, chi^2 over the fit box)."""
  psf_flux: np.ndarray
  psf_flux_err: np.ndarray  # background-noise error of the PSF flux
  dev_flux: np.ndarray
  exp_flux: np.ndarray
  cmodel_flux: np.ndarray
  frac_dev: np.ndarray
  dev_radius_px: np.ndarray  # circularised effective radius sqrt(a b)
  exp_radius_px: np.ndarray
  dev_axis_ratio: np.ndarray
  exp_axis_ratio: np.ndarray
  dev_angle: np.ndarray  # radians from the row axis towards the column axis
  exp_angle: np.ndarray
  chi2_psf: np.ndarray
  chi2_dev: np.ndarray
  chi2_exp: np.ndarray
  chi2_cmodel: np.ndarray
  n_pixels: np.ndarray  # pixels with non-zero weight
  shift_y: np.ndarray  # PSF-fit centre minus the detected centre, px
  shift_x: np.ndarray
  extension_z: np.ndarray  # see extension_significance
  extension_variance_px2: np.ndarray  # the extension amplitude per unit flux: extra Gaussian variance, px^2


def _per_object_psf(psf: GaussianMixture, n: int) -> tuple[np.ndarray, np.ndarray]:
  amps = np.asarray(psf.amplitudes, dtype=np.float32)
  covs = np.asarray(psf.covariances, dtype=np.float32)
  if amps.ndim == 1:
    amps, covs = np.broadcast_to(amps, (n,) + amps.shape), np.broadcast_to(covs, (n,) + covs.shape)
  if amps.shape[0] != n or covs.shape != amps.shape + (2, 2):
    raise ValueError(f"psf must be shared ((K,), (K, 2, 2)) or per object ((N, K), (N, K, 2, 2)) with N = {n}; "
                     f"got amplitudes {amps.shape}, covariances {covs.shape}")
  return amps, covs


def fit_models(images, psf: GaussianMixture, band: int = R_BAND, variance=None,
               mask_neighbours: bool = True) -> ModelFits:
  """PSF, deV, exp and cModel fits of every object in one band (see the module docstring).

  images: (N, bands, H, W) nanomaggies; psf: this band's PSF, shared or per object; variance: optional
  (N, H, W) per-pixel variance (nanomaggies^2) replacing the background-only weights.
  """
  pixels, sigma = prepare_band(images, band)
  n, height, width = pixels.shape
  psf_amps, psf_covs = _per_object_psf(psf, n)
  if variance is not None and np.shape(variance) != pixels.shape:
    raise ValueError(f"variance must be (N, H, W) = {pixels.shape}, got {np.shape(variance)}")
  box = min(FIT_BOX, height, width)
  rows, cols, _, _ = box_coordinates(height, width, box)
  valid = np.isfinite(pixels)
  if mask_neighbours:
    valid &= ~neighbour_mask(pixels, sigma)
  # Work in units of each object's noise so that chi^2 and the float32 sums stay well scaled.
  scale = np.where(np.isfinite(sigma) & (sigma > 0), sigma, 1.0)
  data = np.where(valid, pixels, 0.0) / scale[:, None, None]
  if variance is None:
    weight = (valid & np.isfinite(sigma)[:, None, None] & (sigma > 0)[:, None, None]).astype(np.float64)
  else:
    var = np.asarray(variance, dtype=np.float64) / scale[:, None, None] ** 2
    weight = np.where(valid & np.isfinite(var) & (var > 0), 1.0 / np.where(var > 0, var, 1.0), 0.0)
  data = data[:, rows, cols].reshape(n, -1).astype(np.float32)
  weight = weight[:, rows, cols].reshape(n, -1).astype(np.float32)
  fit = compiled_fit(height, width, box)
  parts = []
  for start in range(0, n, BLOCK_SIZE):
    stop = min(start + BLOCK_SIZE, n)
    pad = BLOCK_SIZE - (stop - start)
    padded = lambda a: np.concatenate([a[start:stop], np.repeat(a[start:start + 1], pad, axis=0)])
    block_weight = padded(weight)
    block_weight[stop - start:] = 0.0
    out = fit(padded(data), block_weight, padded(psf_amps), padded(psf_covs))
    parts.append({k: np.asarray(v, dtype=np.float64)[:stop - start] for k, v in out.items()})
  values = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in ModelFits._fields}
  for key in ("psf_flux", "psf_flux_err", "dev_flux", "exp_flux", "cmodel_flux"):
    values[key] = values[key] * scale
  empty = values["n_pixels"] == 0
  for key in values:
    values[key] = np.where(empty, np.nan, values[key])
  return ModelFits(**values)


def psf_minus_cmodel(fits: ModelFits) -> np.ndarray:
  """(N,) psfMag - cModelMag = -2.5 log10(F_psf / F_cModel): ~0 for point sources, > 0.145 extended (SDSS).

  NaN where either flux is not positive (no measurable object).
  """
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = np.where((fits.psf_flux > 0) & (fits.cmodel_flux > 0), fits.psf_flux / fits.cmodel_flux, np.nan)
    return -2.5 * np.log10(ratio)


def extension_significance(fits: ModelFits) -> np.ndarray:
  """(N,) signed significance z of extendedness: ~N(0, 1) for a point source at any S/N, larger = extended.

  Definition: at the PSF-fit centre, the image is fitted by weighted linear least squares as
  F P + G L, with P the unit-flux PSF and L = dP_s/d(s^2) at s = 0 = (1/2) Laplacian(P), the change of the
  PSF when convolved with a small Gaussian N(0, s^2 I) (the heat equation); z = G / sigma(G), with sigma(G)
  from the inverse normal matrix of the same weights.
  Why: psfMag - cModelMag of a barely resolved source is, to first order, proportional to G / F (its extra
  size s^2 = G / F, `extension_variance_px2`), so z is the criterion's leading term in units of its own noise.
  A linear statistic has an exact null: for a point source with Gaussian noise of the stated variance,
  G is unbiased and z ~ N(0, 1), whatever its brightness, so z > 3 means extended at 3 sigma at every
  magnitude, where psfMag - cModelMag > 0.145 blurs as the noise grows at the faint end. It is the locally
  most powerful test of a point source against a small extension (SExtractor's SPREAD_MODEL / its error is
  the same idea with a different template). With background-only weights, bright objects' Poisson noise is
  ignored, so |z| of bright stars is larger than N(0, 1) (as are PSF-model errors there).
  """
  return np.asarray(fits.extension_z, dtype=np.float64)


def flux_to_magnitude(flux) -> np.ndarray:
  """22.5 - 2.5 log10(flux / nanomaggy); NaN for non-positive flux."""
  flux = np.asarray(flux, dtype=np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(flux > 0, ZERO_POINT_MAG - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
