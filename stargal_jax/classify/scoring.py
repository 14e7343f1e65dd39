"""The label-free score, written once: latents -> 1-D score -> orientation -> prior threshold.

Used by the evaluation of a run (`evaluate`) and by `predict` on new cutouts, so both score exactly alike.
No labels enter here: the score method is fitted on the latents themselves, its sign comes from an
extendedness measured on the images (`metrics.orient_score`), and point-like objects are the lowest
`star_fraction` of the score (the prior fraction, `metrics.prior_threshold_predictions`).

`SCORE_METHODS` maps `config.score.method` to `method(latents, score_config, seed, measurements) -> (N,)`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from stargal_jax import BANDS, metrics, morphology, photometry, registry
from stargal_jax.classify import manifold

ScoreMethod = Callable[[np.ndarray, Any, int, dict], np.ndarray]


MEASUREMENTS_VERSION = 2  # bump when a measurement changes: older cached values are then not reused
PSF_BRIGHT_FRACTION = 0.3  # the PSF comes from the brightest 30% of the set (morphology.estimate_psf's rule)
PSF_MAX_OBJECTS = 2000  # of which at most this many, evenly spread in brightness: bounded memory


class SetPsf(NamedTuple):
  """The label-free PSF of a whole set (r band), estimated once: a property of the set, not of a chunk."""
  fwhm_px: float  # Gaussian matched-filter width (morphology.estimate_psf)
  aperture_correction_mag: float  # stellar locus offset of psf_minus_extended
  mixture: photometry.GaussianMixture  # the stacked stars' mixture of the model fits (photometry)


def _read_chunks(store, chunk: int):
  for start in range(0, len(store), chunk):
    yield start, store.read(np.arange(start, min(start + chunk, len(store))))


def bright_subset(store, chunk: int = 2048, bright_fraction: float = PSF_BRIGHT_FRACTION,
                  max_objects: int = PSF_MAX_OBJECTS) -> np.ndarray:
  """Sorted indices of the brightest `bright_fraction` of the set by r-band 5 px flux, thinned evenly in
  brightness order to `max_objects` (the selection `morphology.estimate_psf` makes within the images it gets)."""
  brightness = np.concatenate([morphology.aperture_flux(images, morphology.CONCENTRATION_RADII_PX[1])
                               for _, images in _read_chunks(store, chunk)]) if len(store) else np.zeros(0)
  order = np.argsort(-brightness, kind="stable")
  n_bright = max(int(round(bright_fraction * len(order))), min(len(order), 20))
  bright = order[:n_bright]
  return np.sort(bright[np.linspace(0, len(bright) - 1, min(len(bright), max_objects)).astype(np.int64)])


def estimate_set_psf(store, chunk: int = 2048) -> SetPsf:
  """The set's PSF from its bright objects, read once (at most PSF_MAX_OBJECTS images in memory): the
  matched-filter width and aperture correction (`morphology.estimate_psf`) and the stacked-star mixture
  (`photometry.estimate_psf_model`; a Gaussian of the width when too few stars qualify, with a warning)."""
  bright = np.asarray(store.read(bright_subset(store, chunk)))
  estimate = morphology.estimate_psf(bright, bright_fraction=1.0, max_objects=len(bright))
  try:
    mixture = photometry.estimate_psf_model(bright, morphology.R_BAND, bright_fraction=1.0,
                                            max_objects=len(bright)).mixture
  except ValueError as error:
    warnings.warn(f"{error}; using a Gaussian PSF", stacklevel=2)
    mixture = photometry.gaussian_psf_mixture(estimate.fwhm_px)
  return SetPsf(estimate.fwhm_px, estimate.aperture_correction_mag, mixture)


def _cache_path(store) -> Path | None:
  """Where a packed store's measurements are kept: beside its images (the store's own cache folder), per
  MEASUREMENTS_VERSION and subset of rows; None for sources that are not packed stores."""
  root, summary = getattr(store, "root", None), getattr(store, "summary", None)
  if root is None or not isinstance(summary, dict) or "fingerprint" not in summary or not Path(root).is_dir():
    return None
  rows = getattr(store, "rows", None)
  subset = "all" if rows is None else hashlib.sha256(np.asarray(rows, np.int64).tobytes()).hexdigest()[:12]
  return Path(root) / f"measurements-v{MEASUREMENTS_VERSION}-{subset}.npz"


def image_measurements(store, chunk: int = 2048, psf: SetPsf | None = None) -> dict[str, np.ndarray]:
  """Label-free measurements on the raw images (r magnitude, extendedness, classical baseline scores).

  The PSF (`estimate_set_psf`), the stellar locus of psfMag - cModelMag and the median that fills undefined
  values are properties of the set, estimated once over all of it; the pixels are read `chunk` cutouts at a
  time, so that a full-size store is never in memory at once. Keys: `r_mag` and `mag_<band>` (7.4" aperture
  magnitudes), `extendedness` (= baseline_psf_minus_extended), the classical baselines' scores (`baseline_<name>`,
  as `morphology.classical_baseline_scores`) and the physical indices behind them, NaN where undefined
  (`index_<name>`, as `morphology.classical_indices`, for catalogues).
  For a packed store (and the set's own PSF) the result is cached beside the store's images and reused: it
  depends on the pixels only, and every run on the same data measures the same."""
  cached = _cache_path(store) if psf is None else None
  if cached is not None and cached.is_file():
    with np.load(cached, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  values = _measure(store, chunk, psf if psf is not None else estimate_set_psf(store, chunk))
  if cached is not None:
    temporary = cached.with_name(f".{cached.name}.{os.getpid()}.tmp.npz")
    try:
      np.savez(temporary, **values)
      temporary.replace(cached)
    except OSError:  # a read-only cache: measured again next time
      temporary.unlink(missing_ok=True)
  return values


def _measure(store, chunk: int, psf: SetPsf) -> dict[str, np.ndarray]:
  raw: dict[str, list[np.ndarray]] = {"r_mag": [], "psf_minus_extended": [], "concentration_index": [],
                                      **{f"mag_{b}": [] for b in BANDS if b != "r"}}
  fits: list[photometry.ModelFits] = []
  for _, images in _read_chunks(store, chunk):
    raw["r_mag"].append(morphology.r_magnitude(images))
    for b in BANDS:
      if b != "r":
        raw[f"mag_{b}"].append(morphology.r_magnitude(images, band=BANDS.index(b)))
    raw["psf_minus_extended"].append(morphology.psf_minus_extended(
        images, morphology.R_BAND, psf.fwhm_px, psf.aperture_correction_mag))
    raw["concentration_index"].append(morphology.concentration_index(images))
    fits.append(photometry.fit_models(images, psf.mixture, morphology.R_BAND))
  values = {k: np.concatenate(v).astype(np.float64) if v else np.zeros(0) for k, v in raw.items()}
  fitted = photometry.ModelFits(*(np.concatenate(column) if fits else np.zeros(0) for column in zip(*fits)))
  difference = photometry.psf_minus_cmodel(fitted)
  # The stellar locus, like the PSF, is a property of the whole set (not of a chunk).
  with np.errstate(divide="ignore", invalid="ignore"):
    locus = photometry.stellar_locus(difference, fitted.cmodel_flux / fitted.psf_flux_err)
  indices = {"concentration_index": values["concentration_index"],
             "psf_minus_extended": values["psf_minus_extended"],
             "sdss_psf_minus_cmodel": np.asarray(difference, np.float64),
             "sdss_psf_minus_cmodel_significance": np.asarray(photometry.psf_cmodel_significance(fitted, *locus),
                                                              np.float64)}
  baselines = morphology.baseline_scores_from_indices(indices)
  # extendedness is the psf_minus_extended baseline (the same function of the same images): not measured twice.
  out = {"r_mag": values["r_mag"], "extendedness": baselines["psf_minus_extended"]}
  out.update({f"mag_{b}": values[f"mag_{b}"] for b in BANDS if b != "r"})
  out.update({f"baseline_{k}": v for k, v in baselines.items()})
  out.update({f"index_{k}": v for k, v in indices.items()})
  return out


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
  # Rounded to the float32 that predictions.npz and the catalogues hold, so every metric is that of the delivered
  # score (a GMM posterior's near-1 values differ below float32 precision and would tie only after saving).
  score = score.astype(np.float32).astype(np.float64)
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
