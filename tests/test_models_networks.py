"""models.networks: sampling statistics, batch norm, residual skips, hypercolumns against scipy, a training step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scipy import ndimage

from stargal_jax import models


TINY_CONV = dict(channels=(4, 8), image_size=16)  # 16 px images, two stride-2 stages


def _randn(seed, shape):
  # numpy, not jax.random: each new eager jax op shape costs a compilation.
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


NHWC = ("NHWC", "HWIO", "NHWC")


def _reference_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=NHWC)


def _abstract_split(name, kwargs):
  """Shapes-only model (no initialisation is run): for shape checks at full size."""
  return models.split_model(nnx.eval_shape(lambda: models.build_model(name, kwargs, 0)))


# One compilation per model instead of one per primitive (eager dispatch compiles each op).
_apply = jax.jit(models.apply_model, static_argnums=0, static_argnames=("train", "return_features"))


def _close(a, b, rtol=1e-5):
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


@pytest.fixture(scope="module")
def tiny_vae():
  return models.split_model(models.build_model("conv_vae", dict(TINY_CONV, latent_dim=8), 0))


@pytest.fixture(scope="module")
def tiny_ae():
  return models.split_model(models.build_model("conv_ae", dict(TINY_CONV, latent_dim=3), 0))


def test_conv_ae_features_and_state_split():
  graphdef, params, state = _abstract_split("conv_ae", {})
  x = jax.ShapeDtypeStruct((2, 64, 64, 5), jnp.float32)
  out, _ = jax.eval_shape(functools.partial(models.apply_model, graphdef, return_features=True),
                          params, state, x)
  shapes = [f.shape[1:] for f in out["features"]]
  assert shapes == [(32, 32, 40), (16, 16, 40), (8, 8, 20), (4, 4, 20),  # encoder
                    (4, 4, 20), (8, 8, 20), (16, 16, 40), (32, 32, 40)]  # decoder
  assert out["z"].shape == (2, 30)
  # Batch norm's running averages are the state; no conv bias sits in front of a batch norm.
  stat_leaves = jax.tree.leaves(state)
  assert len(stat_leaves) == 2 * 7 and all(leaf.ndim == 1 for leaf in stat_leaves)
  assert "bias" not in params["encoder"]["convs"][0]
  assert jax.tree.leaves(_abstract_split("conv_vae", {})[2]) == []


def test_residual_skips_carry_detail_the_plain_ae_cannot():
  # Same parameters (the skips add none): with the code path cut (latent weights zeroed) the
  # plain AE's output no longer depends on the input, the residual AE's still does.
  kwargs = dict(TINY_CONV, latent_dim=3, norm="none")
  x1, x2 = _randn(15, (1, 16, 16, 5)), _randn(16, (1, 16, 16, 5))
  recons = {}
  for name in ("conv_ae", "residual_conv_ae"):
    graphdef, params, state = models.split_model(models.build_model(name, kwargs, 0))
    params["to_latent"]["kernel"] = nnx.Param(jnp.zeros_like(params["to_latent"]["kernel"][...]))
    recons[name] = [_apply(graphdef, params, state, x)[0]["recon"] for x in (x1, x2)]
  _close(recons["conv_ae"][0], recons["conv_ae"][1])
  assert float(jnp.abs(recons["residual_conv_ae"][0] - recons["residual_conv_ae"][1]).max()) > 1e-2


def test_deterministic_without_key_stochastic_with_key(tiny_vae):
  graphdef, params, state = tiny_vae
  x = _randn(19, (3, 16, 16, 5))
  a, _ = _apply(graphdef, params, state, x)
  b, _ = _apply(graphdef, params, state, x)
  np.testing.assert_array_equal(a["z"], a["mu"])
  np.testing.assert_array_equal(a["recon"], b["recon"])
  c, _ = _apply(graphdef, params, state, x, key=jax.random.key(1))
  d, _ = _apply(graphdef, params, state, x, key=jax.random.key(2))
  np.testing.assert_array_equal(c["mu"], a["mu"])
  assert float(jnp.abs(c["z"] - d["z"]).min()) > 0
  assert float(jnp.abs(c["recon"] - a["recon"]).max()) > 0


@pytest.mark.parametrize("name,x_shape,eps_scale", [
  ("dense_vae", (2000, 30), 0.1),
  ("conv_vae", (256, 16, 16, 5), 1.0),
])
def test_sample_statistics_match_eps_scale_times_sigma(name, x_shape, eps_scale, tiny_vae):
  if name == "conv_vae":
    graphdef, params, state = tiny_vae  # eps_scale 1 by default
  else:
    graphdef, params, state = models.split_model(
      models.build_model(name, {"eps_scale": eps_scale, "latent_dim": 4}, 0))
  x = _randn(20, x_shape)
  out, _ = _apply(graphdef, params, state, x, key=jax.random.key(3))
  # sigma = exp(log_sigma) (log standard deviation, not log variance).
  standardised = np.asarray((out["z"] - out["mu"]) / jnp.exp(out["log_sigma"])).ravel()
  n = standardised.size
  assert abs(standardised.mean()) < 4 * eps_scale / np.sqrt(n)
  assert abs(standardised.std() / eps_scale - 1) < 4 / np.sqrt(2 * n)


def test_batch_norm_updates_running_stats_in_train_mode_only(tiny_ae):
  graphdef, params, state = tiny_ae
  x = _randn(21, (6, 16, 16, 5)) * 2 + 1
  _, eval_state = _apply(graphdef, params, state, x, train=False)
  for a, b in zip(jax.tree.leaves(eval_state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)

  _, train_state = models.apply_model(graphdef, params, state, x, train=True)
  for a, b in zip(jax.tree.leaves(eval_state), jax.tree.leaves(state)):  # caller's state intact
    np.testing.assert_array_equal(a, b)
  # Independent computation for the first encoder block: its conv (no bias) by lax, then
  # running = 0.99 * old + 0.01 * batch moment (biased variance).
  pre_norm = np.asarray(_reference_conv(x, params["encoder"]["convs"][0]["kernel"][...]))
  batch_mean = pre_norm.mean(axis=(0, 1, 2))
  batch_var = pre_norm.var(axis=(0, 1, 2))
  bn0 = train_state["encoder"]["norms"][0]
  _close(bn0["mean"][...], 0.01 * batch_mean, 1e-4)
  _close(bn0["var"][...], 0.99 * 1.0 + 0.01 * batch_var, 1e-5)

  # Eval mode normalises with the running averages: with the updated ones the output changes.
  out_old, _ = _apply(graphdef, params, state, x, train=False)
  out_new, _ = _apply(graphdef, params, train_state, x, train=False)
  assert float(jnp.abs(out_old["recon"] - out_new["recon"]).max()) > 1e-4


def _bilinear_numpy(image, size):
  """Half-pixel-centred bilinear resize of one (H, W) map with edge clamping, via scipy."""
  h, w = image.shape
  rows = np.clip((np.arange(size) + 0.5) * h / size - 0.5, 0, h - 1)
  cols = np.clip((np.arange(size) + 0.5) * w / size - 0.5, 0, w - 1)
  grid = np.meshgrid(rows, cols, indexing="ij")
  return ndimage.map_coordinates(image, grid, order=1, mode="nearest")


def test_hypercolumns_match_scipy_bilinear():
  rng = np.random.default_rng(0)
  features = [rng.normal(size=(2, 2, 2, 3)), rng.normal(size=(2, 4, 4, 2)),
              rng.normal(size=(2, 8, 8, 1))]
  out = np.asarray(models.hypercolumns([jnp.asarray(f, jnp.float32) for f in features], size=8))
  assert out.shape == (2, 8, 8, 6)
  expected = np.concatenate([
    np.stack([np.stack([_bilinear_numpy(f[b, :, :, c], 8) for c in range(f.shape[-1])], -1)
              for b in range(2)]) for f in features], axis=-1)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[..., 5], features[2][..., 0], rtol=1e-6)  # already full size


def _vae_loss(graphdef, state, params, x, key):
  out, _ = models.apply_model(graphdef, params, state, x, key=key, train=True)
  mse = jnp.mean(jnp.sum((out["recon"] - x) ** 2, axis=(1, 2, 3)))
  kl = 0.5 * jnp.sum(out["mu"] ** 2 + jnp.exp(2 * out["log_sigma"]) - 1 - 2 * out["log_sigma"], -1)
  return mse + jnp.mean(kl)


def test_conv_vae_gradients_finite_and_adam_reduces_loss(tiny_vae):
  graphdef, params, state = tiny_vae
  # Centred Gaussian blobs of random brightness on a sky offset: structure a VAE can learn.
  yy, xx = np.mgrid[:16, :16] - 7.5
  blob = np.exp(-(yy ** 2 + xx ** 2) / 8.0)[None, :, :, None]
  x = jnp.asarray(0.5 + np.linspace(1, 3, 8)[:, None, None, None] * blob * np.ones(5), jnp.float32)
  loss_fn = jax.jit(functools.partial(_vae_loss, graphdef, state))
  grads = jax.jit(jax.grad(loss_fn))(params, x, jax.random.key(0))
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert sum(float(jnp.sum(g ** 2)) for g in leaves) > 0

  optimizer = optax.adam(3e-3)
  traces = []

  @jax.jit
  def step(params, opt_state, i):
    traces.append(1)  # runs only while tracing
    key = jax.random.fold_in(jax.random.key(1), i)
    loss, grads = jax.value_and_grad(loss_fn)(params, x, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = optimizer.init(params)
  eval_key = jax.random.key(99)
  start = float(loss_fn(params, x, eval_key))
  for i in range(15):
    params, opt_state, _ = step(params, opt_state, i)
  assert float(loss_fn(params, x, eval_key)) < 0.9 * start
  assert len(traces) == 1  # compiled once across repeated calls
