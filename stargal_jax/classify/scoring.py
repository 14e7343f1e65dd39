"""The label-free score, written once: latents -> 1-D score -> orientation -> prior threshold.

Used by the evaluation of a run (`evaluate`) and by `predict` on new cutouts, so both score exactly alike.
No labels enter here: the score method is fitted on the latents themselves, its sign comes from an
extendedness measured on the images (`metrics.orient_score`), and point-like objects are the lowest
`star_fraction` of the score (the prior fraction, `metrics.prior_threshold_predictions`).

`SCORE_METHODS` maps `config.score.method` to `method(latents, score_config, seed, measurements) -> (N,)`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from stargal_jax import BANDS, metrics, morphology, registry
from stargal_jax.classify import manifold

ScoreMethod = Callable[[np.ndarray, Any, int, dict], np.ndarray]


def image_measurements(store, chunk: int = 2048) -> dict[str, np.ndarray]:
  """Label-free measurements on the raw images, chunked so that a full-size store is never read into memory at
  once: `r_mag` and `mag_<band>` (7.4" aperture magnitudes), `extendedness`, the classical baselines' scores
  (`baseline_<name>`) and the physical indices behind them, NaN where undefined (`index_<name>`, for catalogues)."""
  parts: dict[str, list[np.ndarray]] = {}
  for start in range(0, len(store), chunk):
    images = store.read(np.arange(start, min(start + chunk, len(store))))
    indices = morphology.classical_indices(images)
    baselines = morphology.baseline_scores_from_indices(indices)
    # extendedness is the psf_minus_extended baseline (the same function of the same images): not measured twice.
    values = {"r_mag": morphology.r_magnitude(images), "extendedness": baselines["psf_minus_extended"]}
    values.update({f"mag_{b}": morphology.r_magnitude(images, band=BANDS.index(b)) for b in BANDS if b != "r"})
    values.update({f"baseline_{k}": v for k, v in baselines.items()})
    values.update({f"index_{k}": v for k, v in indices.items()})
    for k, v in values.items():
      parts.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
  return {k: np.concatenate(v) for k, v in parts.items()}


def _latent_unit(latents, score_config, seed, measurements):
  """The study's rule: one latent unit's mean."""
  return np.asarray(latents[:, score_config.unit], dtype=np.float64)


def _uncorrelated_with_magnitude(latents, score_config, seed, measurements):
  """The latent direction uncorrelated with the r magnitude measured on the images."""
  return manifold.uncorrelated_with(latents, measurements["r_mag"], seed=seed)


def _embedding(method: str) -> ScoreMethod:
  def embed(latents, score_config, seed, measurements):
    return manifold.embed_1d(latents, method=method, n_neighbors=score_config.n_neighbors,
                             fit_size=score_config.fit_size, seed=seed)
  return embed


def _cluster_posterior(method: str) -> ScoreMethod:
  def cluster(latents, score_config, seed, measurements):
    return manifold.cluster_2(latents, method=method, seed=seed)[1]
  return cluster


SCORE_METHODS: dict[str, ScoreMethod] = {
    "latent_unit": _latent_unit,
    "uncorrelated_with_magnitude": _uncorrelated_with_magnitude,
    **{name: _embedding(name) for name in manifold.EMBEDDINGS},
    **{name: _cluster_posterior(name) for name in manifold.CLUSTERERS},
}


def raw_score(latents: np.ndarray, score_config, seed: int, measurements: dict) -> np.ndarray:
  """The 1-D score of `score_config.method` before orientation (`measurements` from `image_measurements`)."""
  method = registry.lookup(SCORE_METHODS, score_config.method, "score method")
  return method(latents, score_config, seed, measurements)


def orient_and_threshold(raw: np.ndarray, measurements: dict, star_fraction: float) -> dict[str, Any]:
  """A raw score oriented by the images' extendedness (larger = galaxy) and cut at the prior star fraction."""
  score, sign = metrics.orient_score(raw, measurements["extendedness"])
  return {"score": score, "pred": metrics.prior_threshold_predictions(score, star_fraction),
          "orientation_sign": int(sign), "threshold": float(np.quantile(score, star_fraction))}


def rank_quantile(score: np.ndarray) -> np.ndarray:
  """(N,) rank of each score within the set over N - 1: 0 the lowest (most point-like), 1 the highest."""
  score = np.asarray(score, dtype=np.float64)
  return np.argsort(np.argsort(score, kind="stable")) / max(len(score) - 1, 1)  # ties: in row order


def consensus_score(scores: np.ndarray) -> np.ndarray:
  """A seed study's consensus: every seed's oriented score (S, N) as rank quantiles, averaged over the seeds."""
  return np.mean([rank_quantile(s) for s in np.asarray(scores)], axis=0)


def score_latents(latents: np.ndarray, measurements: dict, config, seed: int) -> dict[str, Any]:
  """One seed's label-free `score`, `pred` (1 galaxy, 0 point-like), `orientation_sign` and `threshold` of (N, d)
  latents under `config.score` and `config.data.star_fraction`."""
  raw = raw_score(latents, config.score, seed=seed, measurements=measurements)
  return orient_and_threshold(raw, measurements, float(config.data.star_fraction))
