"""Stride-2 convolutions with hand-written backward passes in which every step is one plain convolution for
XLA:CPU (`upconv2x` is the adjoint of the strided conv `conv_stride2`). Autodiff of `nnx.ConvTranspose` yields
an input-dilated kernel gradient that made the reference VAE's training step ~4x slower on 2 CPU cores.
`Conv2x` / `UpConv2x` are the NNX layers built on them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stargal_jax import registry

Array = jax.Array

#
# Three linear maps, each one convolution on XLA:CPU's fast path:
#   conv_stride2(x, K)        (B, 2H, 2W, Cb) -> (B, H, W, Cs)   strided conv
#   transpose_stride2(y, K)   (B, H, W, Cs) -> (B, 2H, 2W, Cb)   its adjoint (input-gradient)
#   kernel_grad(x, y, K)      d<conv_stride2(x, K), y>/dK        window-dilated conv over the batch
# with K of shape (k, k, Cb, Cs), the HWIO kernel of the strided conv.
#   upconv2x   = transpose_stride2; backward: conv_stride2 (y), kernel_grad (K).
#   downconv2x = conv_stride2;      backward: transpose_stride2 (x), kernel_grad (K).
# Autodiff of the textbook transposed conv (an input-dilated conv, what nnx.ConvTranspose lowers
# to) differentiates the input dilation into its kernel gradient, which XLA:CPU runs slowly.

_NHWC = ("NHWC", "HWIO", "NHWC")


def same_padding_stride2(kernel_size: int) -> tuple[int, int]:
  """(low, high) padding of a stride-2 conv that maps 2H pixels to exactly H (TF 'SAME')."""
  total = max(kernel_size - 2, 0)
  return total // 2, total - total // 2


def conv_stride2(x: Array, kernel: Array) -> Array:
  """Stride-2 'SAME' convolution: (B, 2H, 2W, Cb) x (k, k, Cb, Cs) -> (B, H, W, Cs)."""
  pad = same_padding_stride2(kernel.shape[0])
  return jax.lax.conv_general_dilated(
    x, kernel, window_strides=(2, 2), padding=(pad, pad), dimension_numbers=_NHWC)


@functools.cache
def _subpixel_taps(kernel_size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
  """Which kernel tap feeds each (window offset, output phase) of the sub-pixel form.

  In 1-D, conv_stride2(x)[i] = sum_a x[2i + a - lo] K[a], so its adjoint is
  out[2q + r] = sum_a y[q + d] K[a]^T over taps a with d = (r + lo - a) / 2 an integer:
  a stride-1 correlation of y per output phase r. All phases share one window of offsets
  d_min .. d_max; returns tap[t, r] (the tap at window position t for phase r), valid[t, r]
  (False where no tap lands: those kernel entries are zero) and the (low, high) padding of y.
  """
  lo, _ = same_padding_stride2(kernel_size)
  offsets = [(r + lo - a) // 2 for r in (0, 1) for a in range(kernel_size)
             if (r + lo - a) % 2 == 0]
  d_min, d_max = min(offsets), max(offsets)
  width = d_max - d_min + 1
  tap = np.zeros((width, 2), np.int32)
  valid = np.zeros((width, 2), bool)
  for t in range(width):
    for r in (0, 1):
      a = r + lo - 2 * (t + d_min)
      if 0 <= a < kernel_size:
        tap[t, r], valid[t, r] = a, True
  return tap, valid, (-d_min, d_max)


def _subpixel_kernel(kernel: Array) -> Array:
  """(k, k, Cb, Cs) -> (w, w, Cs, 4 Cb): the stride-1 kernel whose 4 Cb outputs are the 4 phases."""
  tap, valid, _ = _subpixel_taps(kernel.shape[0])
  width = tap.shape[0]
  swapped = jnp.swapaxes(kernel, 2, 3)  # (k, k, Cs, Cb)
  gathered = swapped[tap[:, None, :, None], tap[None, :, None, :]]  # (w, w, 2, 2, Cs, Cb)
  mask = (valid[:, None, :, None] & valid[None, :, None, :])[..., None, None]
  gathered = jnp.where(mask, gathered, 0)
  c_small, c_big = swapped.shape[2], swapped.shape[3]
  return gathered.transpose(0, 1, 4, 2, 3, 5).reshape(width, width, c_small, 4 * c_big)


def _transpose_dilated(y: Array, kernel: Array) -> Array:
  # The textbook input-gradient: convolve the 2x input-dilated y with the spatially flipped,
  # channel-swapped kernel; padding k-1-low / k-1-high leaves exactly 2H outputs.
  k = kernel.shape[0]
  lo, hi = same_padding_stride2(k)
  flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
  return jax.lax.conv_general_dilated(
    y, flipped, window_strides=(1, 1), padding=((k - 1 - lo, k - 1 - hi),) * 2,
    lhs_dilation=(2, 2), dimension_numbers=_NHWC)


def _transpose_subpixel(y: Array, kernel: Array) -> Array:
  # One stride-1 conv on the undilated y gives the 4 output phases as channels; depth-to-space
  # interleaves them. For k = 3, 7 of its 16 taps are structural zeros, against 27 of 36 above.
  _, _, pad = _subpixel_taps(kernel.shape[0])
  phases = jax.lax.conv_general_dilated(
    y, _subpixel_kernel(kernel), window_strides=(1, 1), padding=(pad, pad),
    dimension_numbers=_NHWC)
  b, h, w, c4 = phases.shape
  c_big = c4 // 4
  phases = phases.reshape(b, h, w, 2, 2, c_big).transpose(0, 1, 3, 2, 4, 5)
  # Under an explicit-sharding mesh, a merge of axes needs its output sharding spelt out: that of
  # y (only the batch axis is ever sharded here).
  return phases.reshape(b, 2 * h, 2 * w, c_big, out_sharding=jax.typeof(y).sharding)


# Below this many input pixels the input-dilated form ran faster on XLA:CPU (2 cores, jax 0.10.2,
# batch 128): 4x4 and 8x8 inputs 1.4-2x faster dilated, 16x16 and 32x32 1.5-2.3x faster sub-pixel.
SUBPIXEL_MIN_PIXELS = 256


def transpose_stride2(y: Array, kernel: Array, form: str | None = None) -> Array:
  """Adjoint of conv_stride2(., kernel): (B, H, W, Cs) -> (B, 2H, 2W, Cb).

  `form`: 'dilated' (input-dilated conv), 'subpixel' (stride-1 conv + depth-to-space) or None,
  the faster of the two for the input's size. Both compute the same linear map.
  """
  if form is None:
    form = "subpixel" if y.shape[1] * y.shape[2] >= SUBPIXEL_MIN_PIXELS else "dilated"
  registry.check_choice(form, ("dilated", "subpixel"), "transpose form")
  return _transpose_subpixel(y, kernel) if form == "subpixel" else _transpose_dilated(y, kernel)


def kernel_grad(x: Array, y: Array, kernel: Array) -> Array:
  """d<conv_stride2(x, K), y>/dK as one convolution: (k, k, Cb, Cs).

  dK[a, b, o, i] = sum_{n,h,w} x_pad[n, 2h + a, 2w + b, o] y[n, h, w, i]: a convolution whose
  'batch' is x's channel axis, whose contraction runs over images, and whose window is y dilated
  by 2 (window dilation, an ordinary convolution for XLA:CPU). This is also the kernel gradient
  of the adjoint: <transpose_stride2(y, K), g> = <y, conv_stride2(g, K)>.
  """
  pad = same_padding_stride2(kernel.shape[0])
  # The contraction runs over the (possibly sharded) batch: under an explicit-sharding mesh the
  # result must be told to take the kernel's sharding, as jax's own conv transpose rule does.
  grad = jax.lax.conv_general_dilated(
    x, y, window_strides=(1, 1), padding=(pad, pad), rhs_dilation=(2, 2),
    dimension_numbers=("CHWN", "IHWO", "HWNC"), out_sharding=jax.typeof(kernel).sharding)
  return grad.astype(kernel.dtype)


def _with_backward(forward: Callable, input_cotangent: Callable, kernel_cotangent: Callable) -> Callable:
  """forward(a, kernel) whose backward pass is input_cotangent(g, kernel) and kernel_cotangent(a, g, kernel)."""
  fn = jax.custom_vjp(lambda a, kernel: forward(a, kernel))  # two arguments: defaults of `forward` stay out
  fn.defvjp(lambda a, kernel: (forward(a, kernel), (a, kernel)),
            lambda residuals, g: (input_cotangent(g, residuals[1]), kernel_cotangent(residuals[0], g, residuals[1])))
  return fn


# conv_stride2 with a hand-written backward pass: input-gradient transpose_stride2 (autodiff's input-dilated conv
# falls off XLA:CPU's fast path for some channel counts, e.g. the stage-1 AE's 40), kernel gradient kernel_grad.
downconv2x = _with_backward(conv_stride2, transpose_stride2, kernel_grad)
# Transposed stride-2 convolution: (B, H, W, Cs) -> (B, 2H, 2W, Cb), kernel (k, k, Cb, Cs). The input-gradient
# (vjp) of conv_stride2: <conv_stride2(x, K), y> == <x, upconv2x(y, K)>. Backward: y-cotangent =
# conv_stride2(g, K) (the map is linear in y); kernel cotangent = kernel_grad(g, y, K).
upconv2x = _with_backward(transpose_stride2, conv_stride2, lambda y, g, kernel: kernel_grad(g, y, kernel))


def _kernel_and_bias(layer: str, init: Callable, shape: tuple[int, int, int, int], out_features: int,
                     use_bias: bool, rngs: nnx.Rngs) -> tuple[nnx.Param, nnx.Param | None]:
  """A stride-2 layer's kernel of `shape` (k, k, ., .) drawn by `init`, and its zero bias (or None)."""
  if shape[0] < 2:
    raise ValueError(f"{layer} needs kernel_size >= 2, got {shape[0]}")
  kernel = nnx.Param(init(rngs.params(), shape, jnp.float32))
  return kernel, (nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None)


