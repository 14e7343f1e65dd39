"""Model-fit photometry of cutouts as the SDSS pipeline (PHOTO) does it: PSF, de Vaucouleurs, exponential and
composite (cModel) fluxes, and the star-galaxy criteria built from them.

SDSS separates stars from galaxies with psfMag - cModelMag > 0.145 (Stoughton et al. 2002, AJ 123, 485; Abazajian
et al. 2004): a point source's light is all in the PSF, a galaxy's spreads beyond it. This module measures that
criterion on the project's cutouts, label-free, and a S/N-aware version of it.

Conventions (as `stargal_jax.morphology`): images are float (N, 5, H, W) nanomaggies, bands u, g, r, i, z,
sky-subtracted, 0.396"/px, the object at array coordinate (H // 2, W // 2). Pixel coordinates are (row, column)
= (y, x); covariances are 2 x 2 in that order, in px^2. Each cutout is first background-subtracted (median of
the pixels at radius >= 24 px) and its noise measured there (1.4826 x MAD), as in morphology.

1. Profiles. Exponential and de Vaucouleurs profiles are mixtures of concentric Gaussians (Hogg & Lang 2013,
   PASP 125, 719), fitted here (`fit_sersic_mixture`) to the radial profile and enclosed flux of the analytic
   Sersic profile: EXP_MIXTURE (6 Gaussians, the untruncated exponential, enclosed flux within 1.3e-4 of the
   truth) and DEV_MIXTURE (6 Gaussians, the de Vaucouleurs profile with SDSS's soft truncation, tapered to 0
   between 7 and 8 r_e, enclosed flux within 5e-3). A model galaxy of effective radius r_e, axis ratio q and
   position angle phi is the mixture with covariances v_k r_e^2 R diag(1/q, q) R^T: r_e is the circularised
   half-light radius sqrt(a b).
2. PSF. Either a `GaussianMixture` given per object or shared (e.g. per-field PSFs, or the simulator's truth,
   through `psf_mixture_from_images`), or estimated from the set itself (`estimate_psf_model`): the bright,
   isolated, point-like objects (the narrowest mode of the adaptive sizes, as `morphology.estimate_psf`) are
   recentred, normalised and median-stacked, and a mixture of PSF_COMPONENTS elliptical Gaussians is fitted to
   the stack. The stack samples the pixel-convolved ("effective") PSF, so models convolved with it and sampled
   at pixel centres are pixel-integrated. Limits of a set-level PSF: one PSF per set, while seeing varies from
   field to field (and, in the simulator, from cutout to cutout): a star seen in worse seeing than the set's
   PSF looks slightly extended, one in better seeing slightly compact. Give per-object PSFs where known.
3. Fits (`fit_models`, JAX, jitted and vmapped over objects, blocks of BLOCK_SIZE): in a FIT_BOX x FIT_BOX box
   about the centre, with inverse-variance weights from each cutout's background noise (background-only: the
   object's own Poisson noise cannot be estimated label-free from sky-subtracted nanomaggies; pass `variance`
   maps, e.g. from `stargal_jax.sdss_frames`, to include it) and neighbours masked (connected regions above
   NEIGHBOUR_THRESHOLD_SIGMA that do not touch the centre):
   - PSF: flux (linear) and a centre shift of at most MAX_SHIFT_PX (Levenberg-Marquardt);
   - deV and exp: flux (solved linearly for each shape, variable projection), and by Levenberg-Marquardt
     (N_LM_STEPS steps from the best of a small grid of circular sizes) the shape: centre shift, log r_e and the
     two ellipticity components;
   - cModel as SDSS: the best non-negative combination a T_deV + b T_exp of the best-fit unit-flux deV and exp
     model images gives fracDeV = a / (a + b), and cModelFlux = fracDeV F_deV + (1 - fracDeV) F_exp.
4. Criteria: `psf_minus_cmodel` = psfMag - cModelMag = -2.5 log10(F_psf / F_cModel) (> 0.145: extended, SDSS);
   `psf_cmodel_significance`, the same in units of its uncertainty (statistical and the set's stellar-locus
   width), ~0 with unit spread for point sources at every S/N; and `extension_significance`, a linear test
   with an exact N(0, 1) null (see the docstrings; measured on simulations it ranks worse, kept as a diagnostic).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate, ndimage, optimize, special

from stargal_jax import PIXEL_SCALE_ARCSEC

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
PSF_COMPONENTS = 3
MIN_PSF_STARS = 5
PSF_LOCUS_TOLERANCE = 0.05  # stars: adaptive size within 5% of the narrowest mode (as morphology)
PSF_ISOLATION_PEAK_FRACTION = 0.05  # a star with a pixel above 5% of its peak at 6-20 px has a neighbour
PSF_NORMALISATION_RADIUS_PX = 8.0
GAUSSIAN_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
ZERO_POINT_MAG = 22.5


class GaussianMixture(NamedTuple):
  """Concentric 2-d Gaussians at the array centre: amplitudes (..., K) summing to the total flux, covariances
  (..., K, 2, 2) in px^2, (row, column) order. A leading object axis makes it per-object."""
  amplitudes: np.ndarray
  covariances: np.ndarray


class ProfileMixture(NamedTuple):
  """A circular unit-flux profile of unit effective radius as sum_k a_k N(0, v_k I)."""
  amplitudes: tuple
  variances: tuple


# Fitted by fit_sersic_mixture(1, 6, None, 10.0) and fit_sersic_mixture(4, 6, DEV_TRUNCATION, 8.0).
EXP_MIXTURE = ProfileMixture(
    amplitudes=(0.0022952054608287383, 0.024209292508212046, 0.12242184671671584, 0.33696785393132184,
                0.40278179180103924, 0.11132400958176131),
    variances=(0.00631372581907743, 0.04251455150726316, 0.16619635576569905, 0.5024920357815162,
               1.3039565459889735, 3.123322618425269))
DEV_TRUNCATION = (7.0, 8.0)  # SDSS: the deV profile is tapered to zero between 7 and 8 r_e
DEV_MIXTURE = ProfileMixture(
    amplitudes=(0.0038996908990068463, 0.030351016543243122, 0.1137907751115319, 0.23969725381513488,
                0.320552434623287, 0.29170882900842077),
    variances=(6.02177959194674e-05, 0.0012804845865103207, 0.015377496511169058, 0.13195717095146758,
               0.9435263192280259, 7.353313694788475))


# ----------------------------------------------------------------------------------------------- profiles

def sersic_b(n: float) -> float:
  """b_n such that r_e holds half the light of exp(-b_n (r / r_e)^(1/n)): the root of P(2n, b) = 1/2."""
  return float(optimize.brentq(lambda b: special.gammainc(2 * n, b) - 0.5, 1e-3, 50.0))


def soft_truncation(r, r_in: float, r_out: float) -> np.ndarray:
  """1 inside r_in, (1 - x^2)^2 with x = (r - r_in) / (r_out - r_in) between, 0 beyond r_out (smooth to 0)."""
  x = np.clip((np.asarray(r, dtype=np.float64) - r_in) / (r_out - r_in), 0.0, 1.0)
  return (1.0 - x ** 2) ** 2


def sersic_profile(r, n: float, truncation: tuple | None = None) -> np.ndarray:
  """exp(-b_n ((r / r_e)^(1/n) - 1)) at radii r in units of r_e (1 at r_e), optionally soft-truncated."""
  r = np.asarray(r, dtype=np.float64)
  profile = np.exp(-sersic_b(n) * (r ** (1.0 / n) - 1.0))
  return profile * soft_truncation(r, *truncation) if truncation else profile


def sersic_enclosed(r, n: float, truncation: tuple | None = None) -> np.ndarray:
  """Flux within radii r (units of r_e) of `sersic_profile`, by quadrature (not normalised)."""
  def one(radius: float) -> float:
    breaks = [p for p in (0.01, 0.1, 1.0, 3.0, 7.0) if p < radius]
    return integrate.quad(lambda x: float(sersic_profile(x, n, truncation)) * 2 * np.pi * x, 0.0, radius,
                          points=breaks or None, limit=400)[0]
  return np.array([one(float(radius)) for radius in np.atleast_1d(r)])


def mixture_enclosed(mixture: ProfileMixture, r) -> np.ndarray:
  """Fraction of a ProfileMixture's flux within radii r (units of r_e)."""
  a, v = np.asarray(mixture.amplitudes), np.asarray(mixture.variances)
  r = np.atleast_1d(np.asarray(r, dtype=np.float64))
  return (a * (1.0 - np.exp(-r[:, None] ** 2 / (2 * v)))).sum(axis=1)


