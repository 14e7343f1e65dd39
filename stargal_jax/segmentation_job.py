"""Segmentation jobs behind `launch.py` (`JOBS`), and segmentation of real cutouts.

- `segmentation` (configs/segmentation.py): a plain and a residual conv AE are trained (MSE) on the
  unlabelled images, minus a held-back set on which their reconstruction MSE is compared. Hypercolumns
  (METHODS.md "Segmentation") of the chosen model's layers are clustered with k-means fitted on a
  random pixel sample of the unlabelled images; each cluster is object or background by its mean
  detection S/N on that sample (`segmentation.FOREGROUND_RULES`, no labels, no truth). Every labelled
  cutout is then segmented: `DIR/segmentation.npz` holds `objID` (N,) and `mask` (N, 64, 64) int16
  (0 background, 1 central object, 2, 3, ... neighbours by decreasing size). With simulator truth:
  scores against it (central IoU, object pixel IoU, neighbour completeness/purity by magnitude), the
  k sweep, and SEP tuned on the same cutouts. Writes `metrics.json`, `report.md`, `plots/`.
- `seg_cvae` (configs/seg_cvae.py): the same segmentation of both sets; the neighbours are replaced by
  noise (`segmentation.mask_neighbours`) in copies of both stores (`DIR/masked_stores/`); the cvae
  classification runs on the masked and on the original inputs; AUCs on all objects and on objects
  with neighbours.
- `segment_real_cutouts` and `python -m stargal_jax.segmentation_job WORKDIR [--out docs/images]`:
  figures of real SDSS frame cutouts and HSC scenes segmented by a finished `segmentation` run.

Hypercolumns are (N, 64, 64, C), C = 120 by default (2 MB per image in float32): they are never built
for a whole set; every pass computes them `chunk` images at a time and keeps only what it needs (the
k-means pixel sample, the cluster ids).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from matplotlib.figure import Figure

from stargal_jax import BANDS
from stargal_jax import inputs as inputs_lib
from stargal_jax import metrics, models, paths, pipelines, plots, report, train
from stargal_jax import segmentation as seg
from stargal_jax.data import formats
from stargal_jax.data import normalize as normalization
from stargal_jax.data import store as stores

Fetch = Callable[[np.ndarray], np.ndarray]
HypercolumnFn = Callable[[np.ndarray], np.ndarray]
MASK_DTYPE = np.int16  # labels 0 .. a few tens; int16 keeps a 240k-cutout mask file at 2 GB, not 4


# --------------------------------------------------------------------------- autoencoders

def autoencoder_stage(seg_config, model_name: str) -> ml_collections.ConfigDict:
  """The stage config `pipelines.train_stage` takes: `seg_config.ae` with the registry model named."""
  stage = ml_collections.ConfigDict(seg_config.ae.to_dict())
  stage.model = model_name
  return stage


def holdout_split(n: int, n_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train rows, held-back rows), both sorted: a random `n_holdout` of range(n) is held back."""
  if not 0 <= n_holdout < n:
    raise ValueError(f"cannot hold back {n_holdout} of {n} images")
  order = np.random.default_rng([seed, 1]).permutation(n)
  return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def train_autoencoder(seg_config, model_name: str, fetch: Fetch, rows: np.ndarray, key: jax.Array,
                      workdir: Path) -> train.TrainResult:
  """Trains (or resumes) registry model `model_name` with `seg_config.ae` on the images `rows`."""
  stage = autoencoder_stage(seg_config, model_name)
  return pipelines.train_stage(stage, lambda idx: fetch(rows[idx]), len(rows), key, workdir, model_name)


