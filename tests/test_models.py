"""Tests for stargal_jax.models: shapes, the hand-written convolutions against JAX's own autodiff,
sampling statistics, batch-norm state, hypercolumns against scipy, training and compilation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from scipy import ndimage

from stargal_jax import models

NHWC = ("NHWC", "HWIO", "NHWC")
TINY_CONV = dict(channels=(4, 8), image_size=16)  # 16 px images, two stride-2 stages


# One compilation per model instead of one per primitive (eager dispatch compiles each op).
_apply = jax.jit(models.apply_model, static_argnums=0, static_argnames=("train", "return_features"))


def _randn(seed, shape):
  # numpy, not jax.random: each new eager jax op shape costs a compilation.
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _abstract_split(name, kwargs):
  """Shapes-only model (no initialisation is run): for shape checks at full size."""
  return models.split_model(nnx.eval_shape(lambda: models.build_model(name, kwargs, 0)))


@pytest.fixture(scope="module")
def tiny_vae():
  return models.split_model(models.build_model("conv_vae", dict(TINY_CONV, latent_dim=8), 0))


@pytest.fixture(scope="module")
def tiny_ae():
  return models.split_model(models.build_model("conv_ae", dict(TINY_CONV, latent_dim=3), 0))


def _reference_transpose(y, kernel):
  """JAX's transposed conv; transpose_kernel=True makes it the gradient of the strided conv."""
  return jax.lax.conv_transpose(y, kernel, (2, 2), "SAME", dimension_numbers=NHWC,
                                transpose_kernel=True)


def _reference_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=NHWC)


def _close(a, b, rtol=1e-5):
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


# --- the stride-2 convolution pair ------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", [2, 3, 4, 5])
@pytest.mark.parametrize("size", [(4, 4), (3, 5), (16, 17)])
def test_upconv2x_is_the_vjp_of_the_strided_conv(kernel_size, size):
  h, w = size
  y = _randn(0, (2, h, w, 3))
  kernel = _randn(1, (kernel_size, kernel_size, 4, 3))

  @jax.jit
  def compute(y, kernel):
    # Autodiff of the strided conv w.r.t. its input, evaluated at cotangent y.
    _, vjp = jax.vjp(lambda x: _reference_conv(x, kernel), jnp.zeros((2, 2 * h, 2 * w, 4)))
    forms = [models.transpose_stride2(y, kernel, form) for form in ("dilated", "subpixel")]
    return models.upconv2x(y, kernel), forms, vjp(y)[0], _reference_transpose(y, kernel)

  out, forms, by_vjp, by_conv_transpose = compute(y, kernel)
  assert out.shape == (2, 2 * h, 2 * w, 4)
  _close(out, by_vjp)
  _close(out, by_conv_transpose)
  for form in forms:
    _close(form, by_vjp)


@pytest.mark.parametrize("kernel_size", [3, 4])
def test_adjoint_identity(kernel_size):
  x = _randn(2, (3, 8, 6, 5))
  y = _randn(3, (3, 4, 3, 7))
  kernel = _randn(4, (kernel_size, kernel_size, 5, 7))
  lhs, rhs = jax.jit(lambda x, y, k: (jnp.vdot(models.conv_stride2(x, k), y),
                                      jnp.vdot(x, models.upconv2x(y, k))))(x, y, kernel)
  assert abs(float(lhs - rhs)) < 1e-4 * float(jnp.abs(lhs))


@pytest.mark.parametrize("kernel_size", [3, 4])
@pytest.mark.parametrize("size", [(4, 5), (16, 16)])  # both forward forms
def test_upconv2x_gradients_match_autodiff_of_conv_transpose(kernel_size, size):
  h, w = size
  y = _randn(5, (2, h, w, 3))
  kernel = _randn(6, (kernel_size, kernel_size, 4, 3))
  weights = _randn(7, (2, 2 * h, 2 * w, 4))

  def loss(transpose, y, kernel):  # nonlinear, so the cotangent is not a constant
    return jnp.sum(jnp.sin(transpose(y, kernel)) * weights)

  ours, ref = jax.jit(lambda y, k: [
    jax.grad(functools.partial(loss, f), argnums=(0, 1))(y, k)
    for f in (models.upconv2x, _reference_transpose)])(y, kernel)
  assert ours[1].shape == kernel.shape
  _close(ours[0], ref[0], 1e-4)
  _close(ours[1], ref[1], 1e-4)


