"""The study's pipelines: train without labels on the unlabelled set, then give every labelled object a latent.

`PIPELINES` is the one description of a classification pipeline: each `Pipeline` entry names its training
function, the stages it trains (the config blocks, checkpointed under `checkpoints/<stage>`), the stages that
map its inputs to its latents (`encoder`, what `predict` restores), and whether a seed study may share one
stage 1 and vmap stage 2 over the seeds (`seed_scope='stage2'`). Everything else (the run registry, seed
studies, predict) reads these entries.

- `vae_manifold`: one conv model (VAE with any latent penalty, or a plain AE) on the images (V+M, Vr(X)+M, A+M).
- `ae_vae`: stage-1 conv AE -> 30-d codes; stage-2 dense VAE on the codes (A+Vr, and the final 'conditional VAE').
- `vae_aeloss`: stage-1 conv AE; a conv VAE whose reconstruction is measured in the frozen AE's code space.
- `bootstrap`: a CNN trained on the unlabelled set's bright end, pseudo-labelled by psfMag - cModelMag and
  degraded to its faint end (`classify.bootstrap`); beyond the study.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from stargal_jax import inputs as inputs_lib
from stargal_jax import registry, stages, train
from stargal_jax.classify import bootstrap

PipelineFn = Callable[..., dict]  # (config, inputs, workdir, key) -> {'latents': (N, d), 'history': {...}}
SEED_SCOPES = ("all", "stage2")


def latents_of(outputs: dict) -> np.ndarray:
  """The latents a model gives an object: its posterior mean `mu` (VAEs) or its code `z` (AEs)."""
  return outputs["mu"] if "mu" in outputs else outputs["z"]


def _predict(result: train.TrainResult, fetch: stages.Fetch, n: int, batch_size: int) -> np.ndarray:
  return latents_of(train.predict_in_batches(result, fetch, n, batch_size))


def codes_in_batches(result: train.TrainResult, fetch: stages.Fetch, n: int, batch_size: int) -> np.ndarray:
  """A stage-1 AE's codes `z` (float32), the next stage's inputs."""
  return train.predict_in_batches(result, fetch, n, batch_size, keys=("z",))["z"].astype(np.float32)


def vae_manifold(config, inputs: inputs_lib.Inputs, workdir: Path, key: jax.Array) -> dict:
  fetch_u = inputs_lib.model_images(inputs.unlabelled, inputs.normalizer)
  fetch_l = inputs_lib.model_images(inputs.labelled, inputs.normalizer)
  result = stages.train_stage(config.vae, fetch_u, len(inputs.unlabelled), key, workdir, "vae")
  latents = _predict(result, fetch_l, len(inputs.labelled), config.eval.eval_batch_size)
  return {"latents": latents, "history": {"vae": result.history}}


def train_stage1_codes(config, inputs: inputs_lib.Inputs, workdir: Path, key: jax.Array):
  """Stage 1: the conv AE on the unlabelled images; returns it and the 30-d codes of both sets."""
  fetch_u = inputs_lib.model_images(inputs.unlabelled, inputs.normalizer)
  fetch_l = inputs_lib.model_images(inputs.labelled, inputs.normalizer)
  ae = stages.train_stage(config.ae, fetch_u, len(inputs.unlabelled), key, workdir, "ae")
  bs = config.eval.eval_batch_size
  return ae, codes_in_batches(ae, fetch_u, len(inputs.unlabelled), bs), codes_in_batches(ae, fetch_l,
                                                                                        len(inputs.labelled), bs)


def ae_vae(config, inputs: inputs_lib.Inputs, workdir: Path, key: jax.Array) -> dict:
  ae_key, vae_key = jax.random.split(key)
  ae, codes_u, codes_l = train_stage1_codes(config, inputs, workdir, ae_key)
  vae = stages.train_stage(config.vae, lambda idx: codes_u[idx], len(codes_u), vae_key, workdir, "vae")
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
  vae = stages.train_stage(config.vae, fetch_u, len(inputs.unlabelled), vae_key, workdir, "vae",
                           transform_outputs=in_ae_code_space)
  latents = _predict(vae, fetch_l, len(inputs.labelled), config.eval.eval_batch_size)
  return {"latents": latents, "history": {"ae": ae.history, "vae": vae.history}}


@dataclasses.dataclass(frozen=True)
class Pipeline:
  """One classification pipeline, everything the rest of the code needs to know about it."""
  train: PipelineFn  # one seed: (config, inputs, workdir, key) -> {'latents', 'history'}
  stages: tuple[str, ...]  # config blocks trained, in order (checkpoints/<stage>)
  encoder: tuple[str, ...]  # stages mapping the inputs to the latents: all but the last give codes `z`
  stage2_vmaps_over_seeds: bool  # seed_scope='stage2': one shared stage 1, the last stage vmapped over seeds


PIPELINES: dict[str, Pipeline] = {
    "vae_manifold": Pipeline(vae_manifold, stages=("vae",), encoder=("vae",), stage2_vmaps_over_seeds=False),
    "ae_vae": Pipeline(ae_vae, stages=("ae", "vae"), encoder=("ae", "vae"), stage2_vmaps_over_seeds=True),
    # vae_aeloss's AE shapes the loss only: the VAE alone encodes.
    "vae_aeloss": Pipeline(vae_aeloss, stages=("ae", "vae"), encoder=("vae",), stage2_vmaps_over_seeds=False),
    # bootstrap's latent is the classifier's logit; with rounds > 1 the last round is kept as 'classifier'.
    "bootstrap": Pipeline(bootstrap.train_bootstrap, stages=("classifier",), encoder=("classifier",),
                          stage2_vmaps_over_seeds=False),
}
STAGE2_SEEDS_DIR = "vae_seeds"  # checkpoints/<this>: the vmapped stage 2 of a seed_scope='stage2' study


def get_pipeline(name: str) -> Pipeline:
  return registry.lookup(PIPELINES, name, "pipeline")


def check_seed_scope(config) -> None:
  """Fails before any work when the seed study cannot run as configured."""
  registry.check_choice(config.seed_scope, SEED_SCOPES, "seed_scope")
  if int(config.num_seeds) > 1 and config.seed_scope == "stage2":
    if not get_pipeline(config.pipeline).stage2_vmaps_over_seeds:
      stage2 = [name for name, p in PIPELINES.items() if p.stage2_vmaps_over_seeds]
      raise ValueError(f"seed_scope='stage2' needs a pipeline whose stage 2 vmaps over seeds ({stage2}), not "
                       f"{config.pipeline!r}; use seed_scope='all'.")


def seed_dir(workdir: Path, seed_index: int) -> Path:
  """Where seed `seed_index` of a seed_scope='all' study trains (its own checkpoints)."""
  return Path(workdir) / f"seed_{seed_index:03d}"


def train_latents(config, inputs: inputs_lib.Inputs, workdir: Path, key: jax.Array) -> np.ndarray:
  """Latents (S, N, d) of the labelled set for `config.num_seeds` seeds (S = 1: the pipeline itself).

  `config.seed_scope`: 'stage2' trains one shared stage-1 AE and vmaps the S stage-2 VAEs (cheap, the study's
  100 runs); 'all' retrains every stage per seed, one seed after another (measured fastest for convolutions
  on CPU)."""
  check_seed_scope(config)
  pipeline = get_pipeline(config.pipeline)
  num_seeds = int(config.num_seeds)
  if num_seeds == 1:
    return np.asarray(pipeline.train(config, inputs, workdir, key)["latents"])[None]
  if config.seed_scope == "stage2":
    ae_key, vae_key = jax.random.split(key)
    _, codes_u, codes_l = train_stage1_codes(config, inputs, workdir, ae_key)
    keys = jax.random.split(vae_key, num_seeds)
    vae = stages.train_stage_seeds(config.vae, lambda idx: codes_u[idx], len(codes_u), keys, workdir,
                                   STAGE2_SEEDS_DIR)
    out = train.predict_seeds_in_batches(vae, lambda idx: codes_l[idx], len(codes_l), config.eval.eval_batch_size)
    return latents_of(out)
  return np.stack([pipeline.train(config, inputs, seed_dir(workdir, s), jax.random.fold_in(key, s))["latents"]
                   for s in range(num_seeds)])