def reconstruction_error(result: train.TrainResult, fetch: Fetch, rows: np.ndarray,
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


# --------------------------------------------------------------------------- hypercolumns, chunked

@dataclasses.dataclass(frozen=True)
class DetectionChannel:
  """A matched-filtered detection S/N channel (`segmentation.detection_image` of the model inputs) appended to
  the hypercolumns, holding `share` of the k-means feature variance. Why: per-pixel AE features alone miss
  faint objects (central object found in 41% of cutouts at r >= 22 against 94% for SEP, whose detection is
  matched-filtered); the filtered S/N adds that sensitivity while the AE features keep shaping the clusters."""
  share: float  # in (0, 1): the detection channel's weight^2 / (weight^2 + number of hypercolumn channels)
  sigma_px: float = 1.2
  bands: str = "gri"

  @classmethod
  def from_config(cls, seg_config) -> "DetectionChannel | None":
    share = float(seg_config.get("detection_share", 0.0))
    if not 0.0 <= share < 1.0:
      raise ValueError(f"seg.detection_share must be in [0, 1), got {share}")
    return cls(share, float(seg_config.detection_sigma_px), seg_config.snr_bands) if share > 0 else None

  def weights(self, n_features: int) -> np.ndarray:
    """k-means feature weights: 1 for each hypercolumn channel, and for the last (detection) channel the
    weight that gives it `share` of the total variance of the standardised features."""
    weights = np.ones(n_features)
    weights[-1] = np.sqrt(self.share / (1.0 - self.share) * (n_features - 1))
    return weights


def make_hypercolumn_fn(result: train.TrainResult, layers: Sequence[int], size: int = 64,
                        detection: DetectionChannel | None = None) -> HypercolumnFn:
  """x (B, 64, 64, 5) normalised NHWC -> hypercolumns (B, size, size, C) float32 of feature maps
  `layers` (indices into the model's `return_features` list), jitted, in eval mode; with `detection`, its
  channel (computed from x on the host) is appended as channel C."""
  layers = tuple(int(i) for i in layers)

  @jax.jit
  def hypercolumns_of(params, model_state, x):
    outputs, _ = models.apply_model(result.graphdef, params, model_state, x, return_features=True)
    maps = outputs["features"]
    bad = [i for i in layers if not -len(maps) <= i < len(maps)]
    if bad:
      raise ValueError(f"hypercolumn layers {bad} out of range: the model has {len(maps)} feature maps "
                       f"of widths {[m.shape[-1] for m in maps]}")
    return models.hypercolumns([maps[i] for i in layers], size)

  features = lambda x: np.asarray(hypercolumns_of(result.params, result.model_state, x))
  if detection is None:
    return features
  return lambda x: np.concatenate(
      [features(x), seg.detection_image(np.transpose(x, (0, 3, 1, 2)), detection.bands, detection.sigma_px)[..., None]],
      axis=-1)


def iter_hypercolumns(hypercolumn_fn: HypercolumnFn, fetch: Fetch, n: int,
                      chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(indices, hypercolumns) for images 0..n-1, `chunk` at a time; the last chunk is padded to the
  chunk size so the forward pass compiles once (batch norm runs on stored averages: no mixing)."""
  chunk = max(1, min(chunk, n))
  for start in range(0, n, chunk):
    idx = np.arange(start, min(start + chunk, n))
    x = fetch(idx)
    if len(idx) < chunk:
      x = np.concatenate([x, np.repeat(x[-1:], chunk - len(idx), axis=0)])
    yield idx, hypercolumn_fn(x)[:len(idx)]


def sample_pixel_rows(n_pixels: int, sample_pixels: int, seed: int) -> np.ndarray:
  """Sorted flat pixel indices of the k-means sample: the very draw `segmentation.fit_pixel_kmeans`
  makes, so the chunked fit equals the unchunked one."""
  rng = np.random.default_rng(seed)
  if n_pixels <= sample_pixels:
    return np.arange(n_pixels)
  return np.sort(rng.choice(n_pixels, size=sample_pixels, replace=False))


@dataclasses.dataclass(frozen=True)
class PixelSample:
  features: np.ndarray  # (S, C) float32 hypercolumn vectors
  snr: np.ndarray       # (S,) detection S/N of the same pixels (segmentation.snr_image)
  rows: np.ndarray      # (S,) flat pixel indices over (N, H, W)


def gather_pixel_sample(chunks: Iterator[tuple[np.ndarray, np.ndarray]], read_raw: Fetch, n: int,
                        sample_pixels: int, seed: int, bands: str = "gri") -> PixelSample:
  """The k-means sample from a pass of `iter_hypercolumns`: only the sampled pixels are kept."""
  rows, features, snr = None, [], []
  for idx, hc in chunks:
    pixels_per_image = hc.shape[1] * hc.shape[2]
    if rows is None:
      rows = sample_pixel_rows(n * pixels_per_image, sample_pixels, seed)
    lo, hi = idx[0] * pixels_per_image, (idx[-1] + 1) * pixels_per_image
    local = rows[(rows >= lo) & (rows < hi)] - lo
    features.append(hc.reshape(-1, hc.shape[-1])[local])
    snr.append(seg.snr_image(read_raw(idx), bands).reshape(-1)[local])
  return PixelSample(np.concatenate(features), np.concatenate(snr), rows)


@dataclasses.dataclass(frozen=True)
class Segmenter:
  """A fitted pixel classifier: k-means on hypercolumns, and which clusters are objects."""
  kmeans: seg.PixelKMeans
  is_object: np.ndarray    # (k,) bool
  cluster_snr: np.ndarray  # (k,) mean detection S/N of each cluster's sampled pixels (NaN: empty)
  cluster_fraction: np.ndarray  # (k,) fraction of the sampled pixels in each cluster

  @property
  def k(self) -> int:
    return self.kmeans.k


def fit_segmenter(sample: PixelSample, k: int, seed: int = 0, algorithm: str = "kmeans",
                  rule: str = "snr_threshold", snr_threshold: float = 1.0,
                  weights: np.ndarray | None = None) -> Segmenter:
  """k-means on the sample; a cluster is object or background by `rule` on its sampled pixels' mean
  S/N (the sample is uniform over pixels, so this estimates the mean over all pixels)."""
  if rule not in seg.FOREGROUND_RULES:
    raise KeyError(f"unknown foreground rule {rule!r}; valid: {sorted(seg.FOREGROUND_RULES)}")
  as_image = sample.features[None, None]  # (1, 1, S, C): every row used, in order
  kmeans = seg.fit_pixel_kmeans(as_image, k, sample_pixels=len(sample.features), seed=seed,
                                algorithm=algorithm, weights=weights)
  ids = seg.assign_pixels(kmeans, as_image).ravel()
  cluster_snr = seg.cluster_mean_snr(ids, sample.snr, k)
  is_object = seg.FOREGROUND_RULES[rule](cluster_snr, snr_threshold)
  fraction = np.bincount(ids, minlength=k) / max(len(ids), 1)
  return Segmenter(kmeans, np.asarray(is_object, bool), cluster_snr, fraction)


def assign_clusters(segmenters: Mapping[int, Segmenter],
                    chunks: Iterator[tuple[np.ndarray, np.ndarray]], n: int) -> dict[int, np.ndarray]:
  """Cluster ids (N, H, W) int16 of every pixel under each segmenter, from one hypercolumn pass."""
  ids: dict[int, np.ndarray] = {}
  for idx, hc in chunks:
    for key, segmenter in segmenters.items():
      if key not in ids:
        ids[key] = np.empty((n,) + hc.shape[1:3], dtype=np.int16)
      ids[key][idx] = seg.assign_pixels(segmenter.kmeans, hc)
  return ids


@dataclasses.dataclass(frozen=True)
class LabelOptions:
  """Connected components -> mask labels (see `segmentation.label_objects`)."""
  min_area: int = 5
  connectivity: int = 8
  centre_radius: float = 5.0

  @classmethod
  def from_config(cls, seg_config) -> "LabelOptions":
    return cls(int(seg_config.min_area), int(seg_config.connectivity), float(seg_config.centre_radius))


def masks_from_clusters(segmenter: Segmenter, cluster_ids: np.ndarray, options: LabelOptions) -> np.ndarray:
  """(N, H, W) masks: object clusters -> foreground -> connected components, central = 1."""
  foreground = segmenter.is_object[cluster_ids]
  return seg.label_objects(foreground, options.min_area, options.connectivity,
                           options.centre_radius).astype(MASK_DTYPE)


def segment_set(segmenters: Mapping[int, Segmenter], hypercolumn_fn: HypercolumnFn, fetch: Fetch, n: int,
                chunk: int, options: LabelOptions) -> dict[int, np.ndarray]:
  """Masks of images 0..n-1 under every segmenter, from one chunked hypercolumn pass."""
  ids = assign_clusters(segmenters, iter_hypercolumns(hypercolumn_fn, fetch, n, chunk), n)
  return {key: masks_from_clusters(segmenters[key], ids[key], options) for key in segmenters}


@dataclasses.dataclass(frozen=True)
class FittedSegmentation:
  """Everything needed to segment new cutouts: the trained AE, its layers, the normaliser, the fit."""
  result: train.TrainResult
  layers: tuple[int, ...]
  normalizer: dict
  segmenters: dict[int, Segmenter]
  hypercolumn_fn: HypercolumnFn


def fit_segmentation(result: train.TrainResult, seg_config, normalizer: dict, unlabelled,
                     ks: Sequence[int], seed: int) -> FittedSegmentation:
  """Hypercolumn k-means for every k in `ks`, fitted on a pixel sample of (a subset of) `unlabelled`."""
  n_fit = len(unlabelled) if not seg_config.fit_images else min(int(seg_config.fit_images), len(unlabelled))
  rows = np.sort(np.random.default_rng([seed, 2]).permutation(len(unlabelled))[:n_fit])
  fit_store = unlabelled.subset(rows)
  fetch = inputs_lib.model_images(fit_store, normalizer)
  detection = DetectionChannel.from_config(seg_config)
  hypercolumn_fn = make_hypercolumn_fn(result, seg_config.hypercolumn_layers, detection=detection)
  chunks = iter_hypercolumns(hypercolumn_fn, fetch, n_fit, int(seg_config.chunk))
  sample = gather_pixel_sample(chunks, fit_store.read, n_fit, int(seg_config.sample_pixels), seed,
                               seg_config.snr_bands)
  weights = detection.weights(sample.features.shape[1]) if detection else None
  segmenters = {int(k): fit_segmenter(sample, int(k), seed, seg_config.kmeans_algorithm, seg_config.rule,
                                      float(seg_config.snr_threshold), weights)
                for k in sorted(set(int(k) for k in ks))}
  return FittedSegmentation(result, tuple(int(i) for i in seg_config.hypercolumn_layers), normalizer,
                            segmenters, hypercolumn_fn)


def model_inputs(images: np.ndarray, normalizer: dict) -> np.ndarray:
  """Raw (N, 5, H, W) nanomaggies -> normalised NHWC float32; non-finite pixels as 0 (nan_policy 'zero')."""
  clean = np.nan_to_num(np.asarray(images, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
  x = normalization.normalize(normalizer, clean)
  return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)), dtype=np.float32)


def subtract_sky(images: np.ndarray) -> np.ndarray:
  """Images minus their robust per-cutout, per-band background level (`segmentation.robust_background`:
  clipped median with sources excluded). Real frames keep sky residuals of up to ~2 sigma in crowded
  fields; the training cutouts have none."""
  level, _ = seg.robust_background(np.asarray(images, np.float64))
  return (images - np.nan_to_num(level)[:, :, None, None]).astype(np.float32)


def segment_real_cutouts(images: np.ndarray, fitted: FittedSegmentation, k: int,
                         options: LabelOptions = LabelOptions(), chunk: int = 64,
                         sky_subtract: bool = True) -> np.ndarray:
  """Masks (N, 64, 64) of raw ugriz cutouts (N, 5, 64, 64) in nanomaggies, by the fitted segmenter
  for `k` (its clusters' object/background calls come from the training sample, not these images).
  With `sky_subtract`, each cutout's residual background level is removed first (`subtract_sky`)."""
  x = model_inputs(subtract_sky(images) if sky_subtract else images, fitted.normalizer)
  return segment_set({k: fitted.segmenters[k]}, fitted.hypercolumn_fn, lambda idx: x[idx], len(x),
                     chunk, options)[k]


# --------------------------------------------------------------------------- scoring

def truth_neighbour_table(truth: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {f: np.asarray(truth[f]) for f in seg.NEIGHBOUR_FIELDS}


def central_found_fraction(masks: np.ndarray) -> float:
  """Fraction of cutouts with a central object (mask label 1), cf. the study's '38 of 40'."""
  return float((masks == 1).any(axis=(1, 2)).mean())


def summarize_scores(scores: Mapping, masks: np.ndarray) -> dict:
  """`segmentation.score_masks` output without its per-image arrays, plus the central-found fraction."""
  out = {k: v for k, v in scores.items() if not isinstance(v, np.ndarray)}
  out["central_found_fraction"] = central_found_fraction(masks)
  return out


def score_against_truth(masks: np.ndarray, truth: Mapping[str, np.ndarray], images: np.ndarray,
                        mag_bins: Sequence[float]) -> dict:
  central_mag = np.asarray(truth["mag"])[:, BANDS.index("r")] if "mag" in truth else None
  scores = seg.score_masks(masks, np.asarray(truth["mask"]), truth_neighbour_table(truth), mag_bins,
                           images=images, central_mag=central_mag)
  return summarize_scores(scores, masks)


def k_sweep_rows(masks_by_k: Mapping[int, np.ndarray], segmenters: Mapping[int, Segmenter],
                 truth: Mapping[str, np.ndarray] | None) -> list[dict]:
  """One row per k: object clusters, the fraction of sampled pixels they hold, and (with truth) scores."""
  rows = []
  for k in sorted(masks_by_k):
    s = segmenters[k]
    row = {"k": k, "n_object_clusters": int(s.is_object.sum()),
           "object_pixel_fraction_sample": float(s.cluster_fraction[s.is_object].sum()),
           "central_found_fraction": central_found_fraction(masks_by_k[k]),
           "pred_neighbours_per_cutout": float(masks_by_k[k].max(axis=(1, 2)).clip(1).mean() - 1)}
    if truth is not None:
      sc = seg.score_masks(masks_by_k[k], np.asarray(truth["mask"]), truth_neighbour_table(truth))
      row.update({"central_iou": sc["central_iou"], "object_iou": sc["object_iou_pooled"],
                  "neighbour_completeness": sc["neighbour_completeness"],
                  "neighbour_purity": sc["neighbour_purity"],
                  "false_object_pixels_fraction": sc["false_object_pixels_fraction"],
                  "missed_object_pixels_fraction": sc["missed_object_pixels_fraction"]})
    rows.append(row)
  return rows


def sep_kwargs(seg_config) -> dict:
  return dict(minarea=int(seg_config.sep_minarea), min_area=int(seg_config.min_area),
              centre_radius=float(seg_config.centre_radius))


# --------------------------------------------------------------------------- figures

MASK_COLOURS = np.array([[0, 0, 0], [255, 140, 0], [30, 144, 255], [50, 205, 50], [220, 20, 60],
                         [186, 85, 211], [255, 215, 0], [0, 206, 209]], dtype=np.float64)


def mask_overlay(image: np.ndarray, mask: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
  """(H, W, 3) uint8: the gri composite of one (5, H, W) cutout, tinted by the mask labels
  (central orange; neighbours blue, green, red, ... cycling) with their outlines at full colour."""
  rgb = plots.gri_composite(image).astype(np.float64)
  if mask is None:
    return rgb.astype(np.uint8)
  mask = np.asarray(mask)
  colour_index = np.where(mask > 0, (mask - 1) % (len(MASK_COLOURS) - 1) + 1, 0)
  tint = MASK_COLOURS[colour_index]
  inside = mask > 0
  rgb[inside] = (1 - alpha) * rgb[inside] + alpha * tint[inside]
  boundary = np.zeros_like(inside)
  for axis in (0, 1):  # a pixel whose label differs from its neighbour's along an axis lies on an edge
    diff = np.diff(mask, axis=axis) != 0
    pad = [(0, 0), (0, 0)]
    pad[axis] = (0, 1)
    boundary |= np.pad(diff, pad)
    pad[axis] = (1, 0)
    boundary |= np.pad(diff, pad)
  boundary &= inside
  rgb[boundary] = tint[boundary]
  return np.clip(rgb, 0, 255).astype(np.uint8)


def plot_segmentations(images: np.ndarray, columns: Mapping[str, np.ndarray | None], path,
                       titles: Sequence[str] | None = None, panel_inches: float = 1.35,
                       dpi: int = 100, cutouts_as_columns: bool = False) -> Path:
  """A grid of the gri composite of each cutout and one overlay per mask set (`columns`: name ->
  (N, H, W) masks, or None for an empty panel); one row per cutout, or one column with
  `cutouts_as_columns`."""
  names = ["image", *columns]
  n = len(images)
  shape = (len(names), n) if cutouts_as_columns else (n, len(names))
  figure = Figure(figsize=(panel_inches * shape[1] + 0.3, panel_inches * shape[0] + 0.3))
  axes = figure.subplots(*shape, squeeze=False)
  for i in range(n):
    for j, name in enumerate(names):
      ax = axes[j, i] if cutouts_as_columns else axes[i, j]
      ax.set_xticks([])
      ax.set_yticks([])
      mask = None if name == "image" else columns[name]
      if name != "image" and mask is None:
        ax.set_axis_off()
        continue
      ax.imshow(mask_overlay(images[i], None if mask is None else mask[i]), origin="lower",
                interpolation="nearest")
      if cutouts_as_columns:
        if i == 0:
          ax.set_ylabel(name, fontsize=8)
        if j == 0 and titles is not None:
          ax.set_title(titles[i], fontsize=6)
      else:
        if i == 0:
          ax.set_title(name, fontsize=8)
        if j == 0 and titles is not None:
          ax.set_ylabel(titles[i], fontsize=6)
  figure.subplots_adjust(wspace=0.03, hspace=0.05 if not cutouts_as_columns else 0.12, left=0.04,
                         right=0.99, top=0.95 if cutouts_as_columns else 0.97, bottom=0.01)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=dpi, pil_kwargs={"optimize": True})
  return path


def pick_examples(truth: Mapping[str, np.ndarray] | None, masks: np.ndarray, count: int, seed: int) -> np.ndarray:
  """Cutouts to show: half with neighbours (truth when known, else predicted), half at random."""
  rng = np.random.default_rng([seed, 3])
  has_nb = (np.asarray(truth["n_neighbours"]) > 0) if truth is not None else (masks >= 2).any(axis=(1, 2))
  crowded = np.flatnonzero(has_nb)
  first = rng.choice(crowded, size=min(count // 2, len(crowded)), replace=False)
  rest = np.setdiff1d(np.arange(len(masks)), first)
  second = rng.choice(rest, size=min(count - len(first), len(rest)), replace=False)
  return np.sort(np.concatenate([first, second]))


# --------------------------------------------------------------------------- report

def _cell(value) -> str:
  if isinstance(value, str):
    return value
  return report.format_number(value, 3)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[tuple[str, str]]) -> list[str]:
  """Rows of dicts -> markdown lines; `columns` are (key, header) pairs; missing values print n/a."""
  lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
  return lines + ["| " + " | ".join(_cell(r.get(k)) for k, _ in columns) + " |" for r in rows]


SCORE_COLUMNS = (("name", "segmentation"), ("central_iou", "central IoU"),
                 ("central_found_fraction", "central found"), ("object_iou_pooled", "object IoU (pooled)"),
                 ("object_iou_mean", "object IoU (per image)"), ("neighbour_completeness", "nb completeness"),
                 ("neighbour_purity", "nb purity"), ("n_true_neighbours", "true nb"),
                 ("n_pred_neighbours", "pred nb"),
                 ("false_object_pixels_fraction", "bg pixels called object"),
                 ("missed_object_pixels_fraction", "object pixels missed"))
SWEEP_COLUMNS = (("k", "k"), ("n_object_clusters", "object clusters"),
                 ("object_pixel_fraction_sample", "object pixel fraction"),
                 ("central_found_fraction", "central found"), ("pred_neighbours_per_cutout", "pred nb / cutout"),
                 ("central_iou", "central IoU"), ("object_iou", "object IoU"),
                 ("neighbour_completeness", "nb completeness"), ("neighbour_purity", "nb purity"),
                 ("false_object_pixels_fraction", "bg called object"),
                 ("missed_object_pixels_fraction", "object missed"))
SEP_COLUMNS = (("band", "detection band(s)"), ("thresh_sigma", "threshold (sigma)"),
               ("central_iou", "central IoU"), ("object_iou", "object IoU"),
               ("neighbour_completeness", "nb completeness"), ("neighbour_purity", "nb purity"),
               ("false_object_pixels_fraction", "bg called object"))


def _mag_bin_label(lo, hi) -> str:
  """Bin edges as JSON leaves them (infinite edges become None)."""
  if lo is None or lo == -np.inf:
    return f"< {hi:g}"
  if hi is None or hi == np.inf:
    return f">= {lo:g}"
  return f"[{lo:g}, {hi:g})"


def _by_mag_rows(scores: Mapping[str, Mapping], key: str, rate: str) -> list[dict]:
  rows = []
  for name, s in scores.items():
    for b in s.get(key) or []:
      rows.append({"name": name, "bin": _mag_bin_label(b["mag_lo"], b["mag_hi"]), "n": b["n"], rate: b[rate]})
  return rows


def _detection_note(s: Mapping) -> str:
  share = s.get("detection_share") or 0.0
  return (f", the last a matched-filtered detection S/N (Gaussian sigma {s['detection_sigma_px']:g} px) holding "
          f"{share:g} of the feature variance" if share > 0 else "")


def segmentation_report_lines(out: Mapping) -> list[str]:
  lines = ["# stargal_jax: pixel-wise segmentation", ""]
  rec = out["reconstruction"]
  if rec:
    lines += ["## Reconstruction (held-back unlabelled images, normalised units)", ""]
    rows = [{"name": name, **r, **{f"mse_{b}": v for b, v in r["mse_per_band"].items()}}
            for name, r in rec["models"].items()]
    lines += markdown_table(rows, (("name", "model"), ("steps", "steps"), ("mse", "MSE per pixel"),
                                   ("unexplained_fraction", "unexplained fraction"),
                                   *((f"mse_{b}", f"MSE {b}") for b in "ugriz"), ("n_images", "images")))
    if rec.get("residual_over_plain_mse") is not None:
      lines += ["", f"Residual / plain MSE: {_cell(rec['residual_over_plain_mse'])}.", ""]
  s = out["segmentation"]
  lines += ["## Segmentation", "",
            f"Model `{s['model']}`, hypercolumn layers {s['hypercolumn_layers']} ({s['hypercolumn_channels']} "
            f"channels{_detection_note(s)}), k = {s['k']}, k-means on {s['sample_pixels']} pixels of {s['fit_images']} unlabelled "
            f"images; clusters with mean {s['snr_bands']} S/N > {s['snr_threshold']} are objects "
            f"(rule `{s['rule']}`). {s['n_objects']} labelled cutouts segmented.", ""]
  scores = out.get("scores") or {}
  if scores:
    lines += ["### Against the simulator's truth masks", ""]
    lines += markdown_table([{"name": n, **v} for n, v in scores.items()], SCORE_COLUMNS)
    sep_best = out["sep"]["best"]
    lines += ["", f"SEP: detection on the {sep_best['band']} S/N image, threshold {sep_best['thresh_sigma']:g} "
              "sigma (after its 3x3 filter), the best central IoU of the grid below, tuned on these very "
              "cutouts and their truth (an optimistic baseline).", ""]
    lines += ["### Central-object IoU by true r magnitude of the central object", ""]
    lines += markdown_table(_by_mag_rows(scores, "central_iou_by_mag", "central_iou"),
                            (("name", "segmentation"), ("bin", "r mag"), ("n", "n"), ("central_iou", "central IoU")))
    lines += ["", "### Neighbour completeness by true r magnitude", ""]
    lines += markdown_table(_by_mag_rows(scores, "completeness_by_mag", "completeness"),
                            (("name", "segmentation"), ("bin", "r mag"), ("n", "n"), ("completeness", "completeness")))
    lines += ["", "### Neighbour purity by measured r magnitude of the predicted component", ""]
    lines += markdown_table(_by_mag_rows(scores, "purity_by_mag", "purity"),
                            (("name", "segmentation"), ("bin", "r mag"), ("n", "n"), ("purity", "purity")))
    lines += ["", "### SEP tuning grid", ""] + markdown_table(out["sep"]["grid"], SEP_COLUMNS)
  lines += ["", "## k sweep", ""] + markdown_table(out["k_sweep"], SWEEP_COLUMNS)
  targets = out.get("targets") or {}
  if targets:
    lines += ["", "## Targets", ""] + [f"- {k}: {v}" for k, v in targets.items()]
  lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in out.get("plots", [])]
  return lines + [""]


# --------------------------------------------------------------------------- the segmentation job

def _subset_truth(truth: Mapping[str, np.ndarray], n: int) -> dict:
  """The truth of the first n labelled objects (per-object arrays and the neighbour table)."""
  keep = np.asarray(truth["nb_object"]) < n
  return {k: (np.asarray(v)[keep] if k.startswith("nb_") else np.asarray(v)[:n]) for k, v in truth.items()}


def run_segmentation(config, workdir: str | Path) -> dict:
  """The `segmentation` job: see the module docstring. Returns the metrics written to metrics.json."""
  t0 = time.perf_counter()
  workdir = Path(workdir)
  sc = config.seg
  inputs = inputs_lib.load_inputs(config.data, seed=config.seed)
  normalization.save_normalizer(workdir / "normalizer.json", inputs.normalizer)
  print(f"[segmentation] {inputs.source}: {len(inputs.unlabelled)} unlabelled, {len(inputs.labelled)} "
        f"labelled", flush=True)
  fetch_u = inputs_lib.model_images(inputs.unlabelled, inputs.normalizer)
  train_rows, held_rows = holdout_split(len(inputs.unlabelled), int(sc.holdout_images), config.seed)
  key = jax.random.key(config.seed)
  results, recon = {}, {}
  for j, name in enumerate(dict.fromkeys([*sc.compare_models, sc.model])):
    results[name] = train_autoencoder(sc, name, fetch_u, train_rows, jax.random.fold_in(key, j), workdir)
    if len(held_rows):
      recon[name] = dict(reconstruction_error(results[name], fetch_u, held_rows, config.eval.eval_batch_size),
                         steps=int(sc.ae.train.steps))
      print(f"[segmentation] {name}: held-back MSE {recon[name]['mse']:.4f}", flush=True)
  reconstruction = {"models": recon}
  if "conv_ae" in recon and "residual_conv_ae" in recon:
    reconstruction["residual_over_plain_mse"] = recon["residual_conv_ae"]["mse"] / recon["conv_ae"]["mse"]

  ks = sorted({int(sc.k), *(int(k) for k in sc.ks)})
  fitted = fit_segmentation(results[sc.model], sc, inputs.normalizer, inputs.unlabelled, ks, config.seed)
  _progress(f"k-means fitted for k in {ks}", t0)
  options = LabelOptions.from_config(sc)
  fetch_l = inputs_lib.model_images(inputs.labelled, inputs.normalizer)
  masks_by_k = segment_set(fitted.segmenters, fitted.hypercolumn_fn, fetch_l, len(inputs.labelled),
                           int(sc.chunk), options)
  _progress(f"{len(inputs.labelled)} labelled cutouts segmented", t0)
  masks = masks_by_k[int(sc.k)]
  np.savez_compressed(workdir / "segmentation.npz", objID=np.asarray(inputs.labelled.index["objID"]), mask=masks)
  save_segmenter(workdir / "segmenter.npz", fitted)
  channels = int(fitted.segmenters[int(sc.k)].kmeans.centres.shape[1])
  out = {"pipeline": config.pipeline, "data_source": inputs.source, "reconstruction": reconstruction,
         "segmentation": {"model": sc.model, "hypercolumn_layers": list(fitted.layers),
                          "hypercolumn_channels": channels, "k": int(sc.k), "sample_pixels": int(sc.sample_pixels),
                          "fit_images": int(min(sc.fit_images or len(inputs.unlabelled), len(inputs.unlabelled))),
                          "rule": sc.rule, "snr_threshold": float(sc.snr_threshold), "snr_bands": sc.snr_bands,
                          "detection_share": float(sc.detection_share), "detection_sigma_px": float(sc.detection_sigma_px),
                          "n_objects": int(len(masks)), "central_found_fraction": central_found_fraction(masks),
                          "cluster_snr": fitted.segmenters[int(sc.k)].cluster_snr.tolist(),
                          "cluster_is_object": fitted.segmenters[int(sc.k)].is_object.tolist()}}
  truth = inputs.truth
  n_score = len(masks) if not sc.score_images else min(int(sc.score_images), len(masks))
  columns: dict[str, np.ndarray | None] = {f"ours (k={sc.k})": masks}
  if truth is not None:
    truth = _subset_truth(truth, n_score)
    images = inputs.labelled.read(np.arange(n_score))
    mag_bins = tuple(sc.mag_bins)
    best, grid = seg.tune_sep(images, truth["mask"], tuple(sc.sep_bands), tuple(sc.sep_thresholds),
                              truth_neighbour_table(truth), **sep_kwargs(sc))
    sep_masks = seg.sep_segment(images, best["band"], best["thresh_sigma"], **sep_kwargs(sc)).astype(MASK_DTYPE)
    _progress(f"SEP tuned over {len(grid)} settings: best {best['band']}, {best['thresh_sigma']:g} sigma", t0)
    out["scores"] = {f"ours (k={sc.k})": score_against_truth(masks[:n_score], truth, images, mag_bins),
                     f"SEP ({best['band']}, {best['thresh_sigma']:g} sigma)":
                       score_against_truth(sep_masks, truth, images, mag_bins)}
    out["sep"] = {"best": best, "grid": grid, "note": "tuned on the scored cutouts' truth: optimistic"}
    ours, sep_score = out["scores"].values()
    out["targets"] = {"central_iou_at_least_tuned_sep": bool(ours["central_iou"] >= sep_score["central_iou"])}
    columns = {f"ours (k={sc.k})": masks[:n_score], "truth": truth["mask"], "SEP (tuned)": sep_masks}
  if len(recon) == 2 and "residual_over_plain_mse" in reconstruction:
    out.setdefault("targets", {})["residual_reconstructs_better"] = bool(reconstruction["residual_over_plain_mse"] < 1)
  out["k_sweep"] = k_sweep_rows({k: m[:n_score] for k, m in masks_by_k.items()}, fitted.segmenters, truth)
  _progress("scored", t0)
  out["plots"] = write_overlay_plots(workdir, inputs.labelled, columns, truth, int(sc.n_plot), config.seed)
  out["wall_seconds"] = time.perf_counter() - t0
  (workdir / "metrics.json").write_text(json.dumps(metrics.to_json_safe(out), indent=2))
  (workdir / "report.md").write_text("\n".join(segmentation_report_lines(metrics.to_json_safe(out)) +
                                               ["## Config", "", "```", config.to_json_best_effort(indent=2), "```", ""]))
  print_summary(out, workdir)
  return out


def _progress(what: str, t0: float) -> None:
  print(f"[segmentation] {what} ({time.perf_counter() - t0:.0f}s)", flush=True)


def write_overlay_plots(workdir: Path, labelled, columns: Mapping[str, np.ndarray | None],
                        truth: Mapping | None, count: int, seed: int) -> list[str]:
  """plots/segmentation_examples.png: cutouts with neighbours and at random, every mask set beside."""
  if count <= 0:
    return []
  first = next(iter(columns.values()))
  picked = pick_examples(truth, first, count, seed)
  images = labelled.read(picked)
  objids = np.asarray(labelled.index["objID"])[picked]
  path = plot_segmentations(images, {k: (None if v is None else v[picked]) for k, v in columns.items()},
                            workdir / "plots" / "segmentation_examples.png", titles=[str(o) for o in objids])
  return [str(path.relative_to(workdir))]


def print_summary(out: Mapping, workdir: Path) -> None:
  rec = out["reconstruction"]
  parts = [f"{name} MSE {r['mse']:.4f}" for name, r in rec["models"].items()]
  for name, s in (out.get("scores") or {}).items():
    parts.append(f"{name}: central IoU {s['central_iou']:.3f}, nb completeness {s['neighbour_completeness']:.3f}, "
                 f"purity {s['neighbour_purity']:.3f}")
  print(f"[result] {' | '.join(parts)} | {out['wall_seconds']:.0f}s | {workdir}", flush=True)


# --------------------------------------------------------------------------- saving / loading the fit

def save_segmenter(path: Path, fitted: FittedSegmentation) -> None:
  """The k-means models and object calls of every k (the AE itself is in the run's checkpoints)."""
  arrays = {"layers": np.asarray(fitted.layers), "ks": np.asarray(sorted(fitted.segmenters))}
  for k, s in fitted.segmenters.items():
    arrays.update({f"k{k}_mean": s.kmeans.mean, f"k{k}_scale": s.kmeans.scale, f"k{k}_centres": s.kmeans.centres,
                   f"k{k}_inertia": np.asarray(s.kmeans.inertia), f"k{k}_is_object": s.is_object,
                   f"k{k}_cluster_snr": s.cluster_snr, f"k{k}_cluster_fraction": s.cluster_fraction})
  np.savez(path, **arrays)


def load_segmenters(path: Path) -> tuple[tuple[int, ...], dict[int, Segmenter]]:
  with np.load(path, allow_pickle=False) as f:
    layers = tuple(int(i) for i in f["layers"])
    segmenters = {}
    for k in (int(k) for k in f["ks"]):
      kmeans = seg.PixelKMeans(f[f"k{k}_mean"], f[f"k{k}_scale"], f[f"k{k}_centres"], float(f[f"k{k}_inertia"]))
      segmenters[k] = Segmenter(kmeans, f[f"k{k}_is_object"], f[f"k{k}_cluster_snr"], f[f"k{k}_cluster_fraction"])
  return layers, segmenters


def load_fitted_segmentation(workdir: str | Path) -> tuple[FittedSegmentation, ml_collections.ConfigDict]:
  """The segmenter of a finished `segmentation` (or `seg_cvae`) run: its config, normaliser, k-means fits
  and the AE restored from its final checkpoint (training resumes at its last step: nothing is trained)."""
  workdir = Path(workdir)
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  normalizer = normalization.load_normalizer(workdir / "normalizer.json")
  layers, segmenters = load_segmenters(workdir / "segmenter.npz")
  sc = config.seg
  stage = autoencoder_stage(sc, sc.model)
  steps = int(stage.train.steps)
  if ocp.CheckpointManager((workdir / "checkpoints" / sc.model).absolute()).latest_step() != steps:
    raise FileNotFoundError(f"{workdir}/checkpoints/{sc.model} holds no finished run of {steps} steps")
  batch = int(stage.train.batch_size)
  dummy = lambda idx: np.zeros((len(idx), 64, 64, 5), np.float32)
  result = pipelines.train_stage(stage, dummy, batch, jax.random.key(0), workdir, sc.model)
  hypercolumn_fn = make_hypercolumn_fn(result, layers, detection=DetectionChannel.from_config(sc))
  return FittedSegmentation(result, layers, normalizer, segmenters, hypercolumn_fn), config


# --------------------------------------------------------------------------- seg_cvae

def write_masked_store(store, masks: np.ndarray, directory: Path, seed: int, dilate: int = 2,
                       chunk: int = 512) -> stores.Store:
  """A packed store (images.npy, index.npy, files.json, summary.json) of `store`'s images with the
  neighbours of `masks` replaced by noise (`segmentation.mask_neighbours`), written `chunk` images at
  a time through the file (sequential writes keep the resident set small). Reused when complete."""
  directory = Path(directory)
  if (directory / "summary.json").is_file():
    masked = stores.load_store(directory)
    if len(masked) == len(store):
      return masked
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "summary.json").unlink(missing_ok=True)  # written last: marks a complete store
  n = len(store)
  path = directory / "images.npy"
  header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n,) + formats.IMAGE_SHAPE)
  offset = header.offset
  del header
  replaced = 0
  with open(path, "r+b") as out:
    out.seek(offset)
    for start in range(0, n, chunk):
      idx = np.arange(start, min(start + chunk, n))
      masked = seg.mask_neighbours(store.read(idx), masks[idx], seed=seed, dilate=dilate, index_offset=start)
      replaced += int(seg.neighbour_region(masks[idx], dilate).sum())
      out.write(memoryview(np.ascontiguousarray(masked, dtype=np.float32)))
  np.save(directory / "index.npy", np.asarray(store.index), allow_pickle=False)
  (directory / "files.json").write_text(json.dumps(list(store.files)))
  summary = {"format_version": stores.FORMAT_VERSION, "n_objects": n, "masked_from": str(store.root),
             "neighbour_dilate": dilate, "seed": seed, "replaced_pixels_per_band": replaced,
             "cutouts_with_neighbours": int((masks >= 2).any(axis=(1, 2)).sum())}
  (directory / "summary.json").write_text(json.dumps(summary, indent=1))
  return stores.load_store(directory)


def subset_aucs(labels: np.ndarray, score: np.ndarray, subsets: Mapping[str, np.ndarray]) -> dict:
  """AUC (galaxies positive, the run's label-free orientation) and max(AUC, 1 - AUC) per subset. A seed
  study's score (S, N) gives each seed's AUC (`auc_per_seed`) and their mean (`auc`) and std."""
  is_galaxy = formats.is_galaxy(labels)
  scores = np.atleast_2d(np.asarray(score))
  out = {}
  for name, sel in subsets.items():
    sel = np.asarray(sel, bool)
    both = sel.sum() > 0 and 0 < is_galaxy[sel].sum() < sel.sum()
    per_seed = np.array([metrics.roc_auc(is_galaxy[sel], s[sel]) if both else np.nan for s in scores])
    out[name] = {"n": int(sel.sum()), "auc": float(np.mean(per_seed)),
                 "auc_best_sign": float(np.mean(np.maximum(per_seed, 1 - per_seed)))}
    if len(scores) > 1:
      out[name].update(auc_per_seed=per_seed.tolist(), auc_std=float(np.std(per_seed, ddof=1)))
  return out


def masking_gain(aucs: Mapping[str, Mapping]) -> dict:
  """What masking does, seed by seed (masked and unmasked runs share seed indices): the AUC change on
  objects with neighbours, on those without, and their difference, which removes whatever changed for
  every object (a different stage-1 AE, other training noise) and leaves the effect of the masking."""
  def change(subset):
    m, u = aucs["masked"][subset], aucs["unmasked"][subset]
    return np.asarray(m.get("auc_per_seed", [m["auc"]])) - np.asarray(u.get("auc_per_seed", [u["auc"]]))
  with_nb, without_nb = change("with_neighbours"), change("without_neighbours")
  out = {}
  for name, values in (("with_neighbours", with_nb), ("without_neighbours", without_nb),
                       ("with_minus_without", with_nb - without_nb)):
    out[name] = {"mean": float(np.mean(values))}
    if len(values) > 1:
      out[name].update(std=float(np.std(values, ddof=1)), per_seed=values.tolist(),
                       seeds_positive=int(np.sum(values > 0)))
  return out


def _classifier_config(config) -> ml_collections.ConfigDict:
  classifier = ml_collections.ConfigDict(config.to_dict())
  classifier.pipeline = config.seg.classifier_pipeline
  return classifier


def run_seg_cvae(config, workdir: str | Path) -> dict:
  """The `seg_cvae` job: see the module docstring. Returns the metrics written to metrics.json."""
  from stargal_jax import experiment  # experiment imports this module to dispatch: import late
  t0 = time.perf_counter()
  workdir = Path(workdir)
  sc = config.seg
  inputs = inputs_lib.load_inputs(config.data, seed=config.seed)
  normalization.save_normalizer(workdir / "normalizer.json", inputs.normalizer)
  fetch_u = inputs_lib.model_images(inputs.unlabelled, inputs.normalizer)
  all_rows = np.arange(len(inputs.unlabelled))
  key = jax.random.fold_in(jax.random.key(config.seed), 1000)
  result = train_autoencoder(sc, sc.model, fetch_u, all_rows, key, workdir)
  k = int(sc.k)
  fitted = fit_segmentation(result, sc, inputs.normalizer, inputs.unlabelled, [k], config.seed)
  save_segmenter(workdir / "segmenter.npz", fitted)
  options = LabelOptions.from_config(sc)
  masks = {}
  for name, store in (("unlabelled", inputs.unlabelled), ("labelled", inputs.labelled)):
    fetch = inputs_lib.model_images(store, inputs.normalizer)
    masks[name] = segment_set(fitted.segmenters, fitted.hypercolumn_fn, fetch, len(store), int(sc.chunk), options)[k]
    _progress(f"{len(store)} {name} cutouts segmented", t0)
  np.savez_compressed(workdir / "segmentation.npz", objID=np.asarray(inputs.labelled.index["objID"]),
                      mask=masks["labelled"])
  np.savez_compressed(workdir / "segmentation_unlabelled.npz", mask=masks["unlabelled"])
  masked_dir = workdir / "masked_stores"
  masked_inputs = dataclasses.replace(
      inputs, source=f"{inputs.source}, neighbours masked",
      unlabelled=write_masked_store(inputs.unlabelled, masks["unlabelled"], masked_dir / "unlabelled",
                                    config.seed, int(sc.mask_dilate)),
      labelled=write_masked_store(inputs.labelled, masks["labelled"], masked_dir / "labelled",
                                  config.seed + 1, int(sc.mask_dilate)))
  _progress("masked stores written", t0)
  classifier = _classifier_config(config)
  runs = {"masked": experiment.classify(classifier, masked_inputs, workdir / "masked"),
          "unmasked": experiment.classify(classifier, inputs, workdir / "unmasked")}
  predicted_nb = (masks["labelled"] >= 2).any(axis=(1, 2))
  subsets = {"all": np.ones(len(inputs.labelled), bool), "with_predicted_neighbours": predicted_nb,
             "without_predicted_neighbours": ~predicted_nb}
  if inputs.truth is not None:
    true_nb = np.asarray(inputs.truth["n_neighbours"]) > 0
    subsets.update(with_neighbours=true_nb, without_neighbours=~true_nb)
  else:
    # No truth: the segmentation's neighbours stand in.
    subsets.update(with_neighbours=predicted_nb, without_neighbours=~predicted_nb)
  labels = np.asarray(inputs.labelled.index["label"])
  aucs = {}
  for name in runs:
    with np.load(workdir / name / "predictions.npz", allow_pickle=False) as f:
      aucs[name] = subset_aucs(labels, f["score"], subsets)
  gain = aucs["masked"]["with_neighbours"]["auc"] - aucs["unmasked"]["with_neighbours"]["auc"]
  gains = masking_gain(aucs)
  out = {"pipeline": config.pipeline, "classifier_pipeline": sc.classifier_pipeline, "data_source": inputs.source,
         "neighbours_from": "truth n_neighbours > 0" if inputs.truth is not None else "segmentation",
         "auc_masked": runs["masked"]["auc"], "auc_unmasked": runs["unmasked"]["auc"],
         "auc_with_neighbours_masked": aucs["masked"]["with_neighbours"]["auc"],
         "auc_with_neighbours_unmasked": aucs["unmasked"]["with_neighbours"]["auc"],
         "auc_gain_with_neighbours": gain, "gain": gains, "num_seeds": int(config.num_seeds), "subsets": aucs,
         "segmentation": {"model": sc.model, "k": k, "hypercolumn_layers": list(fitted.layers),
                          "central_found_fraction": central_found_fraction(masks["labelled"]),
                          "labelled_with_predicted_neighbours": int(predicted_nb.sum()),
                          "unlabelled_with_predicted_neighbours":
                            int((masks["unlabelled"] >= 2).any(axis=(1, 2)).sum())},
         "targets": {"masking_raises_auc_with_neighbours": bool(gain > 0),
                     "raises_it_more_than_for_objects_without": bool(gains["with_minus_without"]["mean"] > 0)},
         "wall_seconds": time.perf_counter() - t0}
  if inputs.truth is not None:
    out["segmentation"]["scores"] = score_against_truth(masks["labelled"], inputs.truth,
                                                        inputs.labelled.read(np.arange(len(inputs.labelled))),
                                                        tuple(sc.mag_bins))
  picked = pick_examples(inputs.truth, masks["labelled"], int(sc.n_plot), config.seed)
  if len(picked):
    plot_segmentations(inputs.labelled.read(picked), {"ours": masks["labelled"][picked]},
                       workdir / "plots" / "segmentation_examples.png")
    plot_masked_examples(inputs.labelled.read(picked), masked_inputs.labelled.read(picked),
                         masks["labelled"][picked], workdir / "plots" / "masked_examples.png")
  (workdir / "metrics.json").write_text(json.dumps(metrics.to_json_safe(out), indent=2))
  (workdir / "report.md").write_text("\n".join(seg_cvae_report_lines(metrics.to_json_safe(out)) +
                                               ["## Config", "", "```", config.to_json_best_effort(indent=2), "```", ""]))
  print(f"[result] AUC masked {out['auc_masked']:.4f} unmasked {out['auc_unmasked']:.4f} | with neighbours "
        f"masked {out['auc_with_neighbours_masked']:.4f} unmasked {out['auc_with_neighbours_unmasked']:.4f} "
        f"| gain with - without neighbours {gains['with_minus_without']['mean']:+.4f} "
        f"| {out['wall_seconds']:.0f}s | {workdir}", flush=True)
  return out


def plot_masked_examples(images: np.ndarray, masked: np.ndarray, masks: np.ndarray, path) -> Path:
  """Rows: cutouts; columns: image, segmentation overlay, the masked image the classifier sees."""
  n = len(images)
  figure = Figure(figsize=(1.35 * 3, 1.35 * n + 0.3))
  axes = figure.subplots(n, 3, squeeze=False)
  for i in range(n):
    for j, (title, panel) in enumerate((("image", mask_overlay(images[i], None)),
                                        ("segmentation", mask_overlay(images[i], masks[i])),
                                        ("neighbours masked", mask_overlay(masked[i], None)))):
      axes[i, j].imshow(panel, origin="lower", interpolation="nearest")
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
      if i == 0:
        axes[i, j].set_title(title, fontsize=8)
  figure.subplots_adjust(wspace=0.03, hspace=0.05, left=0.02, right=0.99, top=0.97, bottom=0.01)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=100, pil_kwargs={"optimize": True})
  return path


