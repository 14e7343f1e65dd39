"""Loss terms: small pure JAX functions, combined by weight into one loss by `make_loss_fn`.

Every term has the signature `term(outputs, batch, context, **options) -> scalar` and returns a mean
over the batch:
  outputs: a model's outputs, 'z' (B, L) and 'recon' (B, ...); VAEs add 'mu' and 'log_sigma' (B, L).
  batch:   'x', the target (same shape as 'recon'); optionally 'sigma', a per-pixel noise level.
  context: 'key' (PRNG key for prior samples) and, for the adversarial term, 'critic_params'.
Options are keyword-only; every latent term takes `units` (None = all latent units, or a tuple of unit
indices) and sums its per-unit penalty over the selected units.

The bimodal prior is Q = 0.5 N(-m, s^2) + 0.5 N(m, s^2) per unit; q = N(mu, sigma^2) is the encoder's
posterior for one unit. The authors' penalties (sc, dkl_authors, aw, pw) are kept for reproduction; the
principled ones beside them are dkl (exact KL), aw_star, pw_star, mmd (WAE-MMD) and adversarial (WAE-GAN).
Definitions: /work/shared/METHODS.md, "Unsupervised classification".
"""

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr
from jax.typing import ArrayLike

Array = jax.Array
LossTerm = Callable[..., Array]
LossFn = Callable[[Mapping, Mapping, Mapping], tuple[Array, dict[str, Array]]]

DEFAULT_M = 1.0  # Prior mode position; configs set it explicitly (the authors tried 0.2-2).
DEFAULT_S = 0.5  # Prior mode width; the authors' PW runs used s = 1.
PRIORS = ("normal", "bimodal")  # 'normal' is N(0, 1) per unit; 'bimodal' is Q(m, s).
MMD_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # Tolstikhin et al. 2018, multiples of 2 d var(prior).
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

# The exact KL integrates softplus(-|c z|) numerically; beyond |c z| = 20 it is below 2e-9, and beyond
# 10 sigma the Gaussian weight is below 1e-22, so the integration range is cut there.
_SOFTPLUS_CUT = 20.0
_GAUSS_CUT = 10.0


# ----------------------------------------------------------------------------------------------
# Helpers


def _require(mapping: Mapping, key: str, term: str, where: str) -> Any:
  """Fetches mapping[key] or explains which term needed it (e.g. a KL on an AE without 'mu')."""
  if key not in mapping:
    raise KeyError(f"loss term {term!r} needs {where}[{key!r}]; {where} has {sorted(mapping)}")
  return mapping[key]


def _select_units(x: Array, units: Sequence[int] | None) -> Array:
  """x[:, units]; checks the indices because JAX clamps out-of-range indices silently."""
  if units is None:
    return x
  units = tuple(int(u) for u in np.atleast_1d(units))
  latent_dim = x.shape[-1]
  if not units or any(u < -latent_dim or u >= latent_dim for u in units):
    raise ValueError(f"units={units} invalid for latent dimension {latent_dim}")
  return x[:, np.asarray(units)]


def _gaussian(outputs: Mapping, term: str, units) -> tuple[Array, Array, Array]:
  """(mu, log_sigma, sigma) of the selected units."""
  mu = _select_units(_require(outputs, "mu", term, "outputs"), units)
  log_sigma = _select_units(_require(outputs, "log_sigma", term, "outputs"), units)
  return mu, log_sigma, jnp.exp(log_sigma)


def _batch_mean_of_unit_sum(per_unit: Array) -> Array:
  return jnp.mean(jnp.sum(per_unit, axis=-1))


def _check_prior(prior: str) -> None:
  if prior not in PRIORS:
    raise ValueError(f"unknown prior {prior!r}; valid: {list(PRIORS)}")


def _prior_variance(prior: str, m: ArrayLike, s: ArrayLike) -> Array:
  return jnp.asarray(1.0) if prior == "normal" else jnp.asarray(m) ** 2 + jnp.asarray(s) ** 2


