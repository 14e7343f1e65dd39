"""Label-free scores -> metrics beside the classical baselines, a supervised ceiling and (when asked) the supervised
CNN reference; a seed study's summary.

Labels are read here and only here (and in `outputs`, which writes them beside the latents), after training,
to score what the unsupervised method produced. The score itself comes from `scoring`, without labels.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from stargal_jax import metrics
from stargal_jax.classify import manifold, scoring, supervised_reference
from stargal_jax.data.formats import CLASS_CODES

# The per-seed numbers a seed study summarises (mean, std, min, max, 95% t-interval).
SEED_QUANTITIES = ("auc", "auc_best_sign", "accuracy", "galaxy_purity_at_96_completeness",
                   "star_completeness_at_97_purity")


def is_galaxy_of(labelled_store) -> np.ndarray:
  return np.asarray(labelled_store.index["label"]) == CLASS_CODES["GALAXY"]


def evaluate(latents: np.ndarray, scored: dict, labelled_store, measurements: dict, star_fraction: float,
             mag_bins, seed: int, supervised_ceiling: bool = True) -> dict:
  """One seed's evaluation: `scored` (from `scoring.score_latents`) against the labels, every classical
  baseline (from `measurements`) alike, and optionally the supervised ceiling on the latents."""
  is_galaxy = is_galaxy_of(labelled_store)
  result = {"method": metrics.classification_metrics(is_galaxy, scored["score"], star_fraction,
                                                       measurements["r_mag"], mag_bins),
            "orientation_sign": scored["orientation_sign"]}
  result["baselines"] = {
      name[len("baseline_"):]: metrics.classification_metrics(is_galaxy, values, star_fraction,
                                                               measurements["r_mag"], mag_bins)
      for name, values in measurements.items() if name.startswith("baseline_")}
  if supervised_ceiling:
    result["supervised_ceiling"] = manifold.supervised_ceiling(latents, is_galaxy, seed=seed)
  result.update(score=scored["score"], pred=scored["pred"], threshold=scored["threshold"])
  return result


def supervised_cnn(config, inputs, measurements: dict, workdir: Path) -> dict:
  """The supervised CNN reference (`supervised_reference`, k-fold out-of-fold logits on the labelled images and
  their labels), scored like every other row."""
  is_galaxy = is_galaxy_of(inputs.labelled)
  scores = supervised_reference.out_of_fold_scores(
      config.supervised_cnn, inputs.labelled, is_galaxy, inputs.normalizer, workdir,
      jax.random.fold_in(jax.random.key(config.seed), 12), int(config.eval.eval_batch_size))
  return metrics.classification_metrics(is_galaxy, scores, config.data.star_fraction, measurements["r_mag"],
                                        tuple(config.data.mag_bins))


def consensus_metrics(evaluations: list[dict], is_galaxy, star_fraction: float, r_mag, mag_bins) -> dict:
  """The study's consensus: every seed's label-free oriented score turned into ranks and averaged, then scored
  like one run. Answers "what does the whole study say", beside the per-seed spread."""
  ranks = scoring.consensus_score([e["score"] for e in evaluations])
  return metrics.classification_metrics(is_galaxy, ranks, star_fraction, r_mag, mag_bins)


def seed_study(evaluations: list[dict], labelled_store, measurements: dict, star_fraction: float,
               mag_bins) -> tuple[dict, dict]:
  """(numbers, over_seeds): every seed's numbers and their summary, the agreement between the seeds'
  labelings (mean pairwise adjusted Rand index), per-seed magnitude bins, and the consensus; `over_seeds`
  holds the `metrics.summarize_over_seeds` of each of `SEED_QUANTITIES` (the report's stability table)."""
  study, over_seeds = {}, {}
  for q in SEED_QUANTITIES:
    values = [e["method"][q] for e in evaluations]
    summary = metrics.summarize_over_seeds(values)
    over_seeds[q] = summary
    study[f"{q}_per_seed"] = values
    study.update({f"{q}_{k}": summary[k] for k in ("mean", "std", "min", "max")})
    study[f"{q}_ci95"] = [summary["ci95_low"], summary["ci95_high"]]
  study.update({q: over_seeds[q]["mean"] for q in ("auc", "auc_best_sign", "accuracy")})
  study["num_seeds"] = len(evaluations)
  study["seed_agreement_ari"] = metrics.seed_agreement([e["pred"] for e in evaluations])
  study["by_mag_per_seed"] = [e["method"]["by_mag"] for e in evaluations]
  study["consensus"] = consensus_metrics(evaluations, is_galaxy_of(labelled_store), star_fraction,
                                         measurements["r_mag"], mag_bins)
  return study, over_seeds
