"""The crowded-field rule: a cutout whose object-pixel fraction exceeds what the training cutouts show is
re-segmented on a local background, and if it still exceeds it, only its most significant object pixels are
kept. The switch is the data's (the measured fraction against the limit measured on the training set), not a
flag: on ordinary cutouts nothing changes.

Why: in a crowded low-latitude field (SDSS 005405-6-0099) or a globular cluster's core, unresolved starlight
raises the sky that one per-cutout level cannot remove; per-pixel features then call most of the cutout object
and the connected components flood it. numpy / scipy.ndimage only.
"""

import numpy as np
from scipy import ndimage

from stargal_jax.segment import pixels


def object_fraction(foreground: np.ndarray) -> np.ndarray:
  """(N,) fraction of each cutout's pixels called object."""
  foreground = np.asarray(foreground, bool)
  return foreground.reshape(len(foreground), -1).mean(axis=1)


def flood_limit(fractions: np.ndarray, quantile: float) -> float:
  """The object-pixel fraction above which a cutout counts as flooded: the `quantile` of the training
  cutouts' fractions (label-free: what the fitted segmenter calls object on the data it was fitted on)."""
  if not 0.0 < quantile <= 1.0:
    raise ValueError(f"seg.flood_quantile must be in (0, 1], got {quantile}")
  fractions = np.asarray(fractions, np.float64)
  if fractions.size == 0:
    raise ValueError("no training cutouts to measure the flood limit on")
  return float(np.quantile(fractions, quantile))


def _clipped_median(x: np.ndarray, clip: float = 3.0, n_iter: int = 5) -> np.ndarray:
  """Median over the last axis after iterative clipping at `clip` x 1.4826 MAD (NaN = unused)."""
  x = np.array(x, np.float64)
  with pixels.quiet_nan_warnings(), np.errstate(all="ignore"):
    for _ in range(n_iter):
      level = np.nanmedian(x, axis=-1, keepdims=True)
      sigma = pixels.MAD_TO_SIGMA * np.nanmedian(np.abs(x - level), axis=-1, keepdims=True)
      x[np.abs(x - level) > clip * sigma] = np.nan
    return np.nanmedian(x, axis=-1)


def local_background(images: np.ndarray, box: int = 16, filter_size: int = 3) -> np.ndarray:
  """(N, B, H, W) background map of each band, as SExtractor builds it: the clipped median of each box x box
  mesh cell (clipping drops the stars), a `filter_size` x `filter_size` median filter over the mesh (a cell
  under a bright star does not set the sky), then bilinear interpolation between mesh centres (constant beyond
  the outer centres). H and W must be multiples of `box`."""
  images = np.asarray(images, np.float64)
  n, b, h, w = images.shape
  if h % box or w % box:
    raise ValueError(f"cutouts of {h} x {w} px do not split into {box} px meshes")
  my, mx = h // box, w // box
  cells = images.reshape(n, b, my, box, mx, box).transpose(0, 1, 2, 4, 3, 5).reshape(n, b, my, mx, box * box)
  mesh = _clipped_median(cells)
  mesh = np.where(np.isfinite(mesh), mesh, 0.0)
  if filter_size > 1:
    mesh = ndimage.median_filter(mesh, size=(1, 1, filter_size, filter_size), mode="nearest")
  # Pixel (row, col) sits at mesh coordinate ((row + 0.5) / box - 0.5, ...); order-1 spline = bilinear.
  rows = (np.arange(h) + 0.5) / box - 0.5
  cols = (np.arange(w) + 0.5) / box - 0.5
  rr, cc = np.meshgrid(np.clip(rows, 0, my - 1), np.clip(cols, 0, mx - 1), indexing="ij")
  out = np.empty_like(images)
  for i in range(n):
    for j in range(b):
      out[i, j] = ndimage.map_coordinates(mesh[i, j], [rr, cc], order=1, mode="nearest")
  return out


def cap_foreground(foreground: np.ndarray, snr: np.ndarray, limit: float) -> np.ndarray:
  """Each cutout's object pixels (N, H, W) bool cut to at most `limit` of its pixels: the ones of highest
  smoothed S/N `snr` are kept."""
  foreground = np.asarray(foreground, bool).copy()
  per_image = foreground.shape[1] * foreground.shape[2]
  keep = int(np.floor(limit * per_image))
  for i in np.flatnonzero(object_fraction(foreground) > limit):
    values = np.where(foreground[i], snr[i], -np.inf).ravel()
    order = np.argsort(-values, kind="stable")
    kept = np.zeros(per_image, bool)
    kept[order[:keep]] = True
    foreground[i] = kept.reshape(foreground.shape[1:]) & foreground[i]
  return foreground
