"""The networks: conv encoder / decoder stacks (mirrored), `ConvVAE` (baseline V+M), `ConvAE` (stage-1 AE of the
hierarchical designs), `ResidualConvAE` (additive skips, for segmentation), `DenseVAE` (stage-2 VAE on AE codes,
the 'conditional VAE'), `ConvClassifier` (a cutout -> one logit), and `hypercolumns`, per-pixel stacks of
upsampled activation maps (Hariharan et al. 2014).

Modules take NHWC images `(B, 64, 64, 5)` (or `(B, D)` codes for `DenseVAE`) and return a dict of outputs, never
losses; they hold no optimiser state. Sampling takes an explicit PRNG key; without one the latent is its mean.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from stargal_jax import registry
from stargal_jax.models.conv2x import Conv2x, UpConv2x

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
  return registry.lookup(ACTIVATIONS, name, "activation")


# ---------------------------------------------------------------------------------------------
# Building blocks.


def _make_norm(norm: str, features: int, rngs: nnx.Rngs) -> nnx.Module | None:
  registry.check_choice(norm, NORMS, "norm")
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


# Stride-2 layers by direction: (ours, with the hand-written backward pass; flax's own).
_STRIDE2_LAYERS = {"downconv": (Conv2x, nnx.Conv), "upconv": (UpConv2x, nnx.ConvTranspose)}


def _make_stride2(which: str, kind: str, in_features: int, out_features: int, kernel_size: int,
                  use_bias: bool, rngs: nnx.Rngs) -> nnx.Module:
  """A `which` ('downconv' | 'upconv') layer of implementation `kind` (`CONV_IMPLS`)."""
  registry.check_choice(kind, CONV_IMPLS, which)
  adjoint, flax_layer = _STRIDE2_LAYERS[which]
  if kind == "adjoint":
    return adjoint(in_features, out_features, kernel_size, use_bias=use_bias, rngs=rngs)
  return flax_layer(in_features, out_features, (kernel_size, kernel_size), strides=2,
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
    registry.check_choice(norm, NORMS, "norm")
    _check_image_size(image_size, len(channels))
    self.activation = activation
    widths = (in_channels, *channels)
    # A conv bias just before batch norm is cancelled by its mean subtraction.
    self.convs = nnx.List([
      _make_stride2("downconv", downconv, cin, cout, kernel_size, norm != "batch", rngs)
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
    registry.check_choice(norm, NORMS, "norm")
    _check_image_size(image_size, len(channels))
    self.activation = activation
    self.start_size = image_size // 2 ** len(channels)
    self.start_channels = channels[-1]
    self.project = nnx.Linear(latent_dim, self.start_size ** 2 * channels[-1], rngs=rngs)
    widths = (*channels[::-1], channels[0] if output_conv else out_channels)
    n_hidden = len(channels) if output_conv else len(channels) - 1  # blocks with norm + act
    self.upconvs = nnx.List([
      _make_stride2("upconv", upconv, cin, cout, kernel_size, j >= n_hidden or norm != "batch", rngs)
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
    registry.check_choice(mu_activation, ("none", "tanh"), "mu_activation")
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
    registry.check_choice(out_activation, ("none", "tanh"), "out_activation")
    registry.check_choice(mu_activation, ("none", "tanh"), "mu_activation")
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


class ConvClassifier(nnx.Module):
  """A small CNN that maps a cutout to one logit (larger = galaxy): the bootstrapped classifier and the
  supervised reference.

  The central `crop` x `crop` pixels (the object; faint objects are a few pixels across) -> a stride-1 conv at
  full resolution (the PSF-versus-slightly-extended difference lives at the pixel scale) -> stride-2 conv
  blocks -> Dense(hidden) -> one logit. Outputs 'logit' (B,) and 'z' (B, 1), the latent the classification
  wing reads (`pipelines.latents_of`).
  """

  def __init__(self, in_channels: int = 5, channels: Sequence[int] = (32, 64, 128), stem_channels: int = 32,
               kernel_size: int = 3, activation: str = "relu", norm: str = "none", crop: int = 32,
               hidden: int = 64, *, downconv: str = "adjoint", image_size: int = 64, rngs: nnx.Rngs):
    if not 0 < crop <= image_size or (image_size - crop) % 2:
      raise ValueError(f"crop {crop} must be in (0, {image_size}] with an even margin")
    get_activation(activation)
    self.activation = activation
    self.crop = crop
    self.margin = (image_size - crop) // 2
    self.stem = nnx.Conv(in_channels, stem_channels, (kernel_size, kernel_size), padding="SAME", rngs=rngs)
    self.encoder = ConvEncoder(stem_channels, channels, kernel_size, activation, norm, downconv=downconv,
                               image_size=crop, rngs=rngs)
    self.hidden = nnx.Linear(self.encoder.features, hidden, rngs=rngs)
    self.to_logit = nnx.Linear(hidden, 1, rngs=rngs)

  def __call__(self, x: Array, *, key: Array | None = None, train: bool = False) -> dict[str, Array]:
    del key  # deterministic
    act = get_activation(self.activation)
    m = self.margin
    x = x[:, m:m + self.crop, m:m + self.crop, :]
    features, _ = self.encoder(act(self.stem(x)), train=train)
    logit = self.to_logit(act(self.hidden(features)))
    return {"logit": logit[:, 0], "z": logit}


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

