"""The fitted segmentation model: the AE (trained, or restored from a run's checkpoints), its hypercolumn
layers, the normaliser and the k-means segmenters, and what segments a set of cutouts with it.

`fit_segmentation` fits it from a trained AE; `save_segmenter` / `load_fitted_segmentation` write it beside a
run and read it back (the AE through `stages.restore_stage`, from its final checkpoint).
"""

import dataclasses
import json
from pathlib import Path
from typing import Mapping, Sequence

import jax
import ml_collections
import numpy as np

from stargal_jax import inputs as inputs_lib
from stargal_jax import stages, train
from stargal_jax.data import normalize as normalization
from stargal_jax.segment import crowding, hypercolumns, labelling, pipeline, pixel_kmeans


def autoencoder_stage(seg_config, model_name: str) -> ml_collections.ConfigDict:
  """The stage config `stages.train_stage` takes: `seg_config.ae` with the registry model named."""
  stage = ml_collections.ConfigDict(seg_config.ae.to_dict())
  stage.model = model_name
  return stage


def holdout_split(n: int, n_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train rows, held-back rows), both sorted: a random `n_holdout` of range(n) is held back."""
  if not 0 <= n_holdout < n:
    raise ValueError(f"cannot hold back {n_holdout} of {n} images")
  order = np.random.default_rng([seed, 1]).permutation(n)
  return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def train_autoencoder(seg_config, model_name: str, fetch: hypercolumns.Fetch, rows: np.ndarray, key: jax.Array,
                      workdir: Path) -> train.TrainResult:
  """Trains (or resumes) registry model `model_name` with `seg_config.ae` on the images `rows`."""
  stage = autoencoder_stage(seg_config, model_name)
  return stages.train_stage(stage, lambda idx: fetch(rows[idx]), len(rows), key, workdir, model_name)


def reconstruction_error(result: train.TrainResult, fetch: hypercolumns.Fetch, rows: np.ndarray,
                         batch_size: int) -> dict:
  """Mean squared error per pixel (normalised units) of the reconstructions of images `rows` (a small
  held-back set, reconstructed in one call: one compilation), overall and per band, with the fraction
  of the images' own mean square it leaves unexplained."""
  batch_size = max(1, min(batch_size, len(rows)))
  recon = train.predict_in_batches(result, lambda idx: fetch(rows[idx]), len(rows), batch_size,
                                   keys=("recon",))["recon"]
  squared, power = np.zeros(5), np.zeros(5)
  for start in range(0, len(rows), batch_size):
    x = fetch(rows[start:start + batch_size]).astype(np.float64)
    squared += ((recon[start:start + batch_size] - x) ** 2).sum(axis=(0, 1, 2))
    power += (x ** 2).sum(axis=(0, 1, 2))
  per_band = squared / (len(rows) * recon.shape[1] * recon.shape[2])
  return {"mse": float(per_band.mean()), "mse_per_band": dict(zip("ugriz", per_band.tolist())),
          "unexplained_fraction": float(squared.sum() / power.sum()), "n_images": int(len(rows))}


@dataclasses.dataclass(frozen=True)
class FittedSegmentation:
  """Everything needed to segment new cutouts: the trained AE, its layers, the normaliser, the fit."""
  result: train.TrainResult
  layers: tuple[int, ...]
  normalizer: dict
  segmenters: dict[int, pixel_kmeans.Segmenter]
  hypercolumn_fn: hypercolumns.HypercolumnFn


def fit_rows(n: int, seg_config, seed: int) -> np.ndarray:
  """The unlabelled rows the k-means is fitted on: a random `seg_config.fit_images` of n (0 = all), sorted."""
  n_fit = n if not seg_config.fit_images else min(int(seg_config.fit_images), n)
  return np.sort(np.random.default_rng([seed, 2]).permutation(n)[:n_fit])


def fit_segmentation(result: train.TrainResult, seg_config, normalizer: dict, unlabelled,
                     ks: Sequence[int], seed: int) -> FittedSegmentation:
  """Hypercolumn k-means for every k in `ks`, fitted on a pixel sample of (a subset of) `unlabelled`."""
  rows = fit_rows(len(unlabelled), seg_config, seed)
  n_fit = len(rows)
  fit_store = unlabelled.subset(rows)
  fetch = inputs_lib.model_images(fit_store, normalizer)
  detection = hypercolumns.DetectionChannel.from_config(seg_config)
  hypercolumn_fn = hypercolumns.make_hypercolumn_fn(result, seg_config.hypercolumn_layers, detection=detection)
  chunks = hypercolumns.iter_hypercolumns(hypercolumn_fn, fetch, n_fit, int(seg_config.chunk))
  sample = hypercolumns.gather_pixel_sample(chunks, fit_store.read, n_fit, int(seg_config.sample_pixels), seed,
                               seg_config.snr_bands)
  weights = detection.weights(sample.features.shape[1]) if detection else None
  segmenters = {int(k): pixel_kmeans.fit_segmenter(sample, int(k), seed, seg_config.kmeans_algorithm, seg_config.rule,
                                      float(seg_config.snr_threshold), weights)
                for k in sorted(set(int(k) for k in ks))}
  n_flood = min(int(seg_config.get("flood_images", 0)), n_fit)
  if n_flood > 0:
    segmenters = with_flood_limits(segmenters, hypercolumn_fn, fetch, n_flood, int(seg_config.chunk),
                                   float(seg_config.flood_quantile))
  return FittedSegmentation(result, tuple(int(i) for i in seg_config.hypercolumn_layers), normalizer,
                            segmenters, hypercolumn_fn)


