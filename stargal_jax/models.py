"""Neural network modules (Flax NNX) and the functional boundary the trainers use.

Modules take NHWC images `(B, 64, 64, 5)` (or `(B, D)` codes for `DenseVAE`) and return a dict of
outputs, never losses; they hold no optimiser state. Sampling takes an explicit PRNG key; without
one the latent is its mean (deterministic evaluation).

- `UpConv2x` / `Conv2x`: stride-2 transposed / plain convolutions with hand-written backward
  passes in which every step is one plain convolution for XLA:CPU (`upconv2x` is the adjoint of
  the strided conv `conv_stride2`). Autodiff of `nnx.ConvTranspose` yields an input-dilated
  kernel gradient that made the reference VAE's training step ~4x slower on 2 CPU cores.
- `ConvEncoder` / `ConvDecoder`: stride-2 conv stacks, mirrored.
- `ConvVAE` (baseline V+M), `ConvAE` (stage-1 AE of the hierarchical designs), `ResidualConvAE`
  (additive skips, for segmentation), `DenseVAE` (stage-2 VAE on AE codes, the 'conditional VAE').
- `hypercolumns`: per-pixel stacks of upsampled activation maps (Hariharan et al. 2014).
- `MODELS`, `build_model`, `split_model`, `apply_model`: registry and functional boundary; jitted,
  differentiated or vmapped code takes `(graphdef, params, state)` and merges inside.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
  "none": lambda x: x,
  "relu": jax.nn.relu,
  # The study's stage-1 AE used Keras LeakyReLU(alpha=0.3).
  "leaky_relu": functools.partial(jax.nn.leaky_relu, negative_slope=0.3),
  "elu": jax.nn.elu,
  "gelu": jax.nn.gelu,
  "silu": jax.nn.silu,
  "tanh": jnp.tanh,
  "sigmoid": jax.nn.sigmoid,
  "softplus": jax.nn.softplus,
}

NORMS = ("none", "batch", "layer")
CONV_IMPLS = ("adjoint", "flax")


def get_activation(name: str) -> Callable[[Array], Array]:
  """The activation function called `name`; unknown names fail listing the valid ones."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def _check_choice(what: str, value: str, valid: Sequence[str]) -> None:
  if value not in valid:
    raise ValueError(f"unknown {what} {value!r}; valid: {list(valid)}")


# ---------------------------------------------------------------------------------------------
# Stride-2 convolution and its adjoint, with hand-written backward passes.
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
  _check_choice("transpose form", form, ("dilated", "subpixel"))
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


@jax.custom_vjp
def downconv2x(x: Array, kernel: Array) -> Array:
  """conv_stride2 with the same hand-written backward pass: input-gradient transpose_stride2
  (autodiff's input-dilated conv falls off XLA:CPU's fast path for some channel counts, e.g. the
  stage-1 AE's 40), kernel gradient kernel_grad."""
  return conv_stride2(x, kernel)


def _downconv2x_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
  return conv_stride2(x, kernel), (x, kernel)


