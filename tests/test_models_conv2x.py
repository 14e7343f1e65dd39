"""models.conv2x: the hand-written stride-2 convolutions against JAX's own convolutions and autodiff."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from stargal_jax import models


NHWC = ("NHWC", "HWIO", "NHWC")


def _randn(seed, shape):
  # numpy, not jax.random: each new eager jax op shape costs a compilation.
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _reference_transpose(y, kernel):
  """JAX's transposed conv; transpose_kernel=True makes it the gradient of the strided conv."""
  return jax.lax.conv_transpose(y, kernel, (2, 2), "SAME", dimension_numbers=NHWC,
                                transpose_kernel=True)


def _reference_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=NHWC)


def _close(a, b, rtol=1e-5):
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


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
