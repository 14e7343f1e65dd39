"""The study's pipelines: train without labels on the unlabelled set, then give every labelled object a latent.

Each pipeline is `fn(config, inputs, workdir, key) -> dict` with `latents` (N, d) for the labelled objects
(latent means) in store order. Scoring, evaluation and outputs are shared (`stargal_jax.evaluate`).

- `vae_manifold`: one conv model (VAE with any latent penalty, or a plain AE) on the images (V+M, Vr(X)+M, A+M).
- `ae_vae`: stage-1 conv AE -> 30-d codes; stage-2 dense VAE on the codes (A+Vr, and the final 'conditional VAE').
- `vae_aeloss`: stage-1 conv AE; a conv VAE whose reconstruction is measured in the frozen AE's code space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import numpy as np

from stargal_jax import inputs as inputs_lib
from stargal_jax import models, train

Fetch = Callable[[np.ndarray], np.ndarray]


def _model_kwargs(stage_config) -> dict:
  return {k: tuple(v) if isinstance(v, list) else v for k, v in stage_config.model_kwargs.to_dict().items()}


def train_stage(stage_config, fetch: Fetch, n: int, key: jax.Array, workdir: Path, name: str,
                transform_outputs=None) -> train.TrainResult:
  """Builds the stage's registry model and trains it on `fetch` (indices -> model inputs)."""
  init_key, data_key, step_key = jax.random.split(key, 3)
  model = models.build_model(stage_config.model, _model_kwargs(stage_config), init_key)
  data_seed = int(jax.random.randint(data_key, (), 0, 2**31 - 1))
  batch_for_step = inputs_lib.batch_schedule(n, stage_config.train.batch_size, data_seed, fetch)
  return train.train(model, stage_config.train, stage_config.loss.to_dict(), stage_config.loss_options.to_dict(),
                     batch_for_step, step_key, Path(workdir) / "checkpoints" / name, name,
                     transform_outputs=transform_outputs)


def _latent_key(outputs: dict) -> np.ndarray:
  return outputs["mu"] if "mu" in outputs else outputs["z"]


def _predict(result: train.TrainResult, fetch: Fetch, n: int, batch_size: int) -> np.ndarray:
  return _latent_key(train.predict_in_batches(result, fetch, n, batch_size))


def vae_manifold(config, inputs: inputs_lib.Inputs, workdir: Path, key: jax.Array) -> dict:
  fetch_u = inputs_lib.model_images(inputs.unlabelled, inputs.normalizer)
  fetch_l = inputs_lib.model_images(inputs.labelled, inputs.normalizer)
  result = train_stage(config.vae, fetch_u, len(inputs.unlabelled), key, workdir, "vae")
  latents = _predict(result, fetch_l, len(inputs.labelled), config.eval.eval_batch_size)
  return {"latents": latents, "history": {"vae": result.history}}


def train_stage1_codes(config, inputs: inputs_lib.Inputs, workdir: Path, key: jax.Array):
  """Stage 1: the conv AE on the unlabelled images; returns it and the 30-d codes of both sets."""
  fetch_u = inputs_lib.model_images(inputs.unlabelled, inputs.normalizer)
  fetch_l = inputs_lib.model_images(inputs.labelled, inputs.normalizer)
  ae = train_stage(config.ae, fetch_u, len(inputs.unlabelled), key, workdir, "ae")
  bs = config.eval.eval_batch_size
  codes_u = train.predict_in_batches(ae, fetch_u, len(inputs.unlabelled), bs, keys=("z",))["z"]
  codes_l = train.predict_in_batches(ae, fetch_l, len(inputs.labelled), bs, keys=("z",))["z"]
  return ae, codes_u.astype(np.float32), codes_l.astype(np.float32)


def ae_vae(config, inputs: inputs_lib.Inputs, workdir: Path, key: jax.Array) -> dict:
  ae_key, vae_key = jax.random.split(key)
  ae, codes_u, codes_l = train_stage1_codes(config, inputs, workdir, ae_key)
  vae = train_stage(config.vae, lambda idx: codes_u[idx], len(codes_u), vae_key, workdir, "vae")
  latents = _predict(vae, lambda idx: codes_l[idx], len(codes_l), config.eval.eval_batch_size)
  return {"latents": latents, "history": {"ae": ae.history, "vae": vae.history}}


