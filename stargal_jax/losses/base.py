"""What every loss term shares: the argument conventions, unit selection, the priors and their samples.

Every term has the signature `term(outputs, batch, context, **options) -> scalar` and returns a mean
over the batch:
  outputs: a model's outputs, 'z' (B, L) and 'recon' (B, ...); VAEs add 'mu' and 'log_sigma' (B, L).
  batch:   'x', the target (same shape as 'recon'); optionally 'sigma', a per-pixel noise level.
  context: 'key' (PRNG key for prior samples) and what a stateful term's state provides (the WAE-GAN
           critic's 'critic_params').
Options are keyword-only; every latent term takes `units` (None = all latent units, or a tuple of unit
indices) and sums its per-unit penalty over the selected units.

The bimodal prior is Q = 0.5 N(-m, s^2) + 0.5 N(m, s^2) per unit; q = N(mu, sigma^2) is the encoder's
posterior for one unit.
"""

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from stargal_jax import registry

Array = jax.Array
LossTerm = Callable[..., Array]
LossFn = Callable[[Mapping, Mapping, Mapping], tuple[Array, dict[str, Array]]]

DEFAULT_M = 1.0  # Prior mode position; configs set it explicitly (the authors tried 0.2-2).
DEFAULT_S = 0.5  # Prior mode width; the authors' PW runs used s = 1.
PRIORS = ("normal", "bimodal")  # 'normal' is N(0, 1) per unit; 'bimodal' is Q(m, s).
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class StatefulTerm:
  """A loss term with state of its own, carried by the trainer beside the model's (WAE-GAN's critic).

  init(key) -> its entries of the train state; context(train_state) -> what it adds to the loss context;
  update(train_state, outputs, step_key) -> (its new entries, metrics), run after the model's update, on the
  model outputs named in `outputs` (without gradient into the model).
  """
  init: Callable[[Array], dict]
  context: Callable[[Mapping], dict]
  update: Callable[[Mapping, Mapping, Array], tuple[dict, dict]]
  outputs: tuple[str, ...]


def require(mapping: Mapping, key: str, term: str, where: str) -> Any:
  """Fetches mapping[key] or explains which term needed it (e.g. a KL on an AE without 'mu')."""
  if key not in mapping:
    raise KeyError(f"loss term {term!r} needs {where}[{key!r}]; {where} has {sorted(mapping)}")
  return mapping[key]


def select_units(x: Array, units: Sequence[int] | None) -> Array:
  """x[:, units]; checks the indices because JAX clamps out-of-range indices silently."""
  if units is None:
    return x
  units = tuple(int(u) for u in np.atleast_1d(units))
  latent_dim = x.shape[-1]
  if not units or any(u < -latent_dim or u >= latent_dim for u in units):
    raise ValueError(f"units={units} invalid for latent dimension {latent_dim}")
  return x[:, np.asarray(units)]


def gaussian_units(outputs: Mapping, term: str, units) -> tuple[Array, Array, Array]:
  """(mu, log_sigma, sigma) of the selected units."""
  mu = select_units(require(outputs, "mu", term, "outputs"), units)
  log_sigma = select_units(require(outputs, "log_sigma", term, "outputs"), units)
  return mu, log_sigma, jnp.exp(log_sigma)


def batch_mean_of_unit_sum(per_unit: Array) -> Array:
  return jnp.mean(jnp.sum(per_unit, axis=-1))


def check_prior(prior: str) -> None:
  registry.check_choice(prior, PRIORS, "prior")


def prior_variance(prior: str, m: ArrayLike, s: ArrayLike) -> Array:
  return jnp.asarray(1.0) if prior == "normal" else jnp.asarray(m) ** 2 + jnp.asarray(s) ** 2


def normal_pdf(x: Array, variance: Array) -> Array:
  return jnp.exp(-0.5 * x**2 / variance) / jnp.sqrt(2.0 * jnp.pi * variance)


def sample_prior(key: Array, shape: Sequence[int], prior: str = "bimodal", m: float = DEFAULT_M,
                 s: float = DEFAULT_S) -> Array:
  """Samples of shape `shape` from N(0, 1) ('normal') or Q(m, s) ('bimodal'), independently per entry."""
  check_prior(prior)
  noise_key, mode_key = jax.random.split(key)
  noise = jax.random.normal(noise_key, tuple(shape))
  if prior == "normal":
    return noise
  mode_sign = jax.random.rademacher(mode_key, tuple(shape), dtype=noise.dtype)
  return mode_sign * m + s * noise


def term_key(context: Mapping, term: str) -> Array:
  return require(context, "key", term, "context")