def _normal_pdf(x: Array, variance: Array) -> Array:
  return jnp.exp(-0.5 * x**2 / variance) / jnp.sqrt(2.0 * jnp.pi * variance)


def sample_prior(key: Array, shape: Sequence[int], prior: str = "bimodal", m: float = DEFAULT_M,
                 s: float = DEFAULT_S) -> Array:
  """Samples of shape `shape` from N(0, 1) ('normal') or Q(m, s) ('bimodal'), independently per entry."""
  _check_prior(prior)
  noise_key, mode_key = jax.random.split(key)
  noise = jax.random.normal(noise_key, tuple(shape))
  if prior == "normal":
    return noise
  mode_sign = jax.random.rademacher(mode_key, tuple(shape), dtype=noise.dtype)
  return mode_sign * m + s * noise


def _term_key(context: Mapping, term: str) -> Array:
  return _require(context, "key", term, "context")


# ----------------------------------------------------------------------------------------------
# Reconstruction


def recon_mse(outputs: Mapping, batch: Mapping, context: Mapping, *, reduction: str = "sum") -> Array:
  """Squared error: summed over features ('sum') or averaged over them ('mean'), then averaged over the batch."""
  diff = _require(outputs, "recon", "recon_mse", "outputs") - batch["x"]
  per_example = jnp.reshape(diff**2, (diff.shape[0], -1))
  if reduction == "sum":
    return jnp.mean(jnp.sum(per_example, axis=1))
  if reduction == "mean":
    return jnp.mean(per_example)
  raise ValueError(f"unknown reduction {reduction!r}; valid: ['sum', 'mean']")


def recon_nll(outputs: Mapping, batch: Mapping, context: Mapping, *, sigma: float = 1.0) -> Array:
  """Gaussian negative log-likelihood summed over features, mean over the batch.

  The noise level is batch['sigma'] (per pixel, broadcastable to x) when the batch carries one, else the
  fixed option `sigma`.
  """
  recon = _require(outputs, "recon", "recon_nll", "outputs")
  x = batch["x"]
  noise = jnp.broadcast_to(jnp.asarray(batch.get("sigma", sigma), x.dtype), x.shape)
  nll = 0.5 * ((x - recon) / noise) ** 2 + jnp.log(noise) + _HALF_LOG_2PI
  return jnp.mean(jnp.sum(jnp.reshape(nll, (x.shape[0], -1)), axis=1))


# ----------------------------------------------------------------------------------------------
# KL-type latent penalties


def kl(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None) -> Array:
  """Analytic KL(N(mu, sigma^2) || N(0, 1)), summed over the selected units."""
  mu, log_sigma, sigma = _gaussian(outputs, "kl", units)
  return _batch_mean_of_unit_sum(0.5 * (mu**2 + sigma**2 - 1.0) - log_sigma)


def sc(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
       m: float = DEFAULT_M, s: float = DEFAULT_S) -> Array:
  """The authors' 'scaling' term: the convexity bound 0.5 [KL(q||N(-m,s^2)) + KL(q||N(m,s^2))] >= KL(q||Q),

  log(s/sigma) + (sigma^2 + mu^2 + m^2) / (2 s^2) - 1/2. Its minimum is at mu = 0: it acts like one Gaussian.
  """
  mu, log_sigma, sigma = _gaussian(outputs, "sc", units)
  per_unit = jnp.log(s) - log_sigma + (sigma**2 + mu**2 + jnp.asarray(m) ** 2) / (2.0 * s**2) - 0.5
  return _batch_mean_of_unit_sum(per_unit)


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
    integrand = jnp.exp(-0.5 * u**2 - _HALF_LOG_2PI) * jax.nn.softplus(-jnp.abs(c[..., None] * z))
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
  expected_relu = c * (sigma * jnp.exp(-0.5 * t**2 - _HALF_LOG_2PI) - mu * ndtr(-t))
  c_full = jnp.broadcast_to(c, mu.shape)
  expected_softplus = expected_relu + _expected_softplus_neg_abs(mu, sigma, c_full, order)
  return _gaussian_kl_to_mode(mu, log_sigma, m, s) + jnp.log(2.0) - expected_softplus


