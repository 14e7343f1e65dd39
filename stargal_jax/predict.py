"""Score new cutouts with a finished classification run (notebooks, real SDSS cutouts).

`score_cutouts(workdir, images)` restores the run's trained stages from `WORKDIR/checkpoints` (orbax), normalises
the images with `WORKDIR/normalizer.json`, encodes them to the run's latents, and scores the latents exactly as
the run scored its labelled set (`evaluate.evaluate`, without the labels): `config.score` fitted on the new set's
own latents (a GMM, a manifold, ...), the sign chosen by the new images' extendedness (`metrics.orient_score`),
point-like below the `config.data.star_fraction` quantile. The score is therefore relative to the set scored:
score a whole field or sample at once, not objects one at a time.

Seed studies give one latent set and one score per seed (a leading seed axis); `seed_scope='stage2'` restores the
shared stage-1 AE and the vmapped stage-2 models (`checkpoints/vae_seeds`), `seed_scope='all'` every
`seed_NNN/checkpoints`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from stargal_jax import evaluate, metrics, models, train
from stargal_jax import inputs as inputs_lib
from stargal_jax.data import normalize as normalization

IMAGE_SHAPE = (5, 64, 64)
# Stages that map a pipeline's inputs to its latents, in order (vae_aeloss's AE shaped the loss only).
ENCODER_STAGES = {"vae_manifold": ("vae",), "ae_vae": ("ae", "vae"), "vae_aeloss": ("vae",)}


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A finished run, restored: its config, normaliser and, per seed, the encoding stages by name."""
  workdir: Path
  config: ml_collections.ConfigDict
  normalizer: dict
  seeds: list[dict[str, train.TrainResult]]  # one {stage name: result} per seed (one entry for stage2 studies)
  seed_axis: bool  # True: the last stage's params carry a leading seed axis (seed_scope='stage2')

  @property
  def num_seeds(self) -> int:
    return int(self.config.num_seeds)


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads((Path(workdir) / "config.json").read_text()))


def restore_stage(stage_config, ckpt_dir: str | Path, num_seeds: int | None = None) -> train.TrainResult:
  """The final checkpoint of one trained stage as a TrainResult (params and batch statistics).

  The abstract train state (params, model state, optimiser state, critic) comes from a fresh model of the
  stage's config, so the checkpoint must come from the same config; `num_seeds` adds the seed axis of a
  vmapped seed study. Fails, naming the directory, when the stage did not finish its configured steps.
  """
  ckpt_dir = Path(ckpt_dir).absolute()
  steps = int(stage_config.train.steps)
  manager = ocp.CheckpointManager(ckpt_dir)
  try:
    latest = manager.latest_step()
    if latest != steps:
      raise FileNotFoundError(f"{ckpt_dir}: no finished stage of {steps} steps (latest checkpoint: {latest})")
    model = models.build_model(stage_config.model, stage_config.model_kwargs.to_dict(), 0)
    # The trainer's own state builder: the restored tree matches what `train.train` saved, critic included.
    graphdef, state, _ = train._initial_state(model, stage_config.train, stage_config.loss.to_dict(),
                                              stage_config.loss_options.to_dict(), None, jax.random.key(0))
    leading = () if num_seeds is None else (int(num_seeds),)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(leading + np.shape(x), np.asarray(x).dtype),
                            train._to_host_tree(state))
    restored = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
  finally:
    manager.close()
  return train.TrainResult(graphdef, restored["params"], restored["model_state"], [])


def load_run(workdir: str | Path) -> TrainedRun:
  """Restores a finished classification run written by `experiment.run(config, workdir)`."""
  workdir = Path(workdir)
  config = load_config(workdir)
  if config.pipeline not in ENCODER_STAGES:
    raise ValueError(f"{workdir}: pipeline {config.pipeline!r} is not a classification pipeline; "
                     f"valid: {sorted(ENCODER_STAGES)}")
  normalizer = normalization.load_normalizer(workdir / "normalizer.json")
  names = ENCODER_STAGES[config.pipeline]
  num_seeds = int(config.num_seeds)
  restore = lambda root, name: restore_stage(config[name], root / "checkpoints" / name)
  if num_seeds > 1 and config.seed_scope == "stage2":
    seeds = [{"ae": restore(workdir, "ae"),
              "vae": restore_stage(config.vae, workdir / "checkpoints" / "vae_seeds", num_seeds=num_seeds)}]
    return TrainedRun(workdir, config, normalizer, seeds, seed_axis=True)
  roots = [workdir] if num_seeds == 1 else [workdir / f"seed_{s:03d}" for s in range(num_seeds)]
  seeds = [{name: restore(root, name) for name in names} for root in roots]
  return TrainedRun(workdir, config, normalizer, seeds, seed_axis=False)