@pytest.mark.parametrize("kernel_size", [3, 4])
@pytest.mark.parametrize("size", [(8, 6), (32, 32)])  # both forms of the input-gradient
def test_downconv2x_values_and_gradients_match_lax_conv(kernel_size, size):
  x = _randn(8, (2, *size, 3))
  kernel = _randn(9, (kernel_size, kernel_size, 3, 5))
  weights = _randn(10, (2, size[0] // 2, size[1] // 2, 5))

  def loss(conv, x, kernel):
    return jnp.sum(jnp.tanh(conv(x, kernel)) * weights)

  values, ours, ref = jax.jit(lambda x, k: [
    (models.downconv2x(x, k), _reference_conv(x, k)),
    *[jax.grad(functools.partial(loss, f), argnums=(0, 1))(x, k)
      for f in (models.downconv2x, _reference_conv)]])(x, kernel)
  _close(*values)
  _close(ours[0], ref[0], 1e-4)
  _close(ours[1], ref[1], 1e-4)


def test_conv_layer_equals_nnx_conv():
  rngs = nnx.Rngs(0)
  down = models.Conv2x(3, 4, 3, rngs=rngs)
  flax_down = nnx.Conv(3, 4, (3, 3), strides=2, padding="SAME", rngs=rngs)
  flax_down.kernel[...] = down.kernel[...]
  x = _randn(12, (2, 10, 10, 3))
  _close(*jax.jit(lambda x: (down(x), flax_down(x)))(x))


def test_upconv_layer_equals_nnx_conv_transpose():
  rngs = nnx.Rngs(0)
  up = models.UpConv2x(3, 4, 3, rngs=rngs)
  flax_up = nnx.ConvTranspose(3, 4, (3, 3), strides=2, padding="SAME", rngs=rngs)
  # nnx.ConvTranspose convolves the dilated input with its (k, k, in, out) kernel as stored, so
  # it is our adjoint when given our kernel flipped in space with in/out swapped.
  flax_up.kernel[...] = jnp.swapaxes(up.kernel[...][::-1, ::-1], 2, 3)
  flax_up.bias[...] = up.bias[...] + 0.5
  up.bias[...] = up.bias[...] + 0.5
  y = _randn(11, (2, 5, 5, 3))
  _close(*jax.jit(lambda y: (up(y), flax_up(y)))(y))


def test_gradients_under_an_explicitly_sharded_batch():
  # jax.make_mesh defaults to explicit axes: the kernel gradients reduce over the sharded batch
  # and the sub-pixel form merges axes; both need their output sharding stated.
  mesh = jax.make_mesh((1,), ("data",))
  batch = NamedSharding(mesh, PartitionSpec("data"))
  replicated = NamedSharding(mesh, PartitionSpec())
  # 16 px inputs of the transposed conv: the sub-pixel form, forward for upconv2x and backward
  # for downconv2x.
  cases = [(models.upconv2x, _reference_transpose, _randn(13, (2, 16, 16, 3))),
           (models.downconv2x, _reference_conv, _randn(15, (2, 32, 32, 4)))]
  kernel = _randn(14, (3, 3, 4, 3))
  for ours, reference, inputs in cases:
    grad = lambda f: jax.jit(jax.grad(lambda a, k: jnp.sum(jnp.sin(f(a, k))), (0, 1)))
    with jax.set_mesh(mesh):
      sharded = grad(ours)(jax.device_put(inputs, batch), jax.device_put(kernel, replicated))
    expected = grad(reference)(inputs, kernel)
    for got, want in zip(sharded, expected):
      _close(got, want, 1e-4)


# --- registry, shapes, functional boundary ----------------------------------------------------


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


def test_build_model_errors_list_valid_names():
  with pytest.raises(KeyError, match="conv_vae"):
    models.build_model("conv_vea", {}, 0)
  with pytest.raises(TypeError, match="latent_dim"):
    models.build_model("dense_vae", {"latent_dims": 3}, 0)
  with pytest.raises(ValueError, match="leaky_relu"):
    models.build_model("conv_ae", {"activation": "relu6"}, 0)
  with pytest.raises(ValueError, match="batch"):
    models.build_model("conv_ae", {"norm": "group"}, 0)


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


# --- sampling ----------------------------------------------------------------------------------


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


# --- batch norm --------------------------------------------------------------------------------


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


# --- hypercolumns ------------------------------------------------------------------------------


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


# --- training ----------------------------------------------------------------------------------


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