def _downconv2x_bwd(residuals: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
  x, kernel = residuals
  return transpose_stride2(g, kernel), kernel_grad(x, g, kernel)


downconv2x.defvjp(_downconv2x_fwd, _downconv2x_bwd)


@jax.custom_vjp
def upconv2x(y: Array, kernel: Array) -> Array:
  """Transposed stride-2 convolution: (B, H, W, Cs) -> (B, 2H, 2W, Cb), kernel (k, k, Cb, Cs).

  The input-gradient (vjp) of conv_stride2: <conv_stride2(x, K), y> == <x, upconv2x(y, K)>.
  Backward: y-cotangent = conv_stride2(g, K) (the map is linear in y); kernel cotangent =
  kernel_grad(g, y, K).
  """
  return transpose_stride2(y, kernel)


def _upconv2x_fwd(y: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
  return transpose_stride2(y, kernel), (y, kernel)


def _upconv2x_bwd(residuals: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
  y, kernel = residuals
  return conv_stride2(g, kernel), kernel_grad(g, y, kernel)


upconv2x.defvjp(_upconv2x_fwd, _upconv2x_bwd)


class Conv2x(nnx.Module):
  """Stride-2 'SAME' convolution, the same function as nnx.Conv(strides=2) (same kernel layout
  and initialiser), with downconv2x's backward pass."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, *,
               use_bias: bool = True, rngs: nnx.Rngs):
    if kernel_size < 2:
      raise ValueError(f"Conv2x needs kernel_size >= 2, got {kernel_size}")
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(
      init(rngs.params(), (kernel_size, kernel_size, in_features, out_features), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None

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
    if kernel_size < 2:
      raise ValueError(f"UpConv2x needs kernel_size >= 2, got {kernel_size}")
    init = nnx.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=(0, 1, 3), out_axis=2)
    self.kernel = nnx.Param(
      init(rngs.params(), (kernel_size, kernel_size, out_features, in_features), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None

  def __call__(self, y: Array) -> Array:
    out = upconv2x(y, self.kernel[...])
    return out + self.bias[...] if self.bias is not None else out


# ---------------------------------------------------------------------------------------------
# Building blocks.


def _make_norm(norm: str, features: int, rngs: nnx.Rngs) -> nnx.Module | None:
  _check_choice("norm", norm, NORMS)
  if norm == "batch":  # Keras's defaults (the study's framework): momentum 0.99, epsilon 1e-3
    return nnx.BatchNorm(features, momentum=0.99, epsilon=1e-3, rngs=rngs)
  if norm == "layer":
    # Normalise each image's whole feature map (H, W, C), scale and shift per channel.
    return nnx.LayerNorm(features, reduction_axes=(-3, -2, -1), feature_axes=-1, rngs=rngs)
  return None


def _apply_norm(norm_layer: nnx.Module | None, x: Array, train: bool) -> Array:
  if norm_layer is None:
    return x
  if isinstance(norm_layer, nnx.BatchNorm):
    return norm_layer(x, use_running_average=not train)
  return norm_layer(x)


def _make_downconv(kind: str, in_features: int, out_features: int, kernel_size: int,
                   use_bias: bool, rngs: nnx.Rngs) -> nnx.Module:
  _check_choice("downconv", kind, CONV_IMPLS)
  if kind == "adjoint":
    return Conv2x(in_features, out_features, kernel_size, use_bias=use_bias, rngs=rngs)
  return nnx.Conv(in_features, out_features, (kernel_size, kernel_size), strides=2,
                  padding="SAME", use_bias=use_bias, rngs=rngs)


def _make_upconv(kind: str, in_features: int, out_features: int, kernel_size: int,
                 use_bias: bool, rngs: nnx.Rngs) -> nnx.Module:
  _check_choice("upconv", kind, CONV_IMPLS)
  if kind == "adjoint":
    return UpConv2x(in_features, out_features, kernel_size, use_bias=use_bias, rngs=rngs)
  return nnx.ConvTranspose(in_features, out_features, (kernel_size, kernel_size), strides=2,
                           padding="SAME", use_bias=use_bias, rngs=rngs)


def _check_image_size(image_size: int, n_blocks: int) -> None:
  if image_size % 2 ** n_blocks:
    raise ValueError(f"image_size {image_size} not divisible by 2**{n_blocks}")


class ConvEncoder(nnx.Module):
  """Stride-2 conv blocks (conv -> norm -> activation); `(B, S, S, C) -> (B, features)`.

  `downconv`: 'adjoint' (Conv2x, hand-written backward pass) or 'flax' (nnx.Conv); same function.
  """

  def __init__(self, in_channels: int = 5, channels: Sequence[int] = (32, 64, 128, 256),
               kernel_size: int = 3, activation: str = "relu", norm: str = "none", *,
               downconv: str = "adjoint", image_size: int = 64, rngs: nnx.Rngs):
    get_activation(activation)
    _check_choice("norm", norm, NORMS)
    _check_image_size(image_size, len(channels))
    self.activation = activation
    widths = (in_channels, *channels)
    # A conv bias just before batch norm is cancelled by its mean subtraction.
    self.convs = nnx.List([
      _make_downconv(downconv, cin, cout, kernel_size, norm != "batch", rngs)
      for cin, cout in zip(widths[:-1], widths[1:])])
    self.norms = nnx.List([_make_norm(norm, c, rngs) for c in channels])
    self.out_size = image_size // 2 ** len(channels)
    self.features = self.out_size ** 2 * channels[-1]

  def __call__(self, x: Array, *, train: bool = False) -> tuple[Array, list[Array]]:
    """Returns (flattened features (B, features), per-block activation maps, NHWC)."""
    act = get_activation(self.activation)
    maps = []
    for conv, norm_layer in zip(self.convs, self.norms):
      x = act(_apply_norm(norm_layer, conv(x), train))
      maps.append(x)
    return x.reshape(x.shape[0], -1), maps


class ConvDecoder(nnx.Module):
  """Mirror of ConvEncoder: Dense(latent) -> (s, s, cL) map -> L transposed-conv blocks.

  With encoder channels (c1, ..., cL) the blocks map cL -> c(L-1) -> ... -> c1 -> out_channels;
  the last is the linear output layer (no norm, no activation), the exact mirror of the encoder.
  With `output_conv`, the last block maps c1 -> c1 (norm, activation) and a linear stride-1 conv
  gives out_channels: one more layer, at full resolution (more per-pixel features).
  Hidden block j has the shape of encoder block L-2-j (0-based; the skip twins of ResidualConvAE).
  `upconv`: 'adjoint' (UpConv2x) or 'flax' (nnx.ConvTranspose); same maths.
  """

  def __init__(self, latent_dim: int, out_channels: int = 5,
               channels: Sequence[int] = (32, 64, 128, 256), kernel_size: int = 3,
               activation: str = "relu", norm: str = "none", *, upconv: str = "adjoint",
               output_conv: bool = False, image_size: int = 64, rngs: nnx.Rngs):
    get_activation(activation)
    _check_choice("norm", norm, NORMS)
    _check_image_size(image_size, len(channels))
    self.activation = activation
    self.start_size = image_size // 2 ** len(channels)
    self.start_channels = channels[-1]
    self.project = nnx.Linear(latent_dim, self.start_size ** 2 * channels[-1], rngs=rngs)
    widths = (*channels[::-1], channels[0] if output_conv else out_channels)
    n_hidden = len(channels) if output_conv else len(channels) - 1  # blocks with norm + act
    self.upconvs = nnx.List([
      _make_upconv(upconv, cin, cout, kernel_size, j >= n_hidden or norm != "batch", rngs)
      for j, (cin, cout) in enumerate(zip(widths[:-1], widths[1:]))])
    self.norms = nnx.List([_make_norm(norm, c, rngs) for c in widths[1:n_hidden + 1]])
    self.to_image = (nnx.Conv(channels[0], out_channels, (kernel_size, kernel_size),
                              padding="SAME", rngs=rngs) if output_conv else None)

  def __call__(self, z: Array, *, train: bool = False,
               skips: Sequence[Array | None] | None = None) -> tuple[Array, list[Array]]:
    """Returns (image (B, S, S, out_channels), [projection map, hidden block maps]), NHWC.

    `skips[j]`, if given and not None, is added to hidden block j's activation.
    """
    act = get_activation(self.activation)
    x = act(self.project(z))
    x = x.reshape(z.shape[0], self.start_size, self.start_size, self.start_channels)
    maps = [x]
    for j, up in enumerate(self.upconvs):
      x = up(x)
      if j == len(self.norms):  # the linear output block
        break
      x = act(_apply_norm(self.norms[j], x, train))
      if skips is not None and skips[j] is not None:
        x = x + skips[j]
      maps.append(x)
    return (self.to_image(x) if self.to_image is not None else x), maps


def _sample_latent(mu: Array, log_sigma: Array, key: Array | None, eps_scale: float) -> Array:
  """z = mu + eps_scale * sigma * N(0, 1); z = mu without a key (deterministic evaluation)."""
  if key is None:
    return mu
  eps = jax.random.normal(key, mu.shape, mu.dtype)
  return mu + eps_scale * jnp.exp(log_sigma) * eps


# ---------------------------------------------------------------------------------------------
# Models of the registry.


def _conv_stack(in_channels: int, latent_dim: int, channels: Sequence[int], kernel_size: int,
                activation: str, norm: str, downconv: str, upconv: str, output_conv: bool,
                image_size: int, rngs: nnx.Rngs) -> tuple[ConvEncoder, ConvDecoder]:
  encoder = ConvEncoder(in_channels, channels, kernel_size, activation, norm, downconv=downconv,
                        image_size=image_size, rngs=rngs)
  decoder = ConvDecoder(latent_dim, in_channels, channels, kernel_size, activation, norm,
                        upconv=upconv, output_conv=output_conv, image_size=image_size, rngs=rngs)
  return encoder, decoder


class ConvVAE(nnx.Module):
  """Convolutional VAE (the baseline V+M and the Vr(X)+M variants).

  Encoder -> Dense(2 * latent_dim) split into (mu, log_sigma); z sampled with an explicit key;
  mirrored decoder; linear output (images are normalised upstream).
  """

  def __init__(self, latent_dim: int = 2, channels: Sequence[int] = (32, 64, 128, 256),
               kernel_size: int = 3, activation: str = "relu", norm: str = "none",
               mu_activation: str = "none", eps_scale: float = 1.0, *,
               downconv: str = "adjoint", upconv: str = "adjoint", output_conv: bool = False,
               in_channels: int = 5, image_size: int = 64, rngs: nnx.Rngs):
    _check_choice("mu_activation", mu_activation, ("none", "tanh"))
    self.latent_dim = latent_dim
    self.mu_activation = mu_activation
    self.eps_scale = eps_scale
    self.encoder, self.decoder = _conv_stack(
      in_channels, latent_dim, channels, kernel_size, activation, norm, downconv, upconv,
      output_conv, image_size, rngs)
    self.to_latent = nnx.Linear(self.encoder.features, 2 * latent_dim, rngs=rngs)

  def __call__(self, x: Array, *, key: Array | None = None,
               train: bool = False) -> dict[str, Array]:
    features, _ = self.encoder(x, train=train)
    mu, log_sigma = jnp.split(self.to_latent(features), 2, axis=-1)
    mu = get_activation(self.mu_activation)(mu)
    z = _sample_latent(mu, log_sigma, key, self.eps_scale)
    recon, _ = self.decoder(z, train=train)
    return {"mu": mu, "log_sigma": log_sigma, "z": z, "recon": recon}


class ConvAE(nnx.Module):
  """The study's stage-1 autoencoder: conv 40-40-20-20, LeakyReLU(0.3), batch norm, 30-d tanh code.

  Deterministic (no sampling; `key` is accepted for a uniform signature and ignored). With
  `return_features`, 'features' lists the activation maps in order: the L encoder blocks
  (32 -> 4 px), the decoder's reshaped dense projection (4 px), its hidden blocks (8 -> 32 px,
  and 64 px with output_conv); all NHWC.
  """

  def __init__(self, latent_dim: int = 30, channels: Sequence[int] = (40, 40, 20, 20),
               kernel_size: int = 3, activation: str = "leaky_relu", norm: str = "batch",
               latent_activation: str = "tanh", *, downconv: str = "adjoint",
               upconv: str = "adjoint", output_conv: bool = False, in_channels: int = 5,
               image_size: int = 64, rngs: nnx.Rngs):
    self.latent_dim = latent_dim
    get_activation(latent_activation)
    self.latent_activation = latent_activation
    self.encoder, self.decoder = _conv_stack(
      in_channels, latent_dim, channels, kernel_size, activation, norm, downconv, upconv,
      output_conv, image_size, rngs)
    self.to_latent = nnx.Linear(self.encoder.features, latent_dim, rngs=rngs)

  def _skips(self, encoder_maps: list[Array]) -> list[Array | None] | None:
    return None

  def __call__(self, x: Array, *, key: Array | None = None, train: bool = False,
               return_features: bool = False) -> dict[str, Any]:
    del key  # deterministic autoencoder
    features, encoder_maps = self.encoder(x, train=train)
    z = get_activation(self.latent_activation)(self.to_latent(features))
    recon, decoder_maps = self.decoder(z, train=train, skips=self._skips(encoder_maps))
    out: dict[str, Any] = {"z": z, "recon": recon}
    if return_features:
      out["features"] = [*encoder_maps, *decoder_maps]
    return out


class ResidualConvAE(ConvAE):
  """ConvAE with additive skips (x_dec += x_enc, no extra parameters): encoder block i's
  activation is added to the activation of the decoder block at the same resolution and width
  (32, 16 and 8 px for L = 4). The 4 px bottleneck has no skip, so the code still carries the
  coarse image; the skips carry the detail that pixel-level segmentation needs.
  """

  def _skips(self, encoder_maps: list[Array]) -> list[Array | None]:
    # Decoder block j (0-based) has the shape of encoder block L-2-j; the full-resolution block
    # (j = L-1) has no encoder twin.
    n_blocks = len(encoder_maps)
    return [encoder_maps[n_blocks - 2 - j] if j < n_blocks - 1 else None
            for j in range(n_blocks)]


class DenseVAE(nnx.Module):
  """Stage-2 VAE on AE codes: Dense(hidden, tanh) -> (mu, log_sigma) -> z -> Dense(hidden, tanh)
  -> Dense(in_dim) (+ out_activation). z = mu + eps_scale * sigma * N(0, 1)."""

  def __init__(self, in_dim: int = 30, hidden: int = 30, latent_dim: int = 2,
               eps_scale: float = 0.1, out_activation: str = "tanh",
               mu_activation: str = "none", *, rngs: nnx.Rngs):
    self.latent_dim = latent_dim
    _check_choice("out_activation", out_activation, ("none", "tanh"))
    _check_choice("mu_activation", mu_activation, ("none", "tanh"))
    self.eps_scale = eps_scale
    self.out_activation = out_activation
    self.mu_activation = mu_activation
    self.encode_hidden = nnx.Linear(in_dim, hidden, rngs=rngs)
    self.to_latent = nnx.Linear(hidden, 2 * latent_dim, rngs=rngs)
    self.decode_hidden = nnx.Linear(latent_dim, hidden, rngs=rngs)
    self.to_output = nnx.Linear(hidden, in_dim, rngs=rngs)

  def __call__(self, x: Array, *, key: Array | None = None,
               train: bool = False) -> dict[str, Array]:
    del train  # no batch statistics
    h = jnp.tanh(self.encode_hidden(x))
    mu, log_sigma = jnp.split(self.to_latent(h), 2, axis=-1)
    mu = get_activation(self.mu_activation)(mu)
    z = _sample_latent(mu, log_sigma, key, self.eps_scale)
    recon = get_activation(self.out_activation)(self.to_output(jnp.tanh(self.decode_hidden(z))))
    return {"mu": mu, "log_sigma": log_sigma, "z": z, "recon": recon}


# ---------------------------------------------------------------------------------------------
# Hypercolumns.


def hypercolumns(features: Sequence[Array], size: int = 64) -> Array:
  """Per-pixel stacks of activations: (B, size, size, sum of channels).

  Each NHWC map is resized to (size, size) by half-pixel-centred bilinear interpolation with edge
  clamping (jax.image.resize); maps already that size pass through.
  """
  resized = [
    jax.image.resize(f, (f.shape[0], size, size, f.shape[-1]), method="bilinear")
    if f.shape[1:3] != (size, size) else f
    for f in features]
  return jnp.concatenate(resized, axis=-1)


# ---------------------------------------------------------------------------------------------
# Registry and functional boundary.

MODELS: dict[str, type[nnx.Module]] = {
  "conv_vae": ConvVAE,
  "conv_ae": ConvAE,
  "residual_conv_ae": ResidualConvAE,
  "dense_vae": DenseVAE,
}


def _constructor_arguments(cls: type) -> list[str]:
  params = inspect.signature(cls.__init__).parameters
  return [name for name in params if name not in ("self", "rngs")]


def build_model(name: str, kwargs: Mapping[str, Any] | None = None,
                seed_or_key: int | Array = 0) -> nnx.Module:
  """Instantiate registry model `name` with `kwargs`, parameters drawn from `seed_or_key`."""
  if name not in MODELS:
    raise KeyError(f"unknown model {name!r}; valid: {sorted(MODELS)}")
  cls = MODELS[name]
  kwargs = dict(kwargs or {})
  valid = _constructor_arguments(cls)
  unknown = sorted(set(kwargs) - set(valid))
  if unknown:
    raise TypeError(f"unknown argument(s) {unknown} for model {name!r}; valid: {valid}")
  for key, value in kwargs.items():
    if isinstance(value, list):  # configs hold lists; modules want hashable static tuples
      kwargs[key] = tuple(value)
  return cls(**kwargs, rngs=nnx.Rngs(params=seed_or_key))


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, params, state): params are the nnx.Param leaves, state all else (BatchStat...)."""
  graphdef, params, state = nnx.split(model, nnx.Param, ...)
  return graphdef, params, state


def apply_model(graphdef: nnx.GraphDef, params: nnx.State, state: nnx.State, x: Array, *,
                key: Array | None = None, train: bool = False,
                **kwargs: Any) -> tuple[dict[str, Any], nnx.State]:
  """Pure application: merge, call, and return (outputs, new_state).

  In train mode batch norm normalises with batch statistics and new_state carries the updated
  running averages; in eval mode it uses the running averages and new_state equals state.
  """
  # copy=True: a batch-norm update must not write into the caller's `state` (it would, eagerly).
  model = nnx.merge(graphdef, params, state, copy=True)
  outputs = model(x, key=key, train=train, **kwargs)
  return outputs, nnx.state(model, nnx.Not(nnx.Param))