def dkl(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
        m: float = DEFAULT_M, s: float = DEFAULT_S, order: int = 32) -> Array:
  """Exact KL(N(mu, sigma^2) || Q), summed over the selected units (see `kl_to_bimodal`).

  `order` is the Gauss-Legendre order per side of z = 0; at 32 the error is below 1e-8 (float64) over
  mu in [-2.5, 2.5], sigma in [1e-3, 5], m in [0, 2], s in [0.1, 1], against scipy quad.
  """
  mu, log_sigma, _ = _gaussian(outputs, "dkl", units)
  return _batch_mean_of_unit_sum(kl_to_bimodal(mu, log_sigma, m, s, order))


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
  mu, log_sigma, _ = _gaussian(outputs, "dkl_authors", units)
  return _batch_mean_of_unit_sum(kl_to_bimodal_authors(mu, log_sigma, m, s))


# ----------------------------------------------------------------------------------------------
# Wasserstein-flavoured penalties


def aw(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
       mu_weight: float = 0.5, sigma_weight: float = 1.0) -> Array:
  """The authors' 'analogy of Wasserstein': -mu_weight ||mu||^2 + sigma_weight sum |1 - sigma^2|.

  Unbounded below unless mu is bounded: the model applies tanh to mu (model option mu_activation='tanh'),
  so the term pushes each mu to the +/-1 limits.
  """
  mu, _, sigma = _gaussian(outputs, "aw", units)
  return _batch_mean_of_unit_sum(-mu_weight * mu**2 + sigma_weight * jnp.abs(1.0 - sigma**2))


def aw_star(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
            m: float = DEFAULT_M, s: float = DEFAULT_S) -> Array:
  """AW*: closed-form W2^2 from N(mu, sigma^2) to the nearest prior mode N(+/-m, s^2): (|mu| - m)^2 + (sigma - s)^2."""
  mu, _, sigma = _gaussian(outputs, "aw_star", units)
  return _batch_mean_of_unit_sum((jnp.abs(mu) - m) ** 2 + (sigma - s) ** 2)


def l2_density_distance(mu: Array, sigma: Array, m: ArrayLike, s: ArrayLike) -> Array:
  """Closed form of integral (q - p)^2 dz, q = N(mu, sigma^2), p = Q(m, s), elementwise.

  Uses integral N(z; a, u^2) N(z; b, v^2) dz = N(a - b; 0, u^2 + v^2) for each pair of components.
  """
  q_q = 1.0 / (2.0 * jnp.sqrt(jnp.pi) * sigma)
  q_p = _normal_pdf(mu - m, sigma**2 + s**2) + _normal_pdf(mu + m, sigma**2 + s**2)  # 2 * 0.5 * (two modes)
  p_p = 1.0 / (4.0 * jnp.sqrt(jnp.pi) * s) + 0.5 * _normal_pdf(2.0 * jnp.asarray(m), 2.0 * s**2)
  return q_q - q_p + p_p


def pw(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
       m: float = DEFAULT_M, s: float = DEFAULT_S, mu_weight: float = 1.0, l2_weight: float = 1.0) -> Array:
  """The authors' 'pseudo-Wasserstein': mu_weight ||mu||^2 + l2_weight integral (q - Q)^2 dz.

  The authors used weights of 1 or 10, m = 1-2 and s = 1.
  """
  mu, _, sigma = _gaussian(outputs, "pw", units)
  return _batch_mean_of_unit_sum(mu_weight * mu**2 + l2_weight * l2_density_distance(mu, sigma, m, s))


