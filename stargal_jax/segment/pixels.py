"""Pixel-level quantities of raw cutouts: robust background and sky noise, detection S/N, model inputs.

Images are `(N, 5, H, W)` ugriz nanomaggies with the target object centred at the array centre
((H - 1) / 2, (W - 1) / 2), i.e. between pixels 31 and 32 for 64 x 64. numpy / scipy.ndimage only.
"""

import warnings
from contextlib import contextmanager

import numpy as np
from scipy import ndimage

from stargal_jax import registry
from stargal_jax.data import normalize as normalization


BAND_INDEX = {"u": 0, "g": 1, "r": 2, "i": 3, "z": 4}


MAD_TO_SIGMA = 1.4826  # sigma of a Gaussian = 1.4826 x its median absolute deviation


ZERO_POINT_NMGY = 22.5  # m = 22.5 - 2.5 log10(flux in nanomaggies)


@contextmanager
def quiet_nan_warnings():
  """All-NaN slices are expected (masked-out images); their NaN result is the documented answer."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    yield


def band_indices(bands: str) -> list[int]:
  """'r' -> [2], 'gri' -> [1, 2, 3]; fails listing the valid band letters."""
  if not bands:
    raise ValueError(f"empty band selection; use letters from {list(BAND_INDEX)}")
  return [registry.lookup(BAND_INDEX, b, "band") for b in bands]


def nanmedian_last_axis(x: np.ndarray) -> np.ndarray:
  """np.nanmedian(x, axis=-1) by one sort (NaNs sort last): numpy's own falls back to a per-row Python loop
  when NaNs are present, which made the clipped background the slowest step of segmenting a cutout."""
  ordered = np.sort(x, axis=-1)
  n = np.sum(~np.isnan(x), axis=-1)
  lo = np.take_along_axis(ordered, np.maximum((n - 1) // 2, 0)[..., None], axis=-1)[..., 0]
  hi = np.take_along_axis(ordered, np.maximum(n // 2, 0)[..., None].clip(max=x.shape[-1] - 1), axis=-1)[..., 0]
  return np.where(n > 0, 0.5 * (lo + hi), np.nan)


def _clipped_level_sigma(x: np.ndarray, clip: float, n_iter: int) -> tuple[np.ndarray, np.ndarray]:
  """Median and 1.4826 x MAD over the last axis of x (NaN = unused), clipped at `clip` sigma."""
  x = x.copy()
  level = sigma = np.full(x.shape[:-1], np.nan)
  with np.errstate(all="ignore"), quiet_nan_warnings():
    for _ in range(n_iter + 1):
      level = nanmedian_last_axis(x)
      sigma = MAD_TO_SIGMA * nanmedian_last_axis(np.abs(x - level[..., None]))
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
                    clip: tuple[float, float] | None = (-5.0, 50.0)) -> np.ndarray:
  """(N, H, W) float32: the detection S/N (`snr_image`) filtered with a Gaussian of `sigma_px` (matched to a
  point source, as SExtractor's detection filter) and rescaled to unit noise again, then clipped.

  White noise of unit variance filtered by a unit-sum Gaussian of width s keeps a variance of 1 / (4 pi s^2),
  hence the factor 2 sqrt(pi) s. The clip keeps bright cores from setting the feature's scale (None: no clip,
  for peak finding). Works on any units (a robust background level and sigma are measured per image and band),
  e.g. normalised model inputs.
  """
  snr = snr_image(images, bands)
  filtered = ndimage.gaussian_filter(snr, (0.0, sigma_px, sigma_px), mode="nearest") * (2.0 * np.sqrt(np.pi) * sigma_px)
  return (filtered if clip is None else np.clip(filtered, *clip)).astype(np.float32)


def filtered_noise_gain(height: int, width: int, sigma_px: float) -> np.ndarray:
  """(H, W): the noise sigma of white noise filtered as `detection_image` filters it (Gaussian of `sigma_px`,
  mode 'nearest'), over its value far from the edges. 'nearest' folds the kernel's outer weights onto the edge
  pixel, so near the cutout's edge the filtered noise is larger (x1.5 along an edge, x2.3 in a corner at 1.2 px):
  a threshold in units of the interior's noise passes edge noise peaks. Exact: per axis, the filter is a matrix."""
  def axis_gain(n: int) -> np.ndarray:
    weights = ndimage.gaussian_filter1d(np.eye(n), sigma_px, axis=0, mode="nearest")  # [out, in]
    gain = np.sqrt((weights ** 2).sum(axis=1))
    return gain / gain[n // 2]
  return np.outer(axis_gain(height), axis_gain(width))


def model_inputs(images: np.ndarray, normalizer: dict) -> np.ndarray:
  """Raw (N, 5, H, W) nanomaggies -> normalised NHWC float32; non-finite pixels as 0 (nan_policy 'zero')."""
  clean = np.nan_to_num(np.asarray(images, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
  x = normalization.normalize(normalizer, clean)
  return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)), dtype=np.float32)


def subtract_sky(images: np.ndarray) -> np.ndarray:
  """Images minus their robust per-cutout, per-band background level (`robust_background`:
  clipped median with sources excluded). Real frames keep sky residuals of up to ~2 sigma in crowded
  fields; the training cutouts have none."""
  level, _ = robust_background(np.asarray(images, np.float64))
  return (images - np.nan_to_num(level)[:, :, None, None]).astype(np.float32)
