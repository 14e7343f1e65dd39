"""Neural network modules (Flax NNX) and the functional boundary the trainers use.

- `conv2x`: stride-2 convolutions with hand-written backward passes (`Conv2x`, `UpConv2x`).
- `networks`: the encoders, decoders and models, and `hypercolumns`.
- here: `MODELS`, `build_model`, `split_model`, `apply_model`: registry and functional boundary; jitted,
  differentiated or vmapped code takes `(graphdef, params, state)` and merges inside.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from stargal_jax import registry
from stargal_jax.models.conv2x import (Conv2x, UpConv2x, conv_stride2, downconv2x, kernel_grad,
                                       same_padding_stride2, transpose_stride2, upconv2x)
from stargal_jax.models.networks import (ACTIVATIONS, CONV_IMPLS, NORMS, ConvAE, ConvClassifier, ConvDecoder, ConvEncoder,
                                         ConvVAE, DenseVAE, ResidualConvAE, get_activation, hypercolumns)

Array = jax.Array
__all__ = ["ACTIVATIONS", "CONV_IMPLS", "NORMS", "MODELS", "Conv2x", "UpConv2x", "ConvAE", "ConvClassifier", "ConvDecoder",
           "ConvEncoder", "ConvVAE", "DenseVAE", "ResidualConvAE", "apply_model", "build_model", "conv_stride2",
           "downconv2x", "get_activation", "hypercolumns", "kernel_grad", "same_padding_stride2", "split_model",
           "transpose_stride2", "upconv2x"]

# ---------------------------------------------------------------------------------------------
# Registry and functional boundary.

MODELS: dict[str, type[nnx.Module]] = {
  "conv_vae": ConvVAE,
  "conv_ae": ConvAE,
  "residual_conv_ae": ResidualConvAE,
  "dense_vae": DenseVAE,
  "conv_classifier": ConvClassifier,
}


def _constructor_arguments(cls: type) -> list[str]:
  params = inspect.signature(cls.__init__).parameters
  return [name for name in params if name not in ("self", "rngs")]


def build_model(name: str, kwargs: Mapping[str, Any] | None = None,
                seed_or_key: int | Array = 0) -> nnx.Module:
  """Instantiate registry model `name` with `kwargs`, parameters drawn from `seed_or_key`."""
  cls = registry.lookup(MODELS, name, "model")
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