def pw_star(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
            prior: str = "bimodal", m: float = DEFAULT_M, s: float = DEFAULT_S) -> Array:
  """PW*: per selected unit, the 1-D W2^2 between the batch of sampled z and as many prior samples.

  In 1-D the optimal coupling of two equal-size samples pairs them in sorted order, so this is exact for the
  two empirical measures (the sliced-Wasserstein autoencoder penalty, one slice per unit). Summed over units.
  """
  z = _select_units(_require(outputs, "z", "pw_star", "outputs"), units)
  prior_z = sample_prior(_term_key(context, "pw_star"), z.shape, prior, m, s).astype(z.dtype)
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
  _check_prior(prior)
  z = _select_units(_require(outputs, "z", "mmd", "outputs"), units)
  prior_z = sample_prior(_term_key(context, "mmd"), z.shape, prior, m, s).astype(z.dtype)
  base = 2.0 * z.shape[1] * _prior_variance(prior, m, s)
  return mmd_imq(z, prior_z, (base * jnp.asarray(scales)).astype(z.dtype))


# ----------------------------------------------------------------------------------------------
# Adversarial (WAE-GAN): a critic on the latent, trained by the trainer beside the model.


def init_critic(key: Array, latent_dim: int, hidden: Sequence[int] = (64, 64)) -> list[dict[str, Array]]:
  """MLP critic parameters: a list of {'w': (in, out), 'b': (out,)} layers, last one to a single logit."""
  sizes = (latent_dim, *hidden, 1)
  keys = jax.random.split(key, len(sizes) - 1)
  init = jax.nn.initializers.lecun_normal()
  return [{"w": init(k, (n_in, n_out)), "b": jnp.zeros((n_out,))}
          for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])]


def critic_apply(params: Sequence[Mapping[str, Array]], z: Array) -> Array:
  """Critic logits (B,) for latent codes z (B, d); logit > 0 means 'looks like a prior sample'.

  SiLU hidden units: smooth, so the gradient penalty (which differentiates the input gradient) is too.
  """
  h = z
  for layer in params[:-1]:
    h = jax.nn.silu(h @ layer["w"] + layer["b"])
  return (h @ params[-1]["w"] + params[-1]["b"])[:, 0]


def gradient_penalty(critic_params: Sequence[Mapping[str, Array]], z: Array) -> Array:
  """mean over rows of (||grad_z critic(z_i)||_2 - 1)^2 (Gulrajani et al. 2017)."""
  grad_z = jax.grad(lambda zz: jnp.sum(critic_apply(critic_params, zz)))(z)  # Rows are independent.
  norm = jnp.sqrt(jnp.sum(grad_z**2, axis=-1) + 1e-12)  # eps: sqrt has an infinite derivative at 0.
  return jnp.mean((norm - 1.0) ** 2)


def interpolate(key: Array, z_q: Array, z_p: Array) -> Array:
  """Random points on the segments between paired rows of z_q and z_p, where the penalty is applied."""
  alpha = jax.random.uniform(key, (z_q.shape[0], 1), dtype=z_q.dtype)
  return alpha * z_p + (1.0 - alpha) * z_q


def critic_loss(critic_params: Sequence[Mapping[str, Array]], z_q: Array, z_p: Array, key: Array,
                gp_weight: float = 10.0) -> Array:
  """The critic's loss: logistic loss with prior samples z_p as 'real' and encoded z_q as 'fake',

  plus gp_weight times the gradient penalty on interpolates. The trainer passes z_q without gradient
  to the encoder (jax.lax.stop_gradient) and z_p from `sample_prior` with the adversarial term's options.
  """
  logistic = (jnp.mean(jax.nn.softplus(-critic_apply(critic_params, z_p)))
              + jnp.mean(jax.nn.softplus(critic_apply(critic_params, z_q))))
  return logistic + gp_weight * gradient_penalty(critic_params, interpolate(key, z_q, z_p))