def seg_cvae_report_lines(out: Mapping) -> list[str]:
  lines = ["# stargal_jax: neighbours masked before the cvae classification", "",
           f"Classifier: `{out['classifier_pipeline']}` (configs/cvae.py settings), run twice: on copies of both "
           "sets with the segmentation's neighbours replaced by noise, and on the original sets. "
           f"'with neighbours' = {out['neighbours_from']}.", ""]
  rows = []
  for subset in out["subsets"]["masked"]:
    rows.append({"subset": subset, "n": out["subsets"]["masked"][subset]["n"],
                 "masked": out["subsets"]["masked"][subset]["auc"],
                 "unmasked": out["subsets"]["unmasked"][subset]["auc"],
                 "masked_bs": out["subsets"]["masked"][subset]["auc_best_sign"],
                 "unmasked_bs": out["subsets"]["unmasked"][subset]["auc_best_sign"]})
  lines += markdown_table(rows, (("subset", "objects"), ("n", "n"), ("masked", "AUC masked"),
                                 ("unmasked", "AUC unmasked"), ("masked_bs", "best-sign AUC masked"),
                                 ("unmasked_bs", "best-sign AUC unmasked")))
  seeds = out.get("num_seeds", 1)
  lines += ["", f"AUC change from masking ({seeds} seed{'s' if seeds > 1 else ''}; masked minus unmasked, seed by "
            "seed; 'with minus without' removes what changed for every object):", ""]
  lines += markdown_table([{"objects": k, **v} for k, v in out["gain"].items()],
                          (("objects", "objects"), ("mean", "mean change"), ("std", "std over seeds"),
                           ("seeds_positive", "seeds > 0")))
  s = out["segmentation"]
  lines += ["", f"Segmentation: `{s['model']}`, k = {s['k']}, layers {s['hypercolumn_layers']}; central object "
            f"found in {_cell(s['central_found_fraction'])} of the labelled cutouts; predicted neighbours in "
            f"{s['labelled_with_predicted_neighbours']} labelled and {s['unlabelled_with_predicted_neighbours']} "
            "unlabelled cutouts.", ""]
  if "scores" in s:
    lines += markdown_table([{"name": "ours", **s["scores"]}], SCORE_COLUMNS) + [""]
  lines += ["## Targets", ""] + [f"- {k}: {v}" for k, v in out["targets"].items()]
  lines += ["", "## Plots", "", "![examples](plots/segmentation_examples.png)",
            "![masked](plots/masked_examples.png)", "",
            "Per-run details (ROC, by magnitude, baselines): `masked/report.md`, `unmasked/report.md`.", ""]
  return lines


