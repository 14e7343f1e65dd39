"""A config's stage block (`model`, `model_kwargs`, `loss`, `loss_options`, `train`) -> a trained, seed-vmapped
or restored `train.TrainResult`. Shared by both wings: classification pipelines and segmentation autoencoders.

Key use, fixed (a run's results depend on it): a stage's key splits into (model init, data order, train steps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import numpy as np

from stargal_jax import inputs as inputs_lib
from stargal_jax import curves, models, train

Fetch = Callable[[np.ndarray], np.ndarray]


def model_kwargs(stage_config) -> dict:
  """The stage's model arguments as a plain dict (lists, e.g. from config.json, as tuples)."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in stage_config.model_kwargs.to_dict().items()}


def build_model(stage_config, key: jax.Array | int):
  return models.build_model(stage_config.model, model_kwargs(stage_config), key)


def _loss_settings(stage_config) -> tuple[dict, dict]:
  return stage_config.loss.to_dict(), stage_config.loss_options.to_dict()


def train_stage(stage_config, fetch: Fetch, n: int, key: jax.Array, workdir: Path, name: str,
                transform_outputs=None) -> train.TrainResult:
  """Builds the stage's registry model and trains (or resumes) it on `fetch` (indices -> model inputs),
  checkpointing to `workdir/checkpoints/name`."""
  init_key, data_key, step_key = jax.random.split(key, 3)
  model = build_model(stage_config, init_key)
  data_seed = int(jax.random.randint(data_key, (), 0, 2**31 - 1))
  batch_for_step = inputs_lib.batch_schedule(n, stage_config.train.batch_size, data_seed, fetch,
                                             augment=stage_config.train.get("augment", "none"))
  result = train.train(model, stage_config.train, *_loss_settings(stage_config), batch_for_step, step_key,
                       Path(workdir) / "checkpoints" / name, name, transform_outputs=transform_outputs)
  curves.record_stage(workdir, name, result.history)  # WORKDIR/tensorboard/<name>/
  return result


def train_stage_seeds(stage_config, fetch: Fetch, n: int, keys: jax.Array, workdir: Path,
                      name: str) -> train.TrainResult:
  """S seeds of one stage as one compiled program (vmapped step, seed axis sharded over the devices); each
  seed has its own initialisation, data order and noise."""
  data_seeds = [int(jax.random.randint(jax.random.fold_in(k, 1), (), 0, 2**31 - 1)) for k in keys]
  schedules = [inputs_lib.batch_schedule(n, stage_config.train.batch_size, s, fetch,
                                         augment=stage_config.train.get("augment", "none")) for s in data_seeds]
  batch_for_step = lambda step: {"x": np.stack([schedule(step)["x"] for schedule in schedules])}
  result = train.train_seeds(lambda k: build_model(stage_config, k), keys, stage_config.train,
                             *_loss_settings(stage_config), batch_for_step, Path(workdir) / "checkpoints" / name, name)
  curves.record_stage(workdir, name, result.history, num_seeds=len(keys))
  return result


def ensemble_size(stage_config) -> int:
  """How many members a stage trains as one ensemble (`<stage>.ensemble`; 1 = one model): they are trained as a
  seed study (`train.train_seeds`: own initialisation and data each) and their outputs averaged (`predict_stage`)."""
  return int(stage_config.get("ensemble", 1))


def restore_stage(stage_config, ckpt_dir: str | Path, num_seeds: int | None = None) -> train.TrainResult:
  """A finished stage's final checkpoint (`train.restore`); `num_seeds` for a `train_stage_seeds` study (an
  ensemble stage's members by default)."""
  if num_seeds is None and ensemble_size(stage_config) > 1:
    num_seeds = ensemble_size(stage_config)
  return train.restore(build_model(stage_config, 0), stage_config.train, *_loss_settings(stage_config),
                       ckpt_dir, num_seeds=num_seeds)


def predict_stage(result: train.TrainResult, stage_config, fetch: Fetch, n: int, batch_size: int,
                  keys: tuple[str, ...] = ("mu", "z")) -> dict[str, np.ndarray]:
  """A trained stage's outputs on `n` objects; an ensemble stage's are the mean over its members."""
  if ensemble_size(stage_config) == 1:
    return train.predict_in_batches(result, fetch, n, batch_size, keys)
  return {k: v.mean(axis=0) for k, v in train.predict_seeds_in_batches(result, fetch, n, batch_size, keys).items()}
