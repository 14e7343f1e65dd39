"""Shared pieces of the loss tests: the (mu, sigma, m, s) grid, numpy/scipy references, random outputs."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate

from stargal_jax import losses


# (mu, sigma, m, s) grid: both signs of mu, sigma from tight to wider than the modes' gap, and prior shapes
# whose log-density has a sharp feature at z = 0 (2 m / s^2 up to 11).
GRID_MU = (-1.5, -0.4, 0.3, 1.2)


GRID_SIGMA = (0.05, 0.3, 1.0, 2.5)


GRID_PRIOR = ((1.0, 0.5), (2.0, 1.0), (0.5, 0.3))


GRID = [(mu, sg, m, s) for mu in GRID_MU for sg in GRID_SIGMA for m, s in GRID_PRIOR]


def np_logpdf(z, mean, sd):
  return -0.5 * ((z - mean) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)


def np_log_bimodal(z, m, s):
  return np.logaddexp(np_logpdf(z, -m, s), np_logpdf(z, m, s)) - np.log(2)


def np_gaussian_kl(mu, sigma, mean, sd):
  """KL(N(mu, sigma^2) || N(mean, sd^2)), the textbook closed form."""
  return np.log(sd / sigma) + (sigma**2 + (mu - mean) ** 2) / (2 * sd**2) - 0.5


def quad_kl_bimodal(mu, sigma, m, s):
  """integral q (log q - log Q) by adaptive quadrature, split at the kink-like feature at 0."""
  f = lambda z: np.exp(np_logpdf(z, mu, sigma)) * (np_logpdf(z, mu, sigma) - np_log_bimodal(z, m, s))
  lo, hi = mu - 12 * sigma, mu + 12 * sigma
  points = [0.0] if lo < 0.0 < hi else None
  return integrate.quad(f, lo, hi, points=points, limit=500, epsabs=1e-12, epsrel=1e-12)[0]


def quad_kl_gaussian(mu, sigma, mean, sd):
  """KL(N(mu, sigma^2) || N(mean, sd^2)) by adaptive quadrature."""
  f = lambda z: np.exp(np_logpdf(z, mu, sigma)) * (np_logpdf(z, mu, sigma) - np_logpdf(z, mean, sd))
  return integrate.quad(f, mu - 12 * sigma, mu + 12 * sigma, limit=200, epsabs=1e-12, epsrel=1e-12)[0]


# Elementwise KLs over a vector of (mu, log_sigma, m, s), compiled once per input length.
KL_BIMODAL = jax.jit(jax.vmap(losses.kl_to_bimodal))


KL_AUTHORS = jax.jit(jax.vmap(losses.kl_to_bimodal_authors))


def grid_kl(fn, grid):
  """fn (vectorised over points) at each (mu, sigma, m, s) of grid."""
  mu, sigma, m, s = (jnp.asarray(a, jnp.float32) for a in np.array(grid).T)
  return np.asarray(fn(mu, jnp.log(sigma), m, s))


def per_point(name, grid):
  """A term's value at each (mu, sigma, m, s) point, one unit and one example per point (one compilation)."""
  term = losses.LOSS_TERMS[name]
  fn = lambda mu, ls, m, s: term({"mu": mu[None, None], "log_sigma": ls[None, None]}, {}, {}, m=m, s=s)
  return grid_kl(jax.jit(jax.vmap(fn)), grid)


def normal(seed, shape):
  # Inputs come from numpy: eager jax.random would compile a sampler for every new shape.
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def vae_outputs(seed, batch=8, latent=2):
  rng = np.random.default_rng(seed)
  mu = rng.standard_normal((batch, latent))
  log_sigma = rng.uniform(-2.0, 0.5, (batch, latent))
  z = mu + np.exp(log_sigma) * rng.standard_normal((batch, latent))
  recon = rng.standard_normal((batch, 4, 4, 5))
  return {k: jnp.asarray(v, jnp.float32) for k, v in dict(mu=mu, log_sigma=log_sigma, z=z, recon=recon).items()}


init_critic = jax.jit(losses.init_critic, static_argnums=(1, 2))  # One compilation per architecture.


def term_context(latent=2):
  return {"key": jax.random.key(7), "critic_params": init_critic(jax.random.key(1), latent, (16, 16))}


def np_critic(params, z):
  """Independent float64 numpy forward pass of the critic MLP (SiLU hidden units)."""
  h = np.asarray(z, np.float64)
  for i, layer in enumerate(params):
    h = h @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
    if i < len(params) - 1:
      h = h / (1 + np.exp(-h))
  return h[:, 0]
