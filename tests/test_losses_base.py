"""losses.base: prior samples against their moments; a term missing its input fails naming it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stargal_jax import losses


def test_sample_prior_moments():
  z = np.asarray(losses.sample_prior(jax.random.key(0), (200_000,), "bimodal", 1.5, 0.4))
  assert abs(np.mean(z > 0) - 0.5) < 0.005
  np.testing.assert_allclose([z.mean(), z.var(), np.abs(z).mean()], [0.0, 1.5**2 + 0.4**2, 1.5], atol=0.02)
  n = np.asarray(losses.sample_prior(jax.random.key(1), (200_000,), "normal"))
  np.testing.assert_allclose([n.mean(), n.var()], [0.0, 1.0], atol=0.02)
  with pytest.raises(ValueError, match="bimodal"):
    losses.sample_prior(jax.random.key(0), (3,), "laplace")


def test_vae_only_term_on_ae_outputs_fails_clearly():
  with pytest.raises(KeyError, match="mu"):
    losses.kl({"z": jnp.zeros((2, 2)), "recon": jnp.zeros((2, 3))}, {}, {})