def adversarial(outputs: Mapping, batch: Mapping, context: Mapping, *, units: Sequence[int] | None = None,
                prior: str = "bimodal", m: float = DEFAULT_M, s: float = DEFAULT_S) -> Array:
  """WAE-GAN, encoder side: the non-saturating loss -log D(z) = softplus(-logit) on the encoded z.

  `prior`, `m`, `s` do not change this value (the encoder's loss only sees z); they live here so one options
  entry configures both sides: the trainer draws the critic's z_p with sample_prior(key, shape, prior, m, s).
  The critic's input is z[:, units], so init_critic's latent_dim must be the number of selected units.
  """
  _check_prior(prior)
  z = _select_units(_require(outputs, "z", "adversarial", "outputs"), units)
  logits = critic_apply(_require(context, "critic_params", "adversarial", "context"), z)
  return jnp.mean(jax.nn.softplus(-logits))


# ----------------------------------------------------------------------------------------------
# Registry and combination

LOSS_TERMS: dict[str, LossTerm] = {
    "recon_mse": recon_mse,
    "recon_nll": recon_nll,
    "kl": kl,
    "sc": sc,
    "dkl": dkl,
    "dkl_authors": dkl_authors,
    "aw": aw,
    "aw_star": aw_star,
    "pw": pw,
    "pw_star": pw_star,
    "mmd": mmd,
    "adversarial": adversarial,
}


def get_loss_term(name: str) -> LossTerm:
  if name not in LOSS_TERMS:
    raise ValueError(f"unknown loss term {name!r}; valid: {sorted(LOSS_TERMS)}")
  return LOSS_TERMS[name]


def term_options(term: LossTerm) -> tuple[str, ...]:
  """The option names a term accepts (its keyword-only parameters)."""
  parameters = inspect.signature(term).parameters.values()
  return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _as_dict(mapping: Any) -> dict:
  """Plain dict from a Mapping or an ml_collections.ConfigDict (which is not a Mapping)."""
  return dict(mapping.items()) if mapping is not None else {}


def _normalise_options(name: str, term: LossTerm, options: Any) -> dict:
  options = _as_dict(options)
  valid = term_options(term)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f"loss term {name!r} has no option(s) {unknown}; valid: {list(valid)}")
  if options.get("units") is not None:  # Lists from the command line; a tuple keeps it hashable.
    options["units"] = tuple(int(u) for u in np.atleast_1d(options["units"]))
  return options


def make_loss_fn(weights: Mapping[str, float], options: Mapping[str, Mapping] | None = None) -> LossFn:
  """loss_fn(outputs, batch, context) -> (total, metrics): the weighted sum of the named terms.

  Terms with weight 0 are left out (never traced). metrics holds each included term's unweighted value
  and 'total'. Each term sees its own PRNG key, folded from context['key'] by the term's registry position,
  so two sampling terms never share prior samples. Unknown names or options raise ValueError at once.
  """
  weights, options = _as_dict(weights), _as_dict(options)
  for kind, names in (("weights", weights), ("options", options)):
    unknown = sorted(set(names) - set(LOSS_TERMS))
    if unknown:
      raise ValueError(f"unknown loss term(s) {unknown} in {kind}; valid: {sorted(LOSS_TERMS)}")
  term_ids = {name: i for i, name in enumerate(LOSS_TERMS)}
  bound = {name: functools.partial(LOSS_TERMS[name], **_normalise_options(name, LOSS_TERMS[name], opts))
           for name, opts in options.items()}
  active = {name: (float(weight), bound.get(name, LOSS_TERMS[name]))
            for name, weight in weights.items() if float(weight) != 0.0}

  def loss_fn(outputs: Mapping, batch: Mapping, context: Mapping) -> tuple[Array, dict[str, Array]]:
    metrics, total = {}, jnp.zeros(())
    for name, (weight, term) in active.items():
      term_context = dict(context)
      if "key" in context:
        term_context["key"] = jax.random.fold_in(context["key"], term_ids[name])
      metrics[name] = term(outputs, batch, term_context)
      total = total + weight * metrics[name]
    metrics["total"] = total
    return total, metrics

  return loss_fn