def add_flood_limits(fitted: FittedSegmentation, seg_config, unlabelled, seed: int) -> FittedSegmentation:
  """`fitted` (e.g. a run's segmenter saved before the crowded-field rule) with the flood limits
  `fit_segmentation` would have measured on the same fitting cutouts."""
  rows = fit_rows(len(unlabelled), seg_config, seed)[:int(seg_config.flood_images)]
  fetch = inputs_lib.model_images(unlabelled.subset(rows), fitted.normalizer)
  segmenters = with_flood_limits(fitted.segmenters, fitted.hypercolumn_fn, fetch, len(rows), int(seg_config.chunk),
                                 float(seg_config.flood_quantile))
  return dataclasses.replace(fitted, segmenters=segmenters)


def with_flood_limits(segmenters: Mapping[int, pixel_kmeans.Segmenter], hypercolumn_fn: hypercolumns.HypercolumnFn,
                      fetch: hypercolumns.Fetch, n: int, chunk: int, quantile: float) -> dict[int, pixel_kmeans.Segmenter]:
  """Each segmenter with its `flood_limit`: the `quantile` of the object-pixel fraction over the fitting cutouts
  0..n-1 (`crowding.flood_limit`; label-free, from what it calls object on the data it was fitted on)."""
  ids = pixel_kmeans.assign_clusters(segmenters, hypercolumns.iter_hypercolumns(hypercolumn_fn, fetch, n, chunk), n)
  return {k: dataclasses.replace(s, flood_limit=crowding.flood_limit(crowding.object_fraction(s.is_object[ids[k]]),
                                                                     quantile))
          for k, s in segmenters.items()}


def segment_set(segmenters: Mapping[int, pixel_kmeans.Segmenter], hypercolumn_fn: hypercolumns.HypercolumnFn,
                fetch: hypercolumns.Fetch, n: int,
                chunk: int, options: labelling.LabelOptions) -> dict[int, np.ndarray]:
  """Masks of images 0..n-1 under every segmenter, from one chunked hypercolumn pass."""
  ids = pixel_kmeans.assign_clusters(segmenters, hypercolumns.iter_hypercolumns(hypercolumn_fn, fetch, n, chunk), n)
  return {key: labelling.masks_from_clusters(segmenters[key], ids[key], options) for key in segmenters}


def segment_real_cutouts(images: np.ndarray, fitted: FittedSegmentation, k: int,
                         options: labelling.LabelOptions = labelling.LabelOptions(), chunk: int = 64,
                         sky_subtract: bool = True,
                         refinements: pipeline.Refinements = pipeline.Refinements()) -> np.ndarray:
  """Masks (N, 64, 64) of raw ugriz cutouts (N, 5, 64, 64) in nanomaggies, by the fitted segmenter
  for `k` (its clusters' object/background calls come from the training sample, not these images) and the
  `refinements` (`pipeline.refine`; none by default). With `sky_subtract`, each cutout's residual background
  level is removed first (`pixels.subtract_sky`)."""
  return pipeline.segment_images(fitted, k, images, options, refinements, chunk, sky_subtract)[0]


def save_segmenter(path: Path, fitted: FittedSegmentation) -> None:
  """The k-means models and object calls of every k (the AE itself is in the run's checkpoints)."""
  arrays = {"layers": np.asarray(fitted.layers), "ks": np.asarray(sorted(fitted.segmenters))}
  for k, s in fitted.segmenters.items():
    arrays.update({f"k{k}_mean": s.kmeans.mean, f"k{k}_scale": s.kmeans.scale, f"k{k}_centres": s.kmeans.centres,
                   f"k{k}_inertia": np.asarray(s.kmeans.inertia), f"k{k}_is_object": s.is_object,
                   f"k{k}_cluster_snr": s.cluster_snr, f"k{k}_cluster_fraction": s.cluster_fraction,
                   f"k{k}_flood_limit": np.asarray(s.flood_limit)})
  np.savez(path, **arrays)


def load_segmenters(path: Path) -> tuple[tuple[int, ...], dict[int, pixel_kmeans.Segmenter]]:
  with np.load(path, allow_pickle=False) as f:
    layers = tuple(int(i) for i in f["layers"])
    segmenters = {}
    for k in (int(k) for k in f["ks"]):
      kmeans = pixel_kmeans.PixelKMeans(f[f"k{k}_mean"], f[f"k{k}_scale"], f[f"k{k}_centres"],
                                        float(f[f"k{k}_inertia"]))
      # Segmenters saved before the crowded-field rule have no flood limit: never flooded.
      limit = float(f[f"k{k}_flood_limit"]) if f"k{k}_flood_limit" in f.files else 1.0
      segmenters[k] = pixel_kmeans.Segmenter(kmeans, f[f"k{k}_is_object"], f[f"k{k}_cluster_snr"],
                                             f[f"k{k}_cluster_fraction"], limit)
  return layers, segmenters


def load_fitted_segmentation(workdir: str | Path) -> tuple[FittedSegmentation, ml_collections.ConfigDict]:
  """The segmenter of a finished `segmentation` (or `seg_cvae`) run: its config, normaliser, k-means fits
  and the AE restored from its final checkpoint (`stages.restore_stage`; fails unless it finished)."""
  workdir = Path(workdir)
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  normalizer = normalization.load_normalizer(workdir / "normalizer.json")
  layers, segmenters = load_segmenters(workdir / "segmenter.npz")
  sc = config.seg
  result = stages.restore_stage(autoencoder_stage(sc, sc.model), workdir / "checkpoints" / sc.model)
  detection = hypercolumns.DetectionChannel.from_config(sc)
  hypercolumn_fn = hypercolumns.make_hypercolumn_fn(result, layers, detection=detection)
  return FittedSegmentation(result, layers, normalizer, segmenters, hypercolumn_fn), config
