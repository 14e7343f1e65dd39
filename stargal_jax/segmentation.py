"""Pixel-wise segmentation: hypercolumn k-means -> masks, scoring, the SEP baseline, neighbour masking.

Pipeline (METHODS.md "Segmentation"): per-pixel feature vectors (hypercolumns, numpy `(N, H, W, C)`)
are standardised and clustered with k-means; each cluster is called object or background from its
mean signal-to-noise over all its pixels (no labels); connected components of the object pixels give
objects; the component at the cutout centre is the target (mask label 1), the others are neighbours
(labels 2, 3, ... by decreasing size), 0 is background.

Masks are integer `(N, H, W)`; images are `(N, 5, H, W)` ugriz nanomaggies with the target object
centred at the array centre ((H - 1) / 2, (W - 1) / 2), i.e. between pixels 31 and 32 for 64 x 64.

Everything here is numpy / scikit-learn / scipy.ndimage / sep, independent of the models' code.
"""

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import sep
from scipy import ndimage
from sklearn.cluster import KMeans, MiniBatchKMeans

BAND_INDEX = {"u": 0, "g": 1, "r": 2, "i": 3, "z": 4}
MAD_TO_SIGMA = 1.4826  # sigma of a Gaussian = 1.4826 x its median absolute deviation
ZERO_POINT_NMGY = 22.5  # m = 22.5 - 2.5 log10(flux in nanomaggies)
NEIGHBOUR_FIELDS = ("nb_object", "nb_label", "nb_mag_r", "nb_x", "nb_y")

# Square structure = 8-connectivity (diagonal neighbours join), cross = 4-connectivity.
CONNECTIVITY_STRUCTURES = {4: ndimage.generate_binary_structure(2, 1),
                           8: ndimage.generate_binary_structure(2, 2)}


def _lookup(registry: Mapping[Any, Any], name: Any, what: str) -> Any:
  if name not in registry:
    raise KeyError(f"unknown {what} {name!r}; valid: {sorted(registry, key=str)}")
  return registry[name]


