"""The loss terms: reconstruction, KL-type and Wasserstein-flavoured latent penalties (conventions: `base`).

The authors' penalties (sc, dkl_authors, aw, pw) are kept for reproduction; the principled ones beside them
are dkl (exact KL), aw_star, pw_star and mmd (WAE-MMD); the adversarial term (WAE-GAN) is in `adversarial`.
Definitions: METHODS.md (the project's method notes), "Unsupervised classification".
"""

import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr
from jax.typing import ArrayLike

from stargal_jax import registry
from stargal_jax.losses.base import (DEFAULT_M, DEFAULT_S, HALF_LOG_2PI, Array, batch_mean_of_unit_sum,
                                     check_prior, gaussian_units, normal_pdf, prior_variance, require,
                                     sample_prior, select_units, term_key)

MMD_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # Tolstikhin et al. 2018, multiples of 2 d var(prior).


# The exact KL integrates softplus(-|c z|) numerically; beyond |c z| = 20 it is below 2e-9, and beyond
# 10 sigma the Gaussian weight is below 1e-22, so the integration range is cut there.
_SOFTPLUS_CUT = 20.0
_GAUSS_CUT = 10.0


# ----------------------------------------------------------------------------------------------
# Reconstruction


def recon_mse(outputs: Mapping, batch: Mapping, context: Mapping, *, reduction: str = "sum") -> Array:
  """Squared error: summed over features ('sum') or averaged over them ('mean'), then averaged over the batch."""
  diff = require(outputs, "recon", "recon_mse", "outputs") - batch["x"]
  per_example = jnp.reshape(diff**2, (diff.shape[0], -1))
  if reduction == "sum":
    return jnp.mean(jnp.sum(per_example, axis=1))
  if reduction == "mean":
    return jnp.mean(per_example)
  raise registry.unknown("reduction", reduction, ("sum", "mean"))


