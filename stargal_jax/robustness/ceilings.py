"""Where the morphology is lost: supervised ceilings of a finished cell's representations, and the measurements cache.

Labels are read here only to measure what a representation still holds (an upper reference), never to train or
score a label-free method. For each cell: cross-validated logistic regression and gradient boosting
(`classify.manifold.supervised_ceiling`, 5 folds) on
- the latents the design is scored from (every seed for logistic regression, the first `BOOSTED_SEEDS` for boosting);
- for hierarchical designs, the stage-1 codes (the 30-d AE codes the 2-unit stage 2 reads), so that a low latent
  ceiling can be told apart from information already missing in stage 1;
and, once per data set, the classical label-free indices together with the r magnitude (the hand-feature ceiling).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stargal_jax import inputs as inputs_lib
from stargal_jax import stages
from stargal_jax.classify import manifold, pipelines, scoring
from stargal_jax.data import normalize as normalization
from stargal_jax.data.formats import CLASS_CODES

CEILING_MODELS = ("logistic", "boosting")
BOOSTED_SEEDS = 5  # gradient boosting on the first seeds only (a few seconds each)


def ceiling_pair(features: np.ndarray, is_galaxy: np.ndarray, r_mag: np.ndarray, mag_bins, seed: int = 0) -> dict:
  """{model: ceiling} for both CEILING_MODELS on one feature matrix."""
  return {model: manifold.supervised_ceiling(features, is_galaxy, seed=seed, model=model, r_mag=r_mag,
                                             mag_bins=mag_bins) for model in CEILING_MODELS}


def _over_seeds(per_seed: list[dict]) -> dict:
  aucs = np.array([c["auc"] for c in per_seed])
  return {"per_seed": per_seed, "auc_mean": float(aucs.mean()), "auc_min": float(aucs.min()),
          "auc_std": float(aucs.std(ddof=1)) if len(aucs) > 1 else 0.0}


def latent_ceilings(latents_per_seed: np.ndarray, is_galaxy, r_mag, mag_bins, seed: int = 0) -> dict:
  """Ceilings of every seed's latents (S, N, d): logistic on all seeds, boosting on the first BOOSTED_SEEDS."""
  out = {}
  for model in CEILING_MODELS:
    count = len(latents_per_seed) if model == "logistic" else min(len(latents_per_seed), BOOSTED_SEEDS)
    out[model] = _over_seeds([manifold.supervised_ceiling(latents_per_seed[s], is_galaxy, seed=seed + s, model=model,
                                                          r_mag=r_mag, mag_bins=mag_bins) for s in range(count)])
  return out


def stage1_codes(config, workdir: Path) -> np.ndarray | None:
  """The labelled set's stage-1 codes of a finished hierarchical run whose stage 1 is shared (else None)."""
  pipeline = pipelines.get_pipeline(config.pipeline)
  if pipeline.stages[0] != "ae":
    return None
  root = Path(workdir)
  if int(config.num_seeds) > 1 and config.seed_scope != "stage2":
    root = pipelines.seed_dir(root, 0)
  ae = stages.restore_stage(config.ae, root / "checkpoints" / "ae")
  inputs = inputs_lib.load_inputs(config.data, seed=config.seed)
  normalizer = normalization.load_normalizer(Path(workdir) / "normalizer.json")
  fetch = inputs_lib.model_images(inputs.labelled, normalizer)
  return pipelines.codes_in_batches(ae, fetch, len(inputs.labelled), config.eval.eval_batch_size)


def cell_ceilings(config, workdir: Path) -> dict:
  """The supervised ceilings of a finished simulated cell (see the module docstring)."""
  with np.load(Path(workdir) / "latents.npz", allow_pickle=False) as f:
    latents = f["latents_per_seed"] if "latents_per_seed" in f.files else f["latents"][None]
    labels, r_mag = f["label"], f["r_mag"]
  is_galaxy = labels == CLASS_CODES["GALAXY"]
  mag_bins = tuple(config.data.mag_bins)
  out = {"latents": latent_ceilings(np.asarray(latents, np.float64), is_galaxy, r_mag, mag_bins, int(config.seed))}
  codes = stage1_codes(config, workdir)
  if codes is not None:
    out["stage1_codes"] = ceiling_pair(codes, is_galaxy, r_mag, mag_bins, int(config.seed))
  return out


# --------------------------------------------------------------------------- the hand-feature ceiling

INDEX_KEYS = ("baseline_concentration", "baseline_psf_minus_extended", "baseline_sdss_psf_minus_cmodel",
              "baseline_sdss_psf_minus_cmodel_significance")


def index_ceilings(measurements: dict, is_galaxy, mag_bins, seed: int = 0) -> dict:
  """The hand-feature ceiling: both models on the classical indices and the r magnitude together."""
  features = np.stack([measurements[k] for k in INDEX_KEYS] + [measurements["r_mag"]], axis=1)
  return ceiling_pair(features, is_galaxy, measurements["r_mag"], mag_bins, seed)


def data_index_ceilings(config) -> dict:
  """`index_ceilings` of the labelled set named by `config.data` (its measurements cached)."""
  labelled = inputs_lib.load_inputs(config.data, seed=config.seed).labelled
  measurements = scoring.image_measurements(labelled)  # cached beside the store by the run that scored it
  is_galaxy = np.asarray(labelled.index["label"]) == CLASS_CODES["GALAXY"]
  return index_ceilings(measurements, is_galaxy, tuple(config.data.mag_bins), int(config.seed))