def mixture_profile(mixture: ProfileMixture, r) -> np.ndarray:
  """Surface brightness of a ProfileMixture at radii r (units of r_e), unit total flux."""
  a, v = np.asarray(mixture.amplitudes), np.asarray(mixture.variances)
  r = np.atleast_1d(np.asarray(r, dtype=np.float64))
  return (a / (2 * np.pi * v) * np.exp(-r[:, None] ** 2 / (2 * v))).sum(axis=1)


def fit_sersic_mixture(n: float, n_components: int, truncation: tuple | None, r_max: float,
                       n_starts: int = 6) -> ProfileMixture:
  """Least-squares mixture of `n_components` Gaussians for a Sersic profile of index n, out to r_max r_e.

  Residuals: the enclosed-flux fraction on a log grid of radii (what photometry needs) plus the surface
  brightness weighted by the annulus area (so the profile does not oscillate); amplitudes by a softmax
  (unit total flux), variances by their logs; the best of `n_starts` jittered starts.
  """
  total = float(sersic_enclosed(r_max + 1.0, n, truncation)[0])
  r = np.geomspace(1e-3, r_max, 400)
  enclosed = sersic_enclosed(r, n, truncation) / total
  profile = sersic_profile(r, n, truncation) / total
  area_weight = 2 * np.pi * np.sqrt(r * np.gradient(r))

  def unpack(p):
    return np.exp(p[:n_components] - np.logaddexp.reduce(p[:n_components])), np.exp(np.clip(p[n_components:], -30, 10))

  def residuals(p):
    mixture = ProfileMixture(*unpack(p))
    return np.concatenate([3.0 * (mixture_enclosed(mixture, r) - enclosed),
                           (mixture_profile(mixture, r) - profile) * area_weight])

  start = np.concatenate([np.zeros(n_components), np.log(np.geomspace(1e-4, r_max ** 2 / 8, n_components))])
  best = None
  for s in range(n_starts):
    jitter = np.random.default_rng(s).normal(0, 0.3, 2 * n_components) if s else 0.0
    solution = optimize.least_squares(residuals, start + jitter, method="lm", max_nfev=20000, xtol=1e-14,
                                      ftol=1e-14)
    if best is None or solution.cost < best.cost:
      best = solution
  amplitudes, variances = unpack(best.x)
  order = np.argsort(variances)
  return ProfileMixture(tuple(amplitudes[order].tolist()), tuple(variances[order].tolist()))


