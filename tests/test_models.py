"""models: the registry (shapes of every model, errors listing valid names) and the functional boundary."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stargal_jax import models


TINY_CONV = dict(channels=(4, 8), image_size=16)  # 16 px images, two stride-2 stages


def _randn(seed, shape):
  # numpy, not jax.random: each new eager jax op shape costs a compilation.
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _close(a, b, rtol=1e-5):
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


def _abstract_split(name, kwargs):
  """Shapes-only model (no initialisation is run): for shape checks at full size."""
  return models.split_model(nnx.eval_shape(lambda: models.build_model(name, kwargs, 0)))


@pytest.fixture(scope="module")
def tiny_ae():
  return models.split_model(models.build_model("conv_ae", dict(TINY_CONV, latent_dim=3), 0))


@pytest.mark.parametrize("name,kwargs,x_shape,latent", [
  ("conv_vae", {}, (2, 64, 64, 5), 2),
  ("conv_vae", {"latent_dim": 16, "norm": "layer", "mu_activation": "tanh"}, (2, 64, 64, 5), 16),
  ("conv_ae", {}, (2, 64, 64, 5), 30),
  ("residual_conv_ae", {"output_conv": True}, (2, 64, 64, 5), 30),
  ("dense_vae", {}, (2, 30), 2),
])
def test_registry_model_shapes(name, kwargs, x_shape, latent):
  graphdef, params, state = _abstract_split(name, kwargs)
  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  out, new_state = jax.eval_shape(
    functools.partial(models.apply_model, graphdef, key=jax.random.key(1), train=True),
    params, state, x)
  assert out["recon"].shape == x_shape
  assert out["z"].shape == (2, latent)
  if "vae" in name:
    assert out["mu"].shape == out["log_sigma"].shape == (2, latent)
  assert jax.tree.map(jnp.shape, new_state) == jax.tree.map(jnp.shape, state)


def test_build_model_errors_list_valid_names():
  with pytest.raises(KeyError, match="conv_vae"):
    models.build_model("conv_vea", {}, 0)
  with pytest.raises(TypeError, match="latent_dim"):
    models.build_model("dense_vae", {"latent_dims": 3}, 0)
  with pytest.raises(ValueError, match="leaky_relu"):
    models.build_model("conv_ae", {"activation": "relu6"}, 0)
  with pytest.raises(ValueError, match="batch"):
    models.build_model("conv_ae", {"norm": "group"}, 0)


def test_apply_model_jit_equals_eager_and_vmaps_over_params(tiny_ae):
  graphdef, params, state = tiny_ae
  x = _randn(17, (4, 16, 16, 5))
  apply = functools.partial(models.apply_model, graphdef)
  eager, eager_state = apply(params, state, x, train=True)
  jitted, jit_state = jax.jit(functools.partial(apply, train=True))(params, state, x)
  _close(jitted["recon"], eager["recon"], 1e-4)
  for a, b in zip(jax.tree.leaves(jit_state), jax.tree.leaves(eager_state)):
    _close(a, b, 1e-4)

  # Two independently initialised dense VAEs evaluated at once by vmap over their params.
  dense = [models.split_model(models.build_model("dense_vae", {}, seed)) for seed in (0, 1)]
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), dense[0][1], dense[1][1])
  codes = _randn(18, (5, 30))
  both = jax.vmap(lambda p: models.apply_model(dense[0][0], p, dense[0][2], codes)[0]["recon"])(
    stacked)
  for i, (g, p, s) in enumerate(dense):
    _close(both[i], models.apply_model(g, p, s, codes)[0]["recon"])