# --------------------------------------------------------------------------- real data: SDSS frames, HSC scenes

HSC_BANDS = ("g", "r", "i", "z", "y")
HSC_TO_MODEL_BANDS = ("g", "g", "r", "i", "z")  # model channel u, g, r, i, z <- HSC band; HSC has no u; y unused


def sdss_field_cutouts(field_dir: str | Path, count: int, seed: int = 0, neighbour_radius: float = 30.0,
                       r_mag_range: tuple[float, float] = (16.0, 21.5)) -> tuple[np.ndarray, list[str]]:
  """`count` 64x64 ugriz cutouts (nanomaggies, the project's centre convention) of SEP-detected r sources
  in `r_mag_range` (5 px aperture) that have another detection within `neighbour_radius` pixels (to show
  neighbours), picked at random; titled 'field r=..'. Cutouts with NaN pixels are skipped."""
  from stargal_jax import sdss_frames  # astropy WCS work: imported only for real-data figures
  field = sdss_frames.load_field(field_dir)
  sources = sdss_frames.detect_sources(field)
  xy = np.stack([sources["x"], sources["y"]], axis=1)
  r_mag = 22.5 - 2.5 * np.log10(np.clip(sources["flux"], 1e-6, None))
  distance = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
  np.fill_diagonal(distance, np.inf)
  eligible = np.flatnonzero((r_mag >= r_mag_range[0]) & (r_mag < r_mag_range[1]) &
                            (distance.min(axis=1) < neighbour_radius))
  rng = np.random.default_rng([seed, 4])
  order = rng.permutation(eligible)
  images, noise, meta = sdss_frames.cut_cutouts(field, xy[order[:4 * count]])
  keep = np.flatnonzero(meta["n_nan"] == 0)[:count]
  titles = [f"{field.name} r={r_mag[order[k]]:.1f}" for k in keep]
  return images[keep], titles