# ------------------------------------------------------------------------------------- pixels and noise

@functools.lru_cache(maxsize=8)
def _radius_grid(height: int, width: int) -> np.ndarray:
  y, x = np.indices((height, width), dtype=np.float64)
  return np.hypot(y - height // 2, x - width // 2)


def prepare_band(images, band: int) -> tuple[np.ndarray, np.ndarray]:
  """(pixels (N, H, W) float64 background-subtracted with NaN kept, noise sigma (N,)) of one band.

  Background: median of the finite pixels at radius >= 24 px; noise: 1.4826 x their median absolute deviation
  (robust to neighbours there). Rows with no finite outer pixel get background 0 and noise NaN.
  """
  if np.ndim(images) != 4:
    raise ValueError(f"images must be (N, bands, H, W), got shape {np.shape(images)}")
  pixels = np.array(images[:, band], dtype=np.float64)
  pixels[~np.isfinite(pixels)] = np.nan
  outer = pixels[:, _radius_grid(*pixels.shape[1:]) >= BACKGROUND_INNER_RADIUS_PX]
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


# --------------------------------------------------------------------------------------- JAX kernels

def _box_coordinates(height: int, width: int, box: int) -> tuple[slice, slice, jnp.ndarray, jnp.ndarray]:
  top, left = height // 2 - box // 2, width // 2 - box // 2
  y, x = np.indices((box, box), dtype=np.float64)
  return (slice(top, top + box), slice(left, left + box),
          jnp.asarray((y + top - height // 2).ravel(), jnp.float32),
          jnp.asarray((x + left - width // 2).ravel(), jnp.float32))


def _render(amplitudes, covariances, shift, yy, xx):
  """sum_k a_k N(shift, C_k) at pixel centres (yy, xx) (P,): (P,)."""
  a, b, c = covariances[:, 0, 0], covariances[:, 0, 1], covariances[:, 1, 1]
  det = a * c - b * b
  dy, dx = yy - shift[0], xx - shift[1]
  quadratic = (c[:, None] * dy ** 2 - 2 * b[:, None] * dy * dx + a[:, None] * dx ** 2) / det[:, None]
  norm = amplitudes / (2 * jnp.pi * jnp.sqrt(det))
  return jnp.sum(norm[:, None] * jnp.exp(-0.5 * quadratic), axis=0)


def _shape_matrix(eta):
  """expm([[e1, e2], [e2, -e1]]): unit determinant, eigenvalues exp(+-|eta|), so axis ratio q = exp(-|eta|)."""
  norm = jnp.sqrt(eta[0] ** 2 + eta[1] ** 2 + 1e-12)
  scale = jnp.sinh(norm) / norm
  return (jnp.cosh(norm) * jnp.eye(2) + scale * jnp.array([[eta[0], eta[1]], [eta[1], -eta[0]]]))


def _convolved(profile_amps, profile_vars, params, psf_amps, psf_covs):
  """Amplitudes (K J,) and covariances (K J, 2, 2) of a galaxy (params: dy, dx, log r_e, e1, e2) x PSF."""
  shape = jnp.exp(2 * params[2]) * _shape_matrix(params[3:5])
  galaxy = profile_vars[:, None, None] * shape[None]
  covs = (galaxy[:, None] + psf_covs[None]).reshape(-1, 2, 2)
  amps = (profile_amps[:, None] * psf_amps[None]).reshape(-1)
  return amps, covs


def _profiled_fit(template, data, weight):
  """Flux F = sum(w d t) / sum(w t^2) of a unit-flux template and the residual sqrt(w) (d - F t)."""
  norm = jnp.maximum(jnp.sum(weight * template ** 2), 1e-30)
  flux = jnp.sum(weight * data * template) / norm
  return flux, jnp.sqrt(weight) * (data - flux * template)


def _clip_params(params):
  shift = jnp.clip(params[:2], -MAX_SHIFT_PX, MAX_SHIFT_PX)
  log_radius = jnp.clip(params[2:3], math.log(MIN_RADIUS_PX), math.log(MAX_RADIUS_PX))
  eta = params[3:5]
  norm = jnp.sqrt(jnp.sum(eta ** 2) + 1e-12)
  eta = eta * jnp.minimum(1.0, MAX_ETA / norm)
  return jnp.concatenate([shift, log_radius, eta])


def _levenberg_marquardt(residual_fn, params, n_steps: int, clip):
  """n_steps damped Gauss-Newton steps (Marquardt scaling); a step is kept only if chi^2 drops."""
  n = params.shape[0]
  basis = jnp.eye(n, dtype=params.dtype)

  def residual_and_jacobian(p):
    r = residual_fn(p)
    jac = jax.vmap(lambda v: jax.jvp(residual_fn, (p,), (v,))[1], out_axes=1)(basis)
    return r, jac

  def step(carry, _):
    p, damping, chi2 = carry
    r, jac = residual_and_jacobian(p)
    hessian = jac.T @ jac
    gradient = jac.T @ r
    damped = hessian + damping * (jnp.diag(jnp.diag(hessian)) + 1e-9 * jnp.eye(n))
    candidate = clip(p - jnp.linalg.solve(damped, gradient))
    candidate_chi2 = jnp.sum(residual_fn(candidate) ** 2)
    better = jnp.isfinite(candidate_chi2) & (candidate_chi2 < chi2)
    return (jnp.where(better, candidate, p), jnp.where(better, damping * 0.3, damping * 10.0),
            jnp.where(better, candidate_chi2, chi2)), None

  chi2 = jnp.sum(residual_fn(params) ** 2)
  (params, _, chi2), _ = jax.lax.scan(step, (params, jnp.asarray(1e-2, params.dtype), chi2), None,
                                      length=n_steps)
  return params, chi2


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
  psf_template = lambda shift: _render(psf_amps, psf_covs, shift, yy, xx)

  def psf_residual(shift):
    return _profiled_fit(psf_template(shift), data, weight)[1]

  shift, chi2_psf = _levenberg_marquardt(psf_residual, jnp.zeros(2, dtype), N_PSF_LM_STEPS,
                                         lambda s: jnp.clip(s, -MAX_SHIFT_PX, MAX_SHIFT_PX))
  psf_image = psf_template(shift)
  psf_flux, _ = _profiled_fit(psf_image, data, weight)
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
      amps, covs = _convolved(amps_k, vars_k, params, psf_amps, psf_covs)
      return _render(amps, covs, params[:2], yy, xx)

    residual = lambda params: _profiled_fit(template(params), data, weight)[1]
    start_chi2 = jax.vmap(lambda p: jnp.sum(residual(p) ** 2))(starts)
    start = starts[jnp.argmin(jnp.where(jnp.isfinite(start_chi2), start_chi2, jnp.inf))]
    params, chi2 = _levenberg_marquardt(residual, start, N_LM_STEPS, _clip_params)
    image = template(params)
    return params, chi2, image, _profiled_fit(image, data, weight)[0]

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
def _compiled_fit(height: int, width: int, box: int):
  _, _, yy, xx = _box_coordinates(height, width, box)
  return jax.jit(jax.vmap(lambda d, w, pa, pc: _fit_one(d, w, pa, pc, yy, xx)))


# ------------------------------------------------------------------------------------------- fits API

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
  rows, cols, _, _ = _box_coordinates(height, width, box)
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
  fit = _compiled_fit(height, width, box)
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


# ----------------------------------------------------------------------------------------------- PSF

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
  covs = jnp.exp(2 * p[:, 1])[:, None, None] * jax.vmap(_shape_matrix)(p[:, 2:4])
  return jnp.sqrt(weight) * (image - _render(amps, covs, jnp.zeros(2, image.dtype), yy, xx))


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
  params, _ = _levenberg_marquardt(residual, start, n_steps, clip)
  p = params.reshape(n_components, 4)
  amps = jnp.exp(p[:, 0])
  covs = jnp.exp(2 * p[:, 1])[:, None, None] * jax.vmap(_shape_matrix)(p[:, 2:4])
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
  image = _render(jnp.asarray(mixture.amplitudes, jnp.float32), jnp.asarray(mixture.covariances, jnp.float32),
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
  radius = _radius_grid(*pixels.shape[1:])
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
  radius = _radius_grid(*pixels.shape[1:])
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


# -------------------------------------------------------------------------------------- the criteria

# Null of psfMag - cModelMag for pure-noise point sources with the exact PSF (Monte Carlo, 400 realisations at
# each matched-filter S/N 20, 50, 200; background-only noise; the fit settings above): in units of
# sigma_m = 1.0857 sigma(F_psf) / F, median 0.62, 0.58, 0.76 and robust spread 0.67, 0.50, 0.44 (at S/N 10:
# 0.82 and 1.04, with a long positive tail). Extended models can only fit noise better than the PSF, hence the
# positive offset.
NULL_OFFSET = 0.65
NULL_SCALE = 0.55
LOCUS_SNR_QUANTILE = 0.7  # the locus centre and width come from the 30% highest-S/N objects


def psf_minus_cmodel_error(fits: ModelFits) -> np.ndarray:
  """(N,) sigma_m = 1.0857 sigma(F_psf) / F_cModel: the statistical noise of psfMag - cModelMag for a point
  source of this object's total (cModel) flux. Using the total flux, not the PSF flux, gives every object of
  the same brightness the same error whatever its class."""
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(fits.cmodel_flux > 0, 2.5 / math.log(10) * fits.psf_flux_err / fits.cmodel_flux, np.nan)


def stellar_locus(difference: np.ndarray, snr: np.ndarray) -> tuple[float, float]:
  """(centre, width) of the stellar locus of psfMag - cModelMag, label-free: among the 30% highest-S/N
  objects, the narrowest mode (stars pile up there, galaxies spread to larger values), and 1.4826 x the
  median distance below it of the values below it (the side galaxies do not reach). (0, 0) if < 10 objects."""
  finite = np.isfinite(difference) & np.isfinite(snr)
  if finite.sum() < 10:
    return 0.0, 0.0
  bright = finite & (snr >= np.quantile(snr[finite], LOCUS_SNR_QUANTILE))
  centre = narrowest_mode(difference[bright])
  below = difference[bright & (difference < centre)]
  width = MAD_TO_SIGMA * float(np.median(centre - below)) if below.size >= 5 else 0.0
  return float(centre), width


def psf_cmodel_significance(fits: ModelFits, locus_centre: float = 0.0, locus_width: float = 0.0
                            ) -> np.ndarray:
  """(N,) the S/N-aware criterion: psfMag - cModelMag in units of its uncertainty for a point source.

  t = (dm - m0 - a sigma_m) / sqrt((c sigma_m)^2 + w^2), with dm = psfMag - cModelMag, sigma_m its statistical
  noise for a point source of this flux (`psf_minus_cmodel_error`), a = NULL_OFFSET and c = NULL_SCALE the
  measured median and spread of dm / sigma_m for pure-noise point sources, and (m0, w) the stellar locus's
  centre and width (`stellar_locus`: label-free, from the set's bright objects; PSF-model and seeing errors
  that do not shrink with S/N). So t is ~0 with unit spread for point sources at every S/N (at S/N < 10 the
  noisy cModel fit widens the tail), and t > 3 means extended beyond what noise and the locus allow. The
  fixed cut dm > 0.145 instead calls 25% of point sources extended at S/N 10 (Monte Carlo above); that is the
  blur this removes. Ranked within a magnitude bin it orders like dm (the same sigma_m at the same flux).
  """
  sigma = psf_minus_cmodel_error(fits)
  return (psf_minus_cmodel(fits) - locus_centre - NULL_OFFSET * sigma) / np.sqrt(
      (NULL_SCALE * sigma) ** 2 + locus_width ** 2)


def sdss_criteria(images, band: int = R_BAND, psf: GaussianMixture | None = None, **fit_options
                  ) -> dict[str, np.ndarray]:
  """(N,) criteria in one band, with the set's own PSF when None: 'psf_minus_cmodel',
  'psf_cmodel_significance' (with the set's own stellar locus) and 'extension_significance'."""
  if psf is None:
    psf = estimate_psf_model(images, band).mixture
  fits = fit_models(images, psf, band, **fit_options)
  difference = psf_minus_cmodel(fits)
  with np.errstate(divide="ignore", invalid="ignore"):
    locus = stellar_locus(difference, fits.cmodel_flux / fits.psf_flux_err)
  return {"psf_minus_cmodel": difference, "psf_cmodel_significance": psf_cmodel_significance(fits, *locus),
          "extension_significance": extension_significance(fits)}