class ImageArray:
  """Raw (N, 5, 64, 64) cutouts in nanomaggies with the store interface (`len`, `read(indices)`); non-finite
  pixels are set to 0 as the data layer's default nan_policy 'zero' does (`n_nonfinite_images` counts them)."""

  def __init__(self, images):
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
      raise ValueError(f"images must be (N, {', '.join(map(str, IMAGE_SHAPE))}), got {images.shape}")
    finite = np.isfinite(images)
    self.n_nonfinite_images = int((~finite).any(axis=(1, 2, 3)).sum())
    self._images = np.where(finite, images, np.float32(0))

  def __len__(self) -> int:
    return len(self._images)

  def read(self, indices) -> np.ndarray:
    return self._images[np.asarray(indices)]


def _as_source(images) -> Any:
  return images if hasattr(images, "read") and hasattr(images, "__len__") else ImageArray(images)


def encode(run: TrainedRun, images, batch_size: int | None = None) -> np.ndarray:
  """Latent means (S, N, d) of the cutouts (an array or a data store), S = the run's number of seeds."""
  source = _as_source(images)
  n = len(source)
  batch_size = int(batch_size or run.config.eval.eval_batch_size)
  fetch = inputs_lib.model_images(source, run.normalizer)
  per_seed = []
  for stages in run.seeds:
    inputs = fetch
    names = ENCODER_STAGES[run.config.pipeline]
    for name in names[:-1]:  # stage 1: the AE's codes feed the last stage
      codes = train.predict_in_batches(stages[name], inputs, n, batch_size, keys=("z",))["z"].astype(np.float32)
      inputs = lambda idx, codes=codes: codes[idx]
    last = stages[names[-1]]
    if run.seed_axis:
      out = train.predict_seeds_in_batches(last, inputs, n, batch_size)
      per_seed.extend(out["mu"] if "mu" in out else out["z"])
    else:
      out = train.predict_in_batches(last, inputs, n, batch_size)
      per_seed.append(out["mu"] if "mu" in out else out["z"])
  return np.asarray(per_seed, dtype=np.float64)


def score_latents(latents: np.ndarray, measurements: dict, config, seed: int) -> dict[str, Any]:
  """One seed's label-free score of (N, d) latents, as `evaluate.evaluate` computes it for a run
  (`measurements` from `evaluate.image_measurements` of the same objects)."""
  raw = evaluate.score_from_latents(latents, config.score, seed=seed, measurements=measurements)
  score, sign = metrics.orient_score(raw, measurements["extendedness"])
  star_fraction = float(config.data.star_fraction)
  return {"score": score, "pred": metrics.prior_threshold_predictions(score, star_fraction),
          "orientation_sign": int(sign), "threshold": float(np.quantile(score, star_fraction))}


def score_cutouts(workdir_or_run: str | Path | TrainedRun, images, batch_size: int | None = None) -> dict:
  """Latents and label-free scores of new cutouts under a finished run (see the module docstring).

  `images`: raw (N, 5, 64, 64) nanomaggies or a data store (`stargal_jax.data.open_dataset`). Returns
  `latents` (N, d), `score` (N,) (larger = galaxy), `pred` (N,) (1 galaxy, 0 point-like), `orientation_sign`,
  `threshold`, and the label-free image measurements the run reports beside them (`r_mag`, `extendedness`,
  `baseline_concentration`, `baseline_psf_minus_extended`). A seed study adds a leading seed axis to
  `latents`, `score`, `pred`, `orientation_sign` and `threshold`.
  """
  run = workdir_or_run if isinstance(workdir_or_run, TrainedRun) else load_run(workdir_or_run)
  source = _as_source(images)
  latents = encode(run, source, batch_size)
  measurements = evaluate.image_measurements(source)
  scored = [score_latents(z, measurements, run.config, seed=int(run.config.seed) + s)
            for s, z in enumerate(latents)]
  out = {k: np.asarray([s[k] for s in scored]) for k in scored[0]}
  out["latents"] = latents
  if len(latents) == 1:
    out = {k: v[0] for k, v in out.items()}
    out["orientation_sign"], out["threshold"] = int(out["orientation_sign"]), float(out["threshold"])
  return {**out, **measurements}
