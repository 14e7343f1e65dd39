"""Score new cutouts with a finished classification run (notebooks, real SDSS cutouts).

`score_cutouts(workdir, images)` restores the run's trained stages from `WORKDIR/checkpoints` (orbax), normalises
the images with `WORKDIR/normalizer.json`, encodes them to the run's latents, and scores the latents exactly as
the run scored its labelled set (`scoring.score_latents`, the same function): `config.score` fitted on the new
set's own latents (a GMM, a manifold, ...), the sign chosen by the new images' extendedness, point-like below the
`config.data.star_fraction` quantile. The score is therefore relative to the set scored:
score a whole field or sample at once, not objects one at a time.

The stages restored are the pipeline's `encoder` (`pipelines.PIPELINES`). Seed studies give one latent set and
one score per seed (a leading seed axis); `seed_scope='stage2'` restores the shared stage-1 AE and the vmapped
stage-2 models (`checkpoints/vae_seeds`), `seed_scope='all'` every `seed_NNN/checkpoints`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from stargal_jax import IMAGE_SHAPE, registry, stages, train
from stargal_jax import inputs as inputs_lib
from stargal_jax.classify import pipelines, scoring
from stargal_jax.data import normalize as normalization


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


def load_run(workdir: str | Path, config: ml_collections.ConfigDict | None = None) -> TrainedRun:
  """Restores a finished classification run written by `experiment.run(config, workdir)`; `config` for a
  classification written inside another job's folder without a config.json of its own (seg_cvae's `masked/`)."""
  workdir = Path(workdir)
  config = load_config(workdir) if config is None else config
  names = registry.lookup(pipelines.PIPELINES, config.pipeline,
                          f"classification pipeline (in {workdir / 'config.json'})").encoder
  normalizer = normalization.load_normalizer(workdir / "normalizer.json")
  num_seeds = int(config.num_seeds)
  restore = lambda root, name: stages.restore_stage(config[name], root / "checkpoints" / name)
  if num_seeds > 1 and config.seed_scope == "stage2":
    *shared, last = names
    seeds = [{**{name: restore(workdir, name) for name in shared},
              last: stages.restore_stage(config[last], workdir / "checkpoints" / pipelines.STAGE2_SEEDS_DIR,
                                         num_seeds=num_seeds)}]
    return TrainedRun(workdir, config, normalizer, seeds, seed_axis=True)
  roots = [workdir] if num_seeds == 1 else [pipelines.seed_dir(workdir, s) for s in range(num_seeds)]
  seeds = [{name: restore(root, name) for name in names} for root in roots]
  return TrainedRun(workdir, config, normalizer, seeds, seed_axis=False)


# The fewest objects a set may have to be scored: the orientation is a rank correlation with the set's extendedness
# and the threshold its star_fraction quantile, so both ends need a population (50 objects at the default prior
# 0.3 give 15 point-like ones); the set's own PSF comes from its brightest 30% (morphology takes at least 20).
MIN_OBJECTS = 50


def check_set_size(n: int, what: str) -> None:
  """Refuses a set too small to orient and threshold its score (MIN_OBJECTS), naming it."""
  if n < MIN_OBJECTS:
    raise ValueError(f"{what}: {n} objects; the score is fitted on the set itself (orientation, prior threshold) "
                     f"and needs at least {MIN_OBJECTS}: score a whole field or sample at once")


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
  names = pipelines.get_pipeline(run.config.pipeline).encoder
  for trained in run.seeds:
    inputs = fetch
    for name in names[:-1]:  # stage 1: the AE's codes feed the last stage
      codes = pipelines.codes_in_batches(trained[name], inputs, n, batch_size)
      inputs = lambda idx, codes=codes: codes[idx]
    last = trained[names[-1]]
    if run.seed_axis:
      per_seed.extend(pipelines.latents_of(train.predict_seeds_in_batches(last, inputs, n, batch_size)))
    else:
      per_seed.append(pipelines.latents_of(stages.predict_stage(last, run.config[names[-1]], inputs, n, batch_size)))
  return np.asarray(per_seed, dtype=np.float64)


def score_cutouts(workdir_or_run: str | Path | TrainedRun, images, batch_size: int | None = None) -> dict:
  """Latents and label-free scores of new cutouts under a finished run (see the module docstring).

  `images`: raw (N, 5, 64, 64) nanomaggies or a data store (`stargal_jax.data.open_dataset`). Returns
  `latents` (N, d), `score` (N,) (larger = galaxy), `pred` (N,) (1 galaxy, 0 point-like), `orientation_sign`,
  `threshold`, and the label-free image measurements the run reports beside them (`scoring.image_measurements`:
  `r_mag`, `extendedness`, `baseline_*`, `index_*`, ...). A seed study adds a leading seed axis to `latents`, `score`,
  `pred`, `orientation_sign` and `threshold`. Refuses sets of fewer than MIN_OBJECTS objects.
  """
  run = workdir_or_run if isinstance(workdir_or_run, TrainedRun) else load_run(workdir_or_run)
  source = _as_source(images)
  check_set_size(len(source), "the cutouts to score")
  latents = encode(run, source, batch_size)
  measurements = scoring.image_measurements(source)
  scored = [scoring.score_latents(z, measurements, run.config, seed=int(run.config.seed) + s)
            for s, z in enumerate(latents)]
  out = {k: np.asarray([s[k] for s in scored]) for k in scored[0]}
  out["latents"] = latents
  if len(latents) == 1:
    out = {k: v[0] for k, v in out.items()}
    out["orientation_sign"], out["threshold"] = int(out["orientation_sign"]), float(out["threshold"])
  return {**out, **measurements}