def hsc_scene_cutout(path: str | Path, band_sigma: Sequence[float], size: int = 64,
                     seed: int = 0) -> np.ndarray:
  """One HSC scarlet scene (grizy, native 0.168"/px pixels) as a (5, size, size) model input.

  Channel mapping (`HSC_TO_MODEL_BANDS`): u <- g (HSC has no u band; g is the nearest), g, r, i, z <- the
  same HSC bands, y unused. Each band is background-subtracted (robust median) and scaled so that its
  sky noise (robust 1.4826 MAD) equals `band_sigma` (the training set's sky sigma of that channel, in
  nanomaggies): every band keeps its own S/N, and the noise is what the AE saw in training. Objects
  appear about 2.4x larger than at SDSS's 0.396"/px. The scene is centre-cropped / padded to
  `size` x `size`; padded pixels are noise of the same sigma.
  """
  with np.load(path, allow_pickle=False) as f:
    scene = np.asarray(f["images"], np.float64)
    # One of the scarlet files carries no filter list; all of them are HSC grizy in that order.
    filters = [str(b) for b in f["filters"]] if "filters" in f.files else list(HSC_BANDS)
  bands = np.stack([scene[filters.index(b)] for b in HSC_TO_MODEL_BANDS])
  level, sigma = seg.robust_background(bands[None])
  scaled = (bands - level[0, :, None, None]) * (np.asarray(band_sigma) / sigma[0])[:, None, None]
  rng = np.random.default_rng([seed, 5])
  out = rng.standard_normal((5, size, size)) * np.asarray(band_sigma)[:, None, None]
  h, w = scaled.shape[1:]
  src_y, src_x = max((h - size) // 2, 0), max((w - size) // 2, 0)
  dst_y, dst_x = max((size - h) // 2, 0), max((size - w) // 2, 0)
  ch, cw = min(h, size), min(w, size)
  out[:, dst_y:dst_y + ch, dst_x:dst_x + cw] = scaled[:, src_y:src_y + ch, src_x:src_x + cw]
  return out.astype(np.float32)


def distinct_scenes(scene_paths: Sequence[Path]) -> list[Path]:
  """The scene files whose images differ from every earlier one (the scarlet set holds one scene twice)."""
  kept, seen = [], []
  for path in scene_paths:
    with np.load(path, allow_pickle=False) as f:
      images = np.asarray(f["images"])
    if not any(s.shape == images.shape and np.array_equal(s, images) for s in seen):
      kept.append(path)
      seen.append(images)
  return kept


def training_sky_sigma(normalizer: dict) -> np.ndarray:
  """Per-band sky sigma (nanomaggies) of the training images: the asinh normaliser's softening b is
  the 1.4826 MAD of the training pixels, i.e. the sky noise (nearly all pixels are sky)."""
  if normalizer.get("method") != "asinh":
    raise ValueError("the HSC noise matching needs the asinh normaliser's softening (method 'asinh')")
  return np.asarray(normalizer["softening"], np.float64)


def write_real_figures(workdir: str | Path, out_dir: str | Path, k: int | None = None, per_field: int = 4,
                       fields: Sequence[str] = ("001035-6-0017", "005405-6-0099"),
                       data_dir: str | Path | None = None) -> dict[str, Path]:
  """`segmentation_sdss.png` and `segmentation_hsc.png` in `out_dir`: real cutouts segmented by the
  finished run in `workdir` (its AE, k-means and object clusters, unchanged), beside SEP with the
  run's best-tuned detection band and threshold (gri, 1 sigma if the run had no truth to tune on)."""
  fitted, config = load_fitted_segmentation(workdir)
  k = int(config.seg.k if k is None else k)
  options = LabelOptions.from_config(config.seg)
  best = {"band": "gri", "thresh_sigma": 1.0}
  metrics_path = Path(workdir) / "metrics.json"
  if metrics_path.is_file():
    best.update(json.loads(metrics_path.read_text()).get("sep", {}).get("best", {}))
  data_dir = paths.shared_data_dir() if data_dir is None else Path(data_dir)
  out_dir = Path(out_dir)
  written = {}

  def figure(images, titles, name):
    ours = segment_real_cutouts(images, fitted, k, options)
    sep_masks = seg.sep_segment(images, best["band"], float(best["thresh_sigma"]), **sep_kwargs(config.seg))
    columns = {f"ours (k={k})": ours, f"SEP ({best['band']}, {float(best['thresh_sigma']):g} sigma)": sep_masks}
    written[name] = plot_segmentations(images, columns, out_dir / f"segmentation_{name}.png", titles,
                                       cutouts_as_columns=True, dpi=80)

  sdss = [sdss_field_cutouts(data_dir / "sdss_frames" / f, per_field) for f in fields]
  figure(np.concatenate([im for im, _ in sdss]), [t for _, ts in sdss for t in ts], "sdss")
  scenes = distinct_scenes(sorted((data_dir / "hsc_scarlet").glob("*.npz")))
  sigma = training_sky_sigma(fitted.normalizer)
  hsc = np.stack([hsc_scene_cutout(p, sigma) for p in scenes])
  figure(hsc, [p.stem.replace("hsc_", "HSC ") for p in scenes], "hsc")
  return written


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m stargal_jax.segmentation_job",
    description="Segment real SDSS frame cutouts and HSC scenes with a finished segmentation run.")
  parser.add_argument("workdir", help="a finished `launch.py --config=configs/segmentation.py` run")
  parser.add_argument("--out", default=str(paths.REPO_ROOT / "docs" / "images"), help="figure folder")
  parser.add_argument("--k", type=int, default=None, help="which k of the run (default: its config.seg.k)")
  args = parser.parse_args(argv)
  for name, path in write_real_figures(args.workdir, args.out, args.k).items():
    print(f"{name}: {path} ({path.stat().st_size // 1024} KB)")
  return 0


JOBS: dict[str, Callable] = {"segmentation": run_segmentation, "seg_cvae": run_seg_cvae}


if __name__ == "__main__":
  raise SystemExit(main())