def vae_aeloss(config, inputs: inputs_lib.Inputs, workdir: Path, key: jax.Array) -> dict:
  ae_key, vae_key = jax.random.split(key)
  ae, _, _ = train_stage1_codes(config, inputs, workdir, ae_key)
  encode = train.make_predict_fn(ae.graphdef)

  def in_ae_code_space(outputs, batch):
    # The frozen AE's codes of the reconstruction are compared with the codes of the input.
    codes = lambda x: encode(ae.params, ae.model_state, x)["z"]
    return dict(outputs, recon=codes(outputs["recon"])), dict(batch, x=jax.lax.stop_gradient(codes(batch["x"])))

  fetch_u = inputs_lib.model_images(inputs.unlabelled, inputs.normalizer)
  fetch_l = inputs_lib.model_images(inputs.labelled, inputs.normalizer)
  vae = train_stage(config.vae, fetch_u, len(inputs.unlabelled), vae_key, workdir, "vae",
                    transform_outputs=in_ae_code_space)
  latents = _predict(vae, fetch_l, len(inputs.labelled), config.eval.eval_batch_size)
  return {"latents": latents, "history": {"ae": ae.history, "vae": vae.history}}


PIPELINES: dict[str, Callable] = {"vae_manifold": vae_manifold, "ae_vae": ae_vae, "vae_aeloss": vae_aeloss}


def get_pipeline(name: str) -> Callable:
  if name not in PIPELINES:
    raise ValueError(f"Unknown pipeline {name!r}; valid: {sorted(PIPELINES)}")
  return PIPELINES[name]


# ----------------------------------------------------------------------------------------------
# Seed studies: S independently seeded trainings reported together.

def train_stage_seeds(stage_config, fetch: Fetch, n: int, keys: jax.Array, workdir: Path,
                      name: str) -> train.TrainResult:
  """S seeds of one stage as one compiled program (vmapped step, seed axis sharded over the devices); each
  seed has its own initialisation, data order and noise."""
  data_seeds = [int(jax.random.randint(jax.random.fold_in(k, 1), (), 0, 2**31 - 1)) for k in keys]
  schedules = [inputs_lib.batch_schedule(n, stage_config.train.batch_size, s, fetch) for s in data_seeds]
  batch_for_step = lambda step: {"x": np.stack([schedule(step)["x"] for schedule in schedules])}
  build = lambda k: models.build_model(stage_config.model, _model_kwargs(stage_config), k)
  return train.train_seeds(build, keys, stage_config.train, stage_config.loss.to_dict(),
                           stage_config.loss_options.to_dict(), batch_for_step,
                           Path(workdir) / "checkpoints" / name, name)


def run_seeds(config, inputs: inputs_lib.Inputs, workdir: Path, key: jax.Array) -> np.ndarray:
  """Latents (S, N, d) of `config.num_seeds` seeds. `config.seed_scope`: 'stage2' trains one shared stage-1 AE
  and vmaps the S stage-2 VAEs (hierarchical pipelines; cheap, the study's 100 runs); 'all' retrains every
  stage per seed, one seed after another (measured fastest for convolutions on CPU)."""
  num_seeds = int(config.num_seeds)
  if config.seed_scope == "stage2":
    if config.pipeline != "ae_vae":
      raise ValueError(f"seed_scope='stage2' needs a hierarchical pipeline (ae_vae), not {config.pipeline!r}; "
                       "use seed_scope='all'.")
    ae_key, vae_key = jax.random.split(key)
    _, codes_u, codes_l = train_stage1_codes(config, inputs, workdir, ae_key)
    keys = jax.random.split(vae_key, num_seeds)
    vae = train_stage_seeds(config.vae, lambda idx: codes_u[idx], len(codes_u), keys, workdir, "vae_seeds")
    out = train.predict_seeds_in_batches(vae, lambda idx: codes_l[idx], len(codes_l), config.eval.eval_batch_size)
    return _latent_key(out)
  if config.seed_scope == "all":
    pipeline = get_pipeline(config.pipeline)
    return np.stack([pipeline(config, inputs, Path(workdir) / f"seed_{s:03d}", jax.random.fold_in(key, s))["latents"]
                     for s in range(num_seeds)])
  raise ValueError(f"Unknown seed_scope {config.seed_scope!r}; valid: ['all', 'stage2']")