class Conv2x(nnx.Module):
  """Stride-2 'SAME' convolution, the same function as nnx.Conv(strides=2) (same kernel layout
  and initialiser), with downconv2x's backward pass."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, *,
               use_bias: bool = True, rngs: nnx.Rngs):
    self.kernel, self.bias = _kernel_and_bias("Conv2x", nnx.initializers.lecun_normal(),
                                              (kernel_size, kernel_size, in_features, out_features), out_features,
                                              use_bias, rngs)

  def __call__(self, x: Array) -> Array:
    out = downconv2x(x, self.kernel[...])
    return out + self.bias[...] if self.bias is not None else out


class UpConv2x(nnx.Module):
  """Transposed convolution, stride 2, output exactly twice the input size (kernel 3 or 4).

  The kernel is stored as (k, k, out_features, in_features), the HWIO kernel of the stride-2
  convolution this layer is the adjoint of; it is LeCun-initialised over k * k * in_features
  inputs, as nnx.ConvTranspose is.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, *,
               use_bias: bool = True, rngs: nnx.Rngs):
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1, 3), out_axis=2)
    self.kernel, self.bias = _kernel_and_bias("UpConv2x", init,
                                              (kernel_size, kernel_size, out_features, in_features), out_features,
                                              use_bias, rngs)

  def __call__(self, y: Array) -> Array:
    out = upconv2x(y, self.kernel[...])
    return out + self.bias[...] if self.bias is not None else out