@contextmanager
def _quiet_nan_warnings():
  """All-NaN slices are expected (masked-out images); their NaN result is the documented answer."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    yield


def band_indices(bands: str) -> list[int]:
  """'r' -> [2], 'gri' -> [1, 2, 3]; fails listing the valid band letters."""
  if not bands:
    raise ValueError(f"empty band selection; use letters from {list(BAND_INDEX)}")
  return [_lookup(BAND_INDEX, b, "band") for b in bands]


# --------------------------------------------------------------------------- background and S/N

def _clipped_level_sigma(x: np.ndarray, clip: float, n_iter: int) -> tuple[np.ndarray, np.ndarray]:
  """Median and 1.4826 x MAD over the last axis of x (NaN = unused), clipped at `clip` sigma."""
  x = x.copy()
  level = sigma = np.full(x.shape[:-1], np.nan)
  with np.errstate(all="ignore"), _quiet_nan_warnings():
    for _ in range(n_iter + 1):
      level = np.nanmedian(x, axis=-1)
      sigma = MAD_TO_SIGMA * np.nanmedian(np.abs(x - level[..., None]), axis=-1)
      far = np.abs(x - level[..., None]) > clip * sigma[..., None]
      x[far & (sigma[..., None] > 0)] = np.nan
  return level, sigma


def _source_pixels(images: np.ndarray, level: np.ndarray, sigma: np.ndarray, snr: float, box: int,
                   grow: int) -> np.ndarray:
  """(N, H, W) bool: where the box-smoothed S/N summed over usable bands exceeds `snr`, grown.

  A box x box mean of iid noise has sigma / box, so smoothing finds the faint wings that
  per-pixel clipping keeps; growing by `grow` pixels takes the wings just below the threshold.
  """
  with np.errstate(all="ignore"):
    z = (np.asarray(images, dtype=np.float64) - level[..., None, None]) / sigma[..., None, None]
  usable = np.isfinite(level) & (sigma > 0)
  z = np.where(usable[..., None, None] & np.isfinite(z), z, 0.0)
  smooth_snr = ndimage.uniform_filter(z, size=(1, 1, box, box), mode="nearest") * box
  detection = smooth_snr.sum(axis=1) / np.sqrt(np.maximum(usable.sum(axis=1), 1))[:, None, None]
  structure = np.ones((1, 2 * grow + 1, 2 * grow + 1), bool)
  return ndimage.binary_dilation(detection > snr, structure=structure) if grow > 0 else detection > snr


def _without(x: np.ndarray, drop: np.ndarray) -> np.ndarray:
  """x (N, B, P) with the pixels marked in drop (N, H, W) set to NaN."""
  x = x.copy()
  x[np.broadcast_to(drop.reshape(drop.shape[0], 1, -1), x.shape)] = np.nan
  return x


def robust_background(images: np.ndarray, exclude: np.ndarray | None = None, clip: float = 3.0,
                      n_iter: int = 3, source_rounds: int = 2, source_snr: float = 3.0,
                      source_box: int = 5, source_grow: int = 2, min_pixels: int = 64,
                      chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """Per-image, per-band background level and noise sigma: sigma-clipped median and 1.4826 x MAD.

  images (N, B, H, W); exclude (N, H, W) bool marks pixels not to use (e.g. known objects).
  Non-finite pixels are ignored. Returns (level, sigma), each (N, B); NaN where no pixel is usable.
  Clipping at `clip` sigma for `n_iter` rounds removes object cores; then `source_rounds` times,
  pixels of detected sources (box-smoothed S/N > `source_snr`, grown by `source_grow` px) are
  excluded and the estimate redone: on real SDSS cutouts of bright stars, whose wings cover most
  of the cutout, clipping alone overestimates sigma by up to 1.5x. An image left with fewer than
  `min_pixels` pixels keeps its previous estimate. Works `chunk` images at a time (float64 copies).
  """
  if images.shape[0] > chunk:
    parts = [robust_background(images[s:s + chunk], None if exclude is None else exclude[s:s + chunk],
                               clip, n_iter, source_rounds, source_snr, source_box, source_grow,
                               min_pixels, chunk) for s in range(0, images.shape[0], chunk)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
  n_img, n_band = images.shape[:2]
  x = np.array(images, dtype=np.float64).reshape(n_img, n_band, -1)
  x[~np.isfinite(x)] = np.nan
  base = np.zeros((n_img,) + images.shape[2:], bool) if exclude is None else np.asarray(exclude, bool)
  level, sigma = _clipped_level_sigma(_without(x, base), clip, n_iter)
  for _ in range(source_rounds):
    drop = base | _source_pixels(images, level, sigma, source_snr, source_box, source_grow)
    enough = (~drop).reshape(n_img, -1).sum(axis=1) >= min_pixels
    if not enough.any():
      break
    new_level, new_sigma = _clipped_level_sigma(_without(x[enough], drop[enough]), clip, n_iter)
    level[enough], sigma[enough] = new_level, new_sigma
  return level, sigma


def snr_image(images: np.ndarray, bands: str = "gri", level: np.ndarray | None = None,
              sigma: np.ndarray | None = None, chunk: int = 512) -> np.ndarray:
  """Detection S/N per pixel, (N, H, W): sum over `bands` of (x - level) / sigma, over sqrt(n).

  The sum of n unit-variance noise images over sqrt(n) has unit variance, so thresholds are in
  sigma; n counts the bands with a usable noise estimate in that image (an all-NaN band does not
  dilute the others). Non-finite pixels contribute 0. Works `chunk` images at a time.
  """
  if level is None or sigma is None:
    level, sigma = robust_background(images, chunk=chunk)
  if images.shape[0] > chunk:
    return np.concatenate([snr_image(images[s:s + chunk], bands, level[s:s + chunk],
                                     sigma[s:s + chunk], chunk)
                           for s in range(0, images.shape[0], chunk)])
  idx = band_indices(bands)
  lev, sig = np.asarray(level)[:, idx], np.asarray(sigma)[:, idx]
  usable = np.isfinite(lev) & np.isfinite(sig) & (sig > 0)
  with np.errstate(all="ignore"):
    snr = (np.asarray(images, dtype=np.float64)[:, idx] - lev[..., None, None]) / sig[..., None, None]
  snr[~(usable[..., None, None] & np.isfinite(snr))] = 0.0
  n_usable = np.maximum(usable.sum(axis=1), 1)
  return (snr.sum(axis=1) / np.sqrt(n_usable)[:, None, None]).astype(np.float32)


def detection_image(images: np.ndarray, bands: str = "gri", sigma_px: float = 1.2,
                    clip: tuple[float, float] = (-5.0, 50.0)) -> np.ndarray:
  """(N, H, W) float32: the detection S/N (`snr_image`) filtered with a Gaussian of `sigma_px` (matched to a
  point source, as SExtractor's detection filter) and rescaled to unit noise again, then clipped.

  White noise of unit variance filtered by a unit-sum Gaussian of width s keeps a variance of 1 / (4 pi s^2),
  hence the factor 2 sqrt(pi) s. The clip keeps bright cores from setting the feature's scale. Works on any
  units (a robust background level and sigma are measured per image and band), e.g. normalised model inputs.
  """
  snr = snr_image(images, bands)
  filtered = ndimage.gaussian_filter(snr, (0.0, sigma_px, sigma_px), mode="nearest")
  return np.clip(filtered * (2.0 * np.sqrt(np.pi) * sigma_px), *clip).astype(np.float32)


# --------------------------------------------------------------------------- k-means on pixels

@dataclass(frozen=True)
class PixelKMeans:
  """k-means on standardised per-pixel features: x -> (x - mean) / scale, nearest of `centres`."""
  mean: np.ndarray    # (C,)
  scale: np.ndarray   # (C,)
  centres: np.ndarray  # (k, C), in standardised units
  inertia: float      # sum of squared distances on the fitted sample

  @property
  def k(self) -> int:
    return self.centres.shape[0]


KMEANS_ALGORITHMS: dict[str, Callable[[int, int], Any]] = {
  # Lloyd's k-means: exact, deterministic given the seed; fine for a 200k-pixel sample.
  "kmeans": lambda k, seed: KMeans(n_clusters=k, n_init=4, random_state=seed),
  "minibatch": lambda k, seed: MiniBatchKMeans(n_clusters=k, n_init=3, batch_size=4096,
                                               random_state=seed),
}


def _standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
  z = (np.asarray(x, dtype=np.float64) - mean) / scale
  z[~np.isfinite(z)] = 0.0  # a NaN feature sits at the feature's mean: it does not pull any cluster
  return z


def fit_pixel_kmeans(hypercolumns: np.ndarray, k: int, sample_pixels: int = 200_000, seed: int = 0,
                     algorithm: str = "kmeans", weights: np.ndarray | None = None) -> PixelKMeans:
  """Fits k-means on a random sample of pixels' feature vectors, standardised per feature.

  hypercolumns (N, H, W, C) (a memmap is fine: only the sampled rows are read). `weights` (C,) multiply the
  standardised features (folded into `scale`, so assignment needs nothing else).
  """
  make = _lookup(KMEANS_ALGORITHMS, algorithm, "k-means algorithm")
  flat = hypercolumns.reshape(-1, hypercolumns.shape[-1])
  rng = np.random.default_rng(seed)
  n = flat.shape[0]
  rows = np.sort(rng.choice(n, size=sample_pixels, replace=False)) if n > sample_pixels else np.arange(n)
  sample = np.asarray(flat[rows], dtype=np.float64)
  with _quiet_nan_warnings():
    mean = np.nan_to_num(np.nanmean(sample, axis=0))
    scale = np.nanstd(sample, axis=0)
  scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)  # constant feature: leave unscaled
  if weights is not None:
    scale = scale / np.asarray(weights, dtype=np.float64)
  z = _standardise(sample, mean, scale)
  estimator = make(k, seed).fit(z)
  return PixelKMeans(mean=mean, scale=scale, centres=np.asarray(estimator.cluster_centers_),
                     inertia=float(estimator.inertia_))


def assign_pixels(model: PixelKMeans, hypercolumns: np.ndarray, chunk_pixels: int = 1 << 18) -> np.ndarray:
  """Cluster id of every pixel, (N, H, W) int32: nearest centre in standardised units, in chunks."""
  n_img, h, w, c = hypercolumns.shape
  per_chunk = max(1, chunk_pixels // (h * w))
  centre_sq = np.sum(model.centres ** 2, axis=1)
  out = np.empty((n_img, h, w), dtype=np.int32)
  for start in range(0, n_img, per_chunk):
    z = _standardise(hypercolumns[start:start + per_chunk].reshape(-1, c), model.mean, model.scale)
    # argmin |z - c|^2 = argmin (|c|^2 - 2 z.c); |z|^2 is common to all centres.
    ids = np.argmin(centre_sq[None, :] - 2.0 * z @ model.centres.T, axis=1)
    out[start:start + per_chunk] = ids.reshape(-1, h, w)
  return out


# --------------------------------------------------------------------------- clusters -> foreground

def cluster_mean_snr(cluster_ids: np.ndarray, snr: np.ndarray, k: int | None = None) -> np.ndarray:
  """Mean detection S/N of each cluster over all its pixels in all images; NaN for empty clusters."""
  k = int(cluster_ids.max()) + 1 if k is None else k
  ids = cluster_ids.ravel()
  counts = np.bincount(ids, minlength=k).astype(np.float64)
  sums = np.bincount(ids, weights=snr.ravel().astype(np.float64), minlength=k)
  with np.errstate(invalid="ignore", divide="ignore"):
    return sums / counts


def _snr_threshold_rule(cluster_snr: np.ndarray, snr_threshold: float) -> np.ndarray:
  return np.nan_to_num(cluster_snr, nan=-np.inf) > snr_threshold


def _faintest_is_background_rule(cluster_snr: np.ndarray, snr_threshold: float) -> np.ndarray:
  del snr_threshold  # unused by this rule
  is_object = np.isfinite(cluster_snr)
  is_object[np.nanargmin(cluster_snr)] = False
  return is_object


# Rule: cluster S/N (k,) -> is-object (k,). Empty clusters are background under both.
FOREGROUND_RULES: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
  "snr_threshold": _snr_threshold_rule,            # object iff mean S/N > snr_threshold
  "faintest_is_background": _faintest_is_background_rule,  # only the lowest-S/N cluster is background
}


def clusters_to_foreground(cluster_ids: np.ndarray, images: np.ndarray, rule: str = "snr_threshold",
                           snr_threshold: float = 1.0, bands: str = "gri",
                           k: int | None = None) -> np.ndarray:
  """Object/background per pixel (N, H, W) bool, with no labels.

  Each pixel's detection S/N is `snr_image(images, bands)` (robust per-image, per-band background
  level and sigma). A cluster's statistic is the mean S/N over all its pixels in all images.
  rule 'snr_threshold': clusters whose mean S/N exceeds `snr_threshold` are object, the rest
  background (pure background has mean S/N ~ 0, its brighter half ~ +0.8). Rule
  'faintest_is_background': the lowest-mean-S/N cluster is background, all others object.
  """
  decide = _lookup(FOREGROUND_RULES, rule, "foreground rule")
  snr = snr_image(images, bands)
  is_object = decide(cluster_mean_snr(cluster_ids, snr, k), snr_threshold)
  return is_object[cluster_ids]


# --------------------------------------------------------------------------- components -> masks

def _centre_distance(shape: tuple[int, int]) -> np.ndarray:
  h, w = shape
  yy, xx = np.mgrid[0:h, 0:w]
  return np.hypot(yy - (h - 1) / 2.0, xx - (w - 1) / 2.0)


def order_segments(segments: np.ndarray, min_area: int = 5, centre_radius: float = 5.0) -> np.ndarray:
  """Relabels one image's segments (H, W) int (0 = none) to 0 / 1 central / 2, 3, ... neighbours.

  Segments with fewer than `min_area` pixels are dropped. The central object is the segment whose
  nearest pixel is closest to the array centre (a segment covering one of the four central pixels
  is at 0.71 px), provided that distance is <= `centre_radius`; ties go to the larger segment.
  The remaining segments become 2, 3, ... by decreasing size (ties: original id order).
  """
  segments = np.asarray(segments)
  ids = np.unique(segments[segments > 0])
  out = np.zeros(segments.shape, dtype=np.int32)
  if ids.size == 0:
    return out
  sizes = np.asarray(ndimage.sum_labels(np.ones(segments.shape), segments, ids))
  ids, sizes = ids[sizes >= min_area], sizes[sizes >= min_area]
  if ids.size == 0:
    return out
  dist = np.asarray(ndimage.minimum(_centre_distance(segments.shape), segments, ids))
  new_label = np.zeros(ids.size, dtype=np.int32)
  nearest = np.lexsort((-sizes, dist))[0]
  has_central = dist[nearest] <= centre_radius
  if has_central:
    new_label[nearest] = 1
  others = [i for i in np.argsort(-sizes, kind="stable") if not (has_central and i == nearest)]
  new_label[others] = np.arange(2, 2 + len(others))
  lut = np.zeros(int(segments.max()) + 1, dtype=np.int32)
  lut[ids] = new_label
  return lut[np.clip(segments, 0, None)]


def label_objects(foreground: np.ndarray, min_area: int = 5, connectivity: int = 8,
                  centre_radius: float = 5.0) -> np.ndarray:
  """Connected components of foreground (N, H, W) bool -> masks (N, H, W) int32 (see order_segments)."""
  structure = _lookup(CONNECTIVITY_STRUCTURES, connectivity, "connectivity")
  masks = np.zeros(foreground.shape, dtype=np.int32)
  for i, fg in enumerate(np.asarray(foreground, dtype=bool)):
    components, _ = ndimage.label(fg, structure=structure)
    masks[i] = order_segments(components, min_area, centre_radius)
  return masks


def segment(hypercolumns: np.ndarray, images: np.ndarray, k: int, seed: int = 0,
            sample_pixels: int = 200_000, algorithm: str = "kmeans", rule: str = "snr_threshold",
            snr_threshold: float = 1.0, bands: str = "gri", min_area: int = 5, connectivity: int = 8,
            centre_radius: float = 5.0) -> np.ndarray:
  """Hypercolumns (N, H, W, C) + images (N, 5, H, W) -> masks (N, H, W); deterministic given seed."""
  model = fit_pixel_kmeans(hypercolumns, k, sample_pixels, seed, algorithm)
  cluster_ids = assign_pixels(model, hypercolumns)
  foreground = clusters_to_foreground(cluster_ids, images, rule, snr_threshold, bands, k)
  return label_objects(foreground, min_area, connectivity, centre_radius)


# --------------------------------------------------------------------------- scoring

def _iou(a: np.ndarray, b: np.ndarray, axis=None) -> np.ndarray:
  inter = np.logical_and(a, b).sum(axis=axis)
  union = np.logical_or(a, b).sum(axis=axis)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def neighbour_table_from_masks(true_masks: np.ndarray) -> dict[str, np.ndarray]:
  """Truth neighbour table from masks alone (labels >= 2; centre = pixel centroid; magnitude NaN)."""
  rows = {f: [] for f in NEIGHBOUR_FIELDS}
  for i, m in enumerate(true_masks):
    labels = np.unique(m[m >= 2])
    if labels.size == 0:
      continue
    centroids = ndimage.center_of_mass(np.ones(m.shape), m, labels)
    for lab, (cy, cx) in zip(labels, centroids):
      for f, v in zip(NEIGHBOUR_FIELDS, (i, lab, np.nan, cx, cy)):
        rows[f].append(v)
  return {"nb_object": np.asarray(rows["nb_object"], dtype=np.int64),
          "nb_label": np.asarray(rows["nb_label"], dtype=np.int64),
          "nb_mag_r": np.asarray(rows["nb_mag_r"], dtype=np.float64),
          "nb_x": np.asarray(rows["nb_x"], dtype=np.float64),
          "nb_y": np.asarray(rows["nb_y"], dtype=np.float64)}


def _mean_or_nan(flags: np.ndarray) -> float:
  return float(flags.mean()) if flags.size else float("nan")


def _centre_pixel(x: float, y: float, shape: tuple[int, int]) -> tuple[int, int] | None:
  """(row, col) of the pixel containing position (x = column, y = row), or None if outside."""
  if not (np.isfinite(x) and np.isfinite(y)):
    return None
  row, col = int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
  return (row, col) if 0 <= row < shape[0] and 0 <= col < shape[1] else None


def _mag_bin_edges(mag_bins: Sequence[float]) -> np.ndarray:
  return np.concatenate([[-np.inf], np.asarray(mag_bins, dtype=np.float64), [np.inf]])


def _by_bin(mags: np.ndarray, hits: np.ndarray, mag_bins: Sequence[float], rate: str) -> list[dict]:
  edges = _mag_bin_edges(mag_bins)
  rows = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    sel = (mags >= lo) & ((mags < hi) | (hi == np.inf))  # the last bin takes +inf (no flux)
    n, k = int(sel.sum()), int(hits[sel].sum())
    rows.append({"mag_lo": float(lo), "mag_hi": float(hi), "n": n, "n_hit": k,
                 rate: k / n if n else float("nan")})
  return rows


def score_neighbours(pred_masks: np.ndarray, true_masks: np.ndarray,
                     nb_table: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
  """Per-true-neighbour detection flags and per-predicted-neighbour reality flags.

  A true neighbour (a table row) is detected when some predicted neighbour component (pred label
  >= 2) overlaps its true pixels (true == nb_label in its image) or contains its centre pixel
  (nb_x, nb_y). A predicted neighbour component is real when it overlaps any true neighbour's
  pixels (true label >= 2) or contains a true neighbour's centre pixel; components that touch only
  the central object (shreds of it) or only background (noise) are false.
  Returns detected (n_true,), true_mag (n_true,), real (n_pred,), pred_image, pred_label (n_pred,).
  """
  table = neighbour_table_from_masks(true_masks) if nb_table is None else nb_table
  nb_obj = np.asarray(table["nb_object"], dtype=np.int64)
  nb_lab = np.asarray(table["nb_label"], dtype=np.int64)
  nb_x, nb_y = np.asarray(table["nb_x"], np.float64), np.asarray(table["nb_y"], np.float64)
  shape = pred_masks.shape[1:]
  detected = np.zeros(nb_obj.size, dtype=bool)
  for j, (i, lab) in enumerate(zip(nb_obj, nb_lab)):
    pred_nb = pred_masks[i] >= 2
    overlaps = lab >= 2 and bool(np.any(pred_nb & (true_masks[i] == lab)))
    centre = _centre_pixel(nb_x[j], nb_y[j], shape)
    detected[j] = overlaps or (centre is not None and bool(pred_nb[centre]))
  real, pred_image, pred_label = [], [], []
  for i in range(pred_masks.shape[0]):
    centres = [c for j in np.flatnonzero(nb_obj == i)
               if (c := _centre_pixel(nb_x[j], nb_y[j], shape)) is not None]
    true_nb = true_masks[i] >= 2
    for lab in np.unique(pred_masks[i][pred_masks[i] >= 2]):
      comp = pred_masks[i] == lab
      real.append(bool(np.any(comp & true_nb)) or any(comp[c] for c in centres))
      pred_image.append(i)
      pred_label.append(int(lab))
  true_mag = np.asarray(table.get("nb_mag_r", np.full(nb_obj.size, np.nan)), dtype=np.float64)
  return {"detected": detected, "true_mag": true_mag, "real": np.asarray(real, dtype=bool),
          "pred_image": np.asarray(pred_image, dtype=np.int64),
          "pred_label": np.asarray(pred_label, dtype=np.int64)}


def component_magnitudes(images: np.ndarray, masks: np.ndarray, image_index: np.ndarray,
                         labels: np.ndarray, band: str = "r") -> np.ndarray:
  """Measured magnitude of mask components: 22.5 - 2.5 log10(sum of background-subtracted flux).

  The background level is the robust level of the image's label-0 pixels; non-positive flux -> +inf.
  """
  b = band_indices(band)[0]
  level, _ = robust_background(images[:, b:b + 1], exclude=masks > 0)
  mags = np.full(len(labels), np.inf)
  for j, (i, lab) in enumerate(zip(image_index, labels)):
    flux = np.nansum(images[i, b][masks[i] == lab] - np.nan_to_num(level[i, 0]))
    if flux > 0:
      mags[j] = ZERO_POINT_NMGY - 2.5 * np.log10(flux)
  return mags


def score_masks(pred_masks: np.ndarray, true_masks: np.ndarray,
                nb_table: Mapping[str, np.ndarray] | None = None,
                mag_bins: Sequence[float] = (18, 20, 22), images: np.ndarray | None = None,
                central_mag: np.ndarray | None = None) -> dict:
  """Scores predicted masks against truth masks (both (N, H, W) int, 0 / 1 central / >= 2 neighbours).

  central_iou: mean over images of IoU(pred == 1, true == 1) (images where both are empty skipped).
  object_iou_pooled / object_iou_mean: IoU of pred > 0 vs true > 0 over all pixels / per image.
  false_object_pixels_fraction: fraction of true background pixels called object;
  missed_object_pixels_fraction: fraction of true object pixels called background.
  Neighbour completeness and purity as in `score_neighbours`; completeness per bin of the true
  neighbour r magnitude (`nb_table['nb_mag_r']`; bins (-inf, b0), [b0, b1), ..., [bn, inf));
  purity per bin of the component's measured r magnitude when `images` is given (a false component
  has no true magnitude). Without `nb_table`, neighbours come from the truth masks (no magnitudes).
  With `central_mag` (N,) (the central objects' true r magnitudes), central_iou_by_mag gives the mean
  central IoU per magnitude bin: where a method wins or loses (bright extended objects vs faint ones).
  """
  pred_masks, true_masks = np.asarray(pred_masks), np.asarray(true_masks)
  if pred_masks.shape != true_masks.shape:
    raise ValueError(f"pred {pred_masks.shape} and true {true_masks.shape} masks differ in shape")
  central = _iou(pred_masks == 1, true_masks == 1, axis=(1, 2))
  obj_pred, obj_true = pred_masks > 0, true_masks > 0
  nb = score_neighbours(pred_masks, true_masks, nb_table)
  n_true, n_pred = nb["detected"].size, nb["real"].size
  with _quiet_nan_warnings():
    result = {
      "n_images": int(pred_masks.shape[0]),
      "central_iou": float(np.nanmean(central)),
      "central_iou_per_image": central,
      "object_iou_pooled": float(_iou(obj_pred, obj_true)),
      "object_iou_mean": float(np.nanmean(_iou(obj_pred, obj_true, axis=(1, 2)))),
      "false_object_pixels_fraction": _mean_or_nan(obj_pred[~obj_true]),
      "missed_object_pixels_fraction": _mean_or_nan(~obj_pred[obj_true]),
      "n_true_neighbours": n_true,
      "n_pred_neighbours": n_pred,
      "neighbour_completeness": _mean_or_nan(nb["detected"]),
      "neighbour_purity": _mean_or_nan(nb["real"]),
      "completeness_by_mag": _by_bin(nb["true_mag"], nb["detected"], mag_bins, "completeness"),
    }
  if central_mag is not None:
    edges = _mag_bin_edges(mag_bins)
    mags = np.asarray(central_mag, dtype=np.float64)
    result["central_iou_by_mag"] = []
    for lo, hi in zip(edges[:-1], edges[1:]):
      sel = (mags >= lo) & ((mags < hi) | (hi == np.inf)) & np.isfinite(central)
      result["central_iou_by_mag"].append({"mag_lo": float(lo), "mag_hi": float(hi), "n": int(sel.sum()),
                                           "central_iou": float(central[sel].mean()) if sel.any() else float("nan")})
  if images is not None:
    mags = component_magnitudes(images, pred_masks, nb["pred_image"], nb["pred_label"])
    result["purity_by_mag"] = _by_bin(mags, nb["real"], mag_bins, "purity")
  return result


def sweep_k(hypercolumns: np.ndarray, images: np.ndarray, truth_masks: np.ndarray,
            ks: Sequence[int] = (2, 3, 4, 5, 6, 8), nb_table: Mapping[str, np.ndarray] | None = None,
            seed: int = 0, **segment_kwargs) -> list[dict]:
  """The k trade-off: one row per k of central/object IoU, neighbour completeness/purity, and
  the fractions of background pixels called object and of object pixels missed."""
  rows = []
  for k in ks:
    masks = segment(hypercolumns, images, k, seed=seed, **segment_kwargs)
    s = score_masks(masks, truth_masks, nb_table)
    rows.append({"k": int(k), "central_iou": s["central_iou"], "object_iou": s["object_iou_pooled"],
                 "neighbour_completeness": s["neighbour_completeness"],
                 "neighbour_purity": s["neighbour_purity"],
                 "false_object_pixels_fraction": s["false_object_pixels_fraction"],
                 "missed_object_pixels_fraction": s["missed_object_pixels_fraction"]})
  return rows


# --------------------------------------------------------------------------- SEP baseline

def _sep_snr_image(images_one: np.ndarray, idx: list[int], box: int, filter_size: int) -> np.ndarray:
  """One image's detection S/N map from SEP backgrounds: sum_b (x_b - back_b) / rms_b / sqrt(n),
  over the n bands of `idx` that hold any finite pixel."""
  total = np.zeros(images_one.shape[1:], dtype=np.float64)
  n_used = 0
  for b in idx:
    x = np.ascontiguousarray(images_one[b], dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.all():
      continue  # a band without data must not dilute the others
    n_used += 1
    x[bad] = 0.0
    bkg = sep.Background(x, mask=bad, bw=box, bh=box, fw=filter_size, fh=filter_size)
    rms = bkg.rms()
    with np.errstate(all="ignore"):
      chi = (x - bkg.back()) / rms
    chi[bad | ~np.isfinite(chi)] = 0.0
    total += chi
  return np.ascontiguousarray(total / np.sqrt(max(n_used, 1)))


def sep_segment(images: np.ndarray, band: str = "r", thresh_sigma: float = 1.5, minarea: int = 5,
                deblend_nthresh: int = 32, deblend_cont: float = 0.005, box: int = 32,
                filter_size: int = 1, min_area: int = 5, centre_radius: float = 5.0) -> np.ndarray:
  """SExtractor's algorithm (via SEP) on each cutout -> masks (N, H, W), same labelling rule.

  band: one letter or several ('gri'); the detection image is the S/N map summed over the bands
  (each band's `sep.Background` back and rms) over sqrt(n), i.e. unit per-pixel noise.
  `thresh_sigma` is SExtractor's DETECT_THRESH: in units of the per-pixel sigma, applied to the
  image after SEP's default 3 x 3 filter (normalised to unit sum, so the filtered noise is 0.375
  sigma: pure noise passes 1.0 sigma in 0.4% of pixels, 2.0 in none).
  Background: `box` x `box` meshes (32 on a 64 x 64 cutout = a 2 x 2 mesh; smaller boxes get
  biased high by the central object; the frames are already sky-subtracted), median filter of
  `filter_size` meshes. Detection: `minarea`, multi-threshold deblending (`deblend_nthresh`,
  `deblend_cont`), cleaning on. Each SEP object is one segment; `order_segments` then picks the
  central one and numbers the neighbours.
  """
  idx = band_indices(band)
  masks = np.zeros((images.shape[0],) + images.shape[2:], dtype=np.int32)
  for i in range(images.shape[0]):
    snr = _sep_snr_image(np.asarray(images[i]), idx, box, filter_size)
    _, segmap = sep.extract(snr, thresh_sigma, err=1.0, minarea=minarea,
                            deblend_nthresh=deblend_nthresh, deblend_cont=deblend_cont,
                            segmentation_map=True)
    masks[i] = order_segments(segmap, min_area, centre_radius)
  return masks


def tune_sep(images: np.ndarray, true_masks: np.ndarray, bands: Sequence[str] = ("r", "gri", "ugriz"),
             thresholds: Sequence[float] = (0.8, 1.0, 1.5, 2, 3, 5),
             nb_table: Mapping[str, np.ndarray] | None = None, **sep_kwargs) -> tuple[dict, list[dict]]:
  """Grid over detection band x threshold; best = highest central-object IoU.

  Tuned on the very truth it is scored on: an optimistic (upper-bound) baseline.
  Returns (best row, all rows); rows hold band, thresh_sigma and the main scores.
  """
  table = []
  for band in bands:
    for thresh in thresholds:
      s = score_masks(sep_segment(images, band, thresh, **sep_kwargs), true_masks, nb_table)
      table.append({"band": band, "thresh_sigma": float(thresh), "central_iou": s["central_iou"],
                    "object_iou": s["object_iou_pooled"],
                    "neighbour_completeness": s["neighbour_completeness"],
                    "neighbour_purity": s["neighbour_purity"],
                    "false_object_pixels_fraction": s["false_object_pixels_fraction"]})
  best = max(table, key=lambda r: np.nan_to_num(r["central_iou"], nan=-1.0))
  return best, table


# --------------------------------------------------------------------------- masking neighbours

def neighbour_region(masks: np.ndarray, dilate: int = 2) -> np.ndarray:
  """Pixels to replace, (N, H, W) bool: neighbour pixels (label >= 2) grown by `dilate` pixels
  (square steps, so diagonal wings go too), never the central object's pixels (label 1)."""
  region = np.asarray(masks) >= 2
  if dilate > 0:
    structure = CONNECTIVITY_STRUCTURES[8][None]  # grow within each image, not across the batch
    region = ndimage.binary_dilation(region, structure=structure, iterations=dilate)
  return region & (np.asarray(masks) != 1)


def mask_neighbours(images: np.ndarray, masks: np.ndarray, seed: int = 0,
                    noise_sigma: float | np.ndarray | None = None, dilate: int = 2,
                    min_background_pixels: int = 32, index_offset: int = 0) -> np.ndarray:
  """Replaces neighbour pixels (dilated) with noise consistent with the image, not zeros.

  Per image and band: level = robust median of the background pixels (label 0 and outside the
  replaced region, whose ring holds neighbour wings), sigma = their robust 1.4826 x MAD, or
  `noise_sigma` (scalar or broadcastable to (N, 5)) when given. With fewer than
  `min_background_pixels` such pixels, all pixels outside the region are used. Non-finite
  pixels are ignored in the estimates, so a few NaNs do not spread; a band with no finite pixel
  to imitate stays NaN in the replaced pixels.
  Replaced pixels are level + sigma x N(0, 1), drawn per image from default_rng([seed, index_offset
  + i]): pass the batch's first global index as `index_offset` and the result does not depend on
  batching. Returns a new float32 array; all other pixels are unchanged.
  """
  images = np.asarray(images)
  region = neighbour_region(masks, dilate)
  background = (np.asarray(masks) == 0) & ~region
  few = background.reshape(len(background), -1).sum(axis=1) < min_background_pixels
  background[few] = ~region[few]
  level, sigma = robust_background(images, exclude=~background)
  if noise_sigma is not None:
    sigma = np.broadcast_to(np.asarray(noise_sigma, dtype=np.float64), level.shape)
  out = np.array(images, dtype=np.float32, copy=True)
  for i in np.flatnonzero(region.reshape(len(region), -1).any(axis=1)):
    rng = np.random.default_rng([seed, index_offset + int(i)])
    noise = rng.standard_normal(out.shape[1:])
    fill = level[i, :, None, None] + sigma[i, :, None, None] * noise
    out[i][:, region[i]] = fill[:, region[i]].astype(np.float32)
  return out