@functools.lru_cache(maxsize=16)
def radial_window(height: int, width: int, sigma_px: float) -> np.ndarray:
  """(H, W) Gaussian weight exp(-r^2 / 2 sigma^2) about the centre pixel (H // 2, W // 2), scaled to mean 1."""
  y, x = np.indices((height, width), dtype=np.float64)
  weight = np.exp(-0.5 * ((y - height // 2) ** 2 + (x - width // 2) ** 2) / float(sigma_px) ** 2)
  weight = weight / weight.mean()
  weight.flags.writeable = False  # cached
  return weight


def recon_window(outputs: Mapping, batch: Mapping, context: Mapping, *, sigma_px: float = 10.0) -> Array:
  """Squared error of NHWC images weighted by a Gaussian window about the cutout's centre (`radial_window`),
  summed over pixels and channels, mean over the batch.

  Why: the central object is what is classified; neighbours and sky fill most of a 64 x 64 cutout, and an
  autoencoder with a small code spends it on whatever dominates the loss. The weight has mean 1 over the cutout,
  so a flat error costs what `recon_mse` (sum) charges and the balance against latent penalties is kept.
  """
  diff = require(outputs, "recon", "recon_window", "outputs") - batch["x"]
  if diff.ndim != 4:
    raise ValueError(f"recon_window needs images (B, H, W, C), got shape {diff.shape}")
  weight = jnp.asarray(radial_window(diff.shape[1], diff.shape[2], float(sigma_px)), diff.dtype)
  return jnp.mean(jnp.sum(diff**2 * weight[None, :, :, None], axis=(1, 2, 3)))


def recon_nll(outputs: Mapping, batch: Mapping, context: Mapping, *, sigma: float = 1.0) -> Array:
  """Gaussian negative log-likelihood summed over features, mean over the batch.

  The noise level is batch['sigma'] (per pixel, broadcastable to x) when the batch carries one, else the
  fixed option `sigma`.
  """
  recon = require(outputs, "recon", "recon_nll", "outputs")
  x = batch["x"]
  noise = jnp.broadcast_to(jnp.asarray(batch.get("sigma", sigma), x.dtype), x.shape)
  nll = 0.5 * ((x - recon) / noise) ** 2 + jnp.log(noise) + HALF_LOG_2PI
  return jnp.mean(jnp.sum(jnp.reshape(nll, (x.shape[0], -1)), axis=1))


# ----------------------------------------------------------------------------------------------
# KL-type latent penalties


def kl(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None) -> Array:
  """Analytic KL(N(mu, sigma^2) || N(0, 1)), summed over the selected units."""
  mu, log_sigma, sigma = gaussian_units(outputs, "kl", units)
  return batch_mean_of_unit_sum(0.5 * (mu**2 + sigma**2 - 1.0) - log_sigma)


def sc(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
       m: float = DEFAULT_M, s: float = DEFAULT_S) -> Array:
  """The authors' 'scaling' term: the convexity bound 0.5 [KL(q||N(-m,s^2)) + KL(q||N(m,s^2))] >= KL(q||Q),

  log(s/sigma) + (sigma^2 + mu^2 + m^2) / (2 s^2) - 1/2. Its minimum is at mu = 0: it acts like one Gaussian.
  """
  mu, log_sigma, sigma = gaussian_units(outputs, "sc", units)
  per_unit = jnp.log(s) - log_sigma + (sigma**2 + mu**2 + jnp.asarray(m) ** 2) / (2.0 * s**2) - 0.5
  return batch_mean_of_unit_sum(per_unit)


def _gaussian_kl_to_mode(mu: Array, log_sigma: Array, m: ArrayLike, s: ArrayLike) -> Array:
  """KL(N(mu, sigma^2) || N(m, s^2)) elementwise."""
  sigma2 = jnp.exp(2.0 * log_sigma)
  return jnp.log(s) - log_sigma + (sigma2 + (mu - m) ** 2) / (2.0 * s**2) - 0.5


@functools.lru_cache(maxsize=None)
def _legendre_rule(order: int) -> tuple[np.ndarray, np.ndarray]:
  return np.polynomial.legendre.leggauss(order)


def _expected_softplus_neg_abs(mu: Array, sigma: Array, c: Array, order: int) -> Array:
  """E[softplus(-|c z|)] for z ~ N(mu, sigma^2), by Gauss-Legendre on each side of z = 0.

  The integrand has a kink at z = 0 and a width 1/c that can be far below sigma; Gauss-Hermite around
  mu then misses it (measured: 6e-4 error at order 64 for m=1, s=0.5, sigma=1; 3.5e-3 for c sigma=11).
  Splitting at the kink and cutting the range where either factor is negligible makes every piece smooth.
  Integration is in the standard variable u = (z - mu) / sigma, so small sigma costs nothing.
  """
  c = jnp.maximum(c, 1e-12)  # m = 0: Q is one Gaussian and softplus(0) = log 2 everywhere.
  lower = jnp.maximum(-_GAUSS_CUT, (-_SOFTPLUS_CUT / c - mu) / sigma)
  upper = jnp.minimum(_GAUSS_CUT, (_SOFTPLUS_CUT / c - mu) / sigma)
  upper = jnp.maximum(upper, lower)
  kink = jnp.clip(-mu / sigma, lower, upper)
  nodes, weights = (jnp.asarray(a, mu.dtype) for a in _legendre_rule(order))

  def piece(a: Array, b: Array) -> Array:
    half = 0.5 * (b - a)[..., None]
    u = 0.5 * (a + b)[..., None] + half * nodes
    z = mu[..., None] + sigma[..., None] * u
    integrand = jnp.exp(-0.5 * u**2 - HALF_LOG_2PI) * jax.nn.softplus(-jnp.abs(c[..., None] * z))
    return jnp.sum(half * weights * integrand, axis=-1)

  return piece(lower, kink) + piece(kink, upper)


def kl_to_bimodal(mu: Array, log_sigma: Array, m: ArrayLike, s: ArrayLike, order: int = 32) -> Array:
  """Exact KL(N(mu, sigma^2) || 0.5 N(-m, s^2) + 0.5 N(m, s^2)) elementwise.

  log Q(z) = log N(z; m, s^2) - log 2 + softplus(-c z) with c = 2 m / s^2 (the log-sum-exp of the two
  modes, written stably). So KL = KL(q || N(m, s^2)) + log 2 - E_q[softplus(-c z)], and with
  softplus(t) = relu(t) + softplus(-|t|): E_q[relu(-c z)] = c (sigma phi(mu/sigma) - mu Phi(-mu/sigma))
  in closed form; only E_q[softplus(-|c z|)], bounded in [0, log 2], needs quadrature.
  """
  m = jnp.abs(jnp.asarray(m, mu.dtype))  # Q is symmetric in m.
  s = jnp.asarray(s, mu.dtype)
  # sigma enters the expectations only; clipped so its powers stay normal float32 numbers (an encoder that
  # drives log sigma below about -29 otherwise gets 0 * inf = NaN gradients). Changes them by < 1e-8 there.
  sigma = jnp.exp(jnp.clip(log_sigma, -20.0, 20.0))
  c = 2.0 * m / s**2
  t = mu / sigma
  expected_relu = c * (sigma * jnp.exp(-0.5 * t**2 - HALF_LOG_2PI) - mu * ndtr(-t))
  c_full = jnp.broadcast_to(c, mu.shape)
  expected_softplus = expected_relu + _expected_softplus_neg_abs(mu, sigma, c_full, order)
  return _gaussian_kl_to_mode(mu, log_sigma, m, s) + jnp.log(2.0) - expected_softplus


def dkl(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
        m: float = DEFAULT_M, s: float = DEFAULT_S, order: int = 32) -> Array:
  """Exact KL(N(mu, sigma^2) || Q), summed over the selected units (see `kl_to_bimodal`).

  `order` is the Gauss-Legendre order per side of z = 0; at 32 the error is below 1e-8 (float64) over
  mu in [-2.5, 2.5], sigma in [1e-3, 5], m in [0, 2], s in [0.1, 1], against scipy quad.
  """
  mu, log_sigma, _ = gaussian_units(outputs, "dkl", units)
  return batch_mean_of_unit_sum(kl_to_bimodal(mu, log_sigma, m, s, order))


def kl_to_bimodal_authors(mu: Array, log_sigma: Array, m: ArrayLike, s: ArrayLike) -> Array:
  """The authors' approximate KL(q || Q), as reconstructed here (their notebook is lost); it is WRONG.

  They wrote KL = -H(q) - E_q[log Q] with log Q(z) = log N(z; m, s^2) - log 2 + softplus(-2 m z / s^2),
  replaced softplus by ReLU, so E_q[relu(-2 m z / s^2)] = (2 m / s^2) E_q[max(0, -z)] with
  E_q[max(0, -z)] = -mu Phi(-mu/sigma) + sigma phi(mu/sigma), and approximated
  Phi(-x) = erfc(x / sqrt 2) / 2 ~ (1 - tanh(1.19 x / sqrt 2)) / 2. This reconstruction carries a misplaced
  sqrt(2 pi) on the first term: sqrt(2 pi) (-mu) (1 - tanh(...)) / 2 + sigma / sqrt(2 pi) exp(-mu^2 / 2 sigma^2).
  It reproduces the published value: -10.9 at mu=-1, sigma=0.2, m=1, s=0.5 (true KL 1.19), and is not
  symmetric in mu (at mu=+1 it gives 1.19).
  """
  # The clip only keeps sigma^2 a normal float32 (no 0 * inf = NaN in the gradient once an encoder drives
  # log sigma below -29: sigma^3 appears in it); the formula is unchanged on |log sigma| <= 20.
  sigma = jnp.exp(jnp.clip(log_sigma, -20.0, 20.0))
  sqrt_2pi = math.sqrt(2.0 * math.pi)
  tail = 0.5 * (1.0 - jnp.tanh(1.19 * mu / (sigma * math.sqrt(2.0))))
  expected_neg_part = sqrt_2pi * (-mu) * tail + sigma / sqrt_2pi * jnp.exp(-(mu**2) / (2.0 * sigma**2))
  return _gaussian_kl_to_mode(mu, log_sigma, m, s) + jnp.log(2.0) - 2.0 * m / s**2 * expected_neg_part


def dkl_authors(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
                m: float = DEFAULT_M, s: float = DEFAULT_S) -> Array:
  """The authors' approximate 'more precise KL' (kept to reproduce their runs; wrong, see kl_to_bimodal_authors)."""
  mu, log_sigma, _ = gaussian_units(outputs, "dkl_authors", units)
  return batch_mean_of_unit_sum(kl_to_bimodal_authors(mu, log_sigma, m, s))


# ----------------------------------------------------------------------------------------------
# Wasserstein-flavoured penalties


def aw(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
       mu_weight: float = 0.5, sigma_weight: float = 1.0) -> Array:
  """The authors' 'analogy of Wasserstein': -mu_weight ||mu||^2 + sigma_weight sum |1 - sigma^2|.

  Unbounded below unless mu is bounded: the model applies tanh to mu (model option mu_activation='tanh'),
  so the term pushes each mu to the +/-1 limits.
  """
  mu, _, sigma = gaussian_units(outputs, "aw", units)
  return batch_mean_of_unit_sum(-mu_weight * mu**2 + sigma_weight * jnp.abs(1.0 - sigma**2))


def aw_star(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
            m: float = DEFAULT_M, s: float = DEFAULT_S) -> Array:
  """AW*: closed-form W2^2 from N(mu, sigma^2) to the nearest prior mode N(+/-m, s^2): (|mu| - m)^2 + (sigma - s)^2."""
  mu, _, sigma = gaussian_units(outputs, "aw_star", units)
  return batch_mean_of_unit_sum((jnp.abs(mu) - m) ** 2 + (sigma - s) ** 2)


def l2_density_distance(mu: Array, sigma: Array, m: ArrayLike, s: ArrayLike) -> Array:
  """Closed form of integral (q - p)^2 dz, q = N(mu, sigma^2), p = Q(m, s), elementwise.

  Uses integral N(z; a, u^2) N(z; b, v^2) dz = N(a - b; 0, u^2 + v^2) for each pair of components.
  """
  q_q = 1.0 / (2.0 * jnp.sqrt(jnp.pi) * sigma)
  q_p = normal_pdf(mu - m, sigma**2 + s**2) + normal_pdf(mu + m, sigma**2 + s**2)  # 2 * 0.5 * (two modes)
  p_p = 1.0 / (4.0 * jnp.sqrt(jnp.pi) * s) + 0.5 * normal_pdf(2.0 * jnp.asarray(m), 2.0 * s**2)
  return q_q - q_p + p_p


def pw(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
       m: float = DEFAULT_M, s: float = DEFAULT_S, mu_weight: float = 1.0, l2_weight: float = 1.0) -> Array:
  """The authors' 'pseudo-Wasserstein': mu_weight ||mu||^2 + l2_weight integral (q - Q)^2 dz.

  The authors used weights of 1 or 10, m = 1-2 and s = 1.
  """
  mu, _, sigma = gaussian_units(outputs, "pw", units)
  return batch_mean_of_unit_sum(mu_weight * mu**2 + l2_weight * l2_density_distance(mu, sigma, m, s))


def pw_star(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
            prior: str = "bimodal", m: float = DEFAULT_M, s: float = DEFAULT_S) -> Array:
  """PW*: per selected unit, the 1-D W2^2 between the batch of sampled z and as many prior samples.

  In 1-D the optimal coupling of two equal-size samples pairs them in sorted order, so this is exact for the
  two empirical measures (the sliced-Wasserstein autoencoder penalty, one slice per unit). Summed over units.
  """
  z = select_units(require(outputs, "z", "pw_star", "outputs"), units)
  prior_z = sample_prior(term_key(context, "pw_star"), z.shape, prior, m, s).astype(z.dtype)
  sorted_gap = jnp.sort(z, axis=0) - jnp.sort(prior_z, axis=0)
  return jnp.sum(jnp.mean(sorted_gap**2, axis=0))


def _imq_kernel_sum(x: Array, y: Array, scales: Array) -> Array:
  """sum over C of C / (C + ||x_i - y_j||^2), as an (n, k) matrix."""
  sq_dist = jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)
  return jnp.sum(scales / (scales + sq_dist[..., None]), axis=-1)


def mmd_imq(z_q: Array, z_p: Array, scales: Array) -> Array:
  """Unbiased MMD^2 (U-statistic) between samples z_q (n, d) and z_p (n, d), IMQ kernel summed over scales."""
  n = z_q.shape[0]
  off_diagonal = 1.0 - jnp.eye(n, dtype=z_q.dtype)
  within = (_imq_kernel_sum(z_q, z_q, scales) + _imq_kernel_sum(z_p, z_p, scales)) * off_diagonal
  between = _imq_kernel_sum(z_q, z_p, scales)
  return jnp.sum(within) / (n * (n - 1)) - 2.0 * jnp.mean(between)


def mmd(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
        prior: str = "bimodal", m: float = DEFAULT_M, s: float = DEFAULT_S,
        scales: Sequence[float] = MMD_SCALES) -> Array:
  """WAE-MMD (Tolstikhin et al. 2018): unbiased MMD^2 between the batch of sampled z and prior samples.

  Inverse multiquadric kernel k(x, y) = C / (C + ||x - y||^2), summed over C = scale * 2 d var(prior),
  d the number of selected units.
  """
  check_prior(prior)
  z = select_units(require(outputs, "z", "mmd", "outputs"), units)
  prior_z = sample_prior(term_key(context, "mmd"), z.shape, prior, m, s).astype(z.dtype)
  base = 2.0 * z.shape[1] * prior_variance(prior, m, s)
  return mmd_imq(z, prior_z, (base * jnp.asarray(scales)).astype(z.dtype))



# ----------------------------------------------------------------------------------------------
# Classification


def bce(outputs: Mapping, batch: Mapping, context: Mapping, *, label_smoothing: float = 0.0) -> Array:
  """Binary cross-entropy of outputs['logit'] (B,) against batch['label'] (B,) in [0, 1] (1 = galaxy):
  softplus(l) - y l = -y log sigmoid(l) - (1 - y) log(1 - sigmoid(l)), with y smoothed towards 1/2 by
  `label_smoothing`; the batch['weight'] (B,) weighted mean when the batch carries weights, else the mean."""
  logit = require(outputs, "logit", "bce", "outputs")
  label = jnp.asarray(require(batch, "label", "bce", "batch"), logit.dtype)
  target = label * (1.0 - label_smoothing) + 0.5 * label_smoothing
  per_example = jax.nn.softplus(logit) - target * logit
  weight = jnp.asarray(batch.get("weight", jnp.ones_like(per_example)), logit.dtype)
  return jnp.sum(weight * per_example) / jnp.maximum(jnp.sum(weight), 1e-12)
