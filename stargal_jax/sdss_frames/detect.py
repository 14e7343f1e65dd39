"""Sources on one frame with SEP: extraction on the noise map, windowed centroids, aperture S/N, saturation."""

from __future__ import annotations

import contextlib

import numpy as np
import sep
from stargal_jax.sdss_frames.frames import (APERTURE_RADIUS, CUTOUT_SIZE, DETECT_MINAREA, DETECT_SNR,
                                            DETECT_THRESH_SIGMA, SATURATION_COUNTS, SOURCE_DTYPE, WINDOW_SIGMA,
                                            Frame, noise_map)


def _sep_ready(array: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(array, dtype=np.float64)


@contextlib.contextmanager
def _sep_capacity():
  """Raises SEP's global pixel stack and deblending limits for crowded whole frames (the Galactic plane
  overflows the defaults), and restores them afterwards: a large pixel stack makes every later small
  `sep.extract` (e.g. on 64x64 cutouts) ~250x slower."""
  pixstack, sub_objects = sep.get_extract_pixstack(), sep.get_sub_object_limit()
  sep.set_extract_pixstack(max(pixstack, 5_000_000))
  sep.set_sub_object_limit(max(sub_objects, 4096))
  try:
    yield
  finally:
    sep.set_extract_pixstack(pixstack)
    sep.set_sub_object_limit(sub_objects)


def extract_objects(frame: Frame, thresh: float, minarea: int, deblend_nthresh: int = 32,
             deblend_cont: float = 0.005) -> tuple[np.ndarray, np.ndarray]:
  """SEP objects on a frame after removing residual background; returns (objects, data).

  The threshold is relative to the sky-plus-dark noise (SExtractor's background RMS): the sources'
  own Poisson noise would raise the isophotes of bright objects.
  """
  image = _sep_ready(frame.image)
  data = image - sep.Background(image, bw=64, bh=64, fw=3, fh=3).back()
  sky_noise = noise_map(np.zeros_like(frame.image), frame.calib, frame.sky, frame.gain, frame.dark_variance)
  with _sep_capacity():
    objects = sep.extract(data, thresh, err=_sep_ready(sky_noise), minarea=minarea,
                          deblend_nthresh=deblend_nthresh, deblend_cont=deblend_cont)
  return objects, data


def windowed_centroids(data: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """SExtractor-style windowed centroids; keeps the start where the iteration fails."""
  if len(x) == 0:
    return np.asarray(x, np.float64), np.asarray(y, np.float64)
  xw, yw, flag = sep.winpos(data, x, y, np.full(len(x), WINDOW_SIGMA))
  bad = (flag != 0) | ~np.isfinite(xw) | ~np.isfinite(yw) | (np.hypot(xw - x, yw - y) > 2.0)
  return np.where(bad, x, xw), np.where(bad, y, yw)


def _box_maxima(values: np.ndarray, objects: np.ndarray, grow: int) -> np.ndarray:
  """Maximum of `values` over each SEP object's bounding box grown by `grow` pixels."""
  height, width = values.shape
  out = np.empty(len(objects))
  for k, o in enumerate(objects):
    y0, x0 = max(o["ymin"] - grow, 0), max(o["xmin"] - grow, 0)
    out[k] = values[y0:min(o["ymax"] + grow + 1, height), x0:min(o["xmax"] + grow + 1, width)].max()
  return out


def detect_frame_sources(frame: Frame, snr: float = DETECT_SNR, thresh: float = DETECT_THRESH_SIGMA,
                         minarea: int = DETECT_MINAREA, deblend_nthresh: int = 32,
                         deblend_cont: float = 0.005, edge: float = CUTOUT_SIZE / 2,
                         aperture_radius: float = APERTURE_RADIUS,
                         saturation_counts: float = SATURATION_COUNTS,
                         exclude_flagged: bool = True) -> np.ndarray:
  """Sources on one frame (see `detect_sources`), as a `SOURCE_DTYPE` array sorted by S/N."""
  objects, data = extract_objects(frame, thresh, minarea, deblend_nthresh, deblend_cont)
  x, y = windowed_centroids(data, objects["x"], objects["y"])
  flux, fluxerr, aper_flag = sep.sum_circle(data, x, y, aperture_radius, err=_sep_ready(frame.noise))
  max_counts = _box_maxima(frame.counts, objects, grow=2)
  sources = np.zeros(len(objects), SOURCE_DTYPE)
  sources["x"], sources["y"], sources["flux"], sources["fluxerr"] = x, y, flux, fluxerr
  sources["snr"] = np.where(fluxerr > 0, flux / np.where(fluxerr > 0, fluxerr, 1.0), 0.0)
  sources["peak"], sources["max_counts"] = objects["peak"], max_counts
  sources["flag"] = objects["flag"] | aper_flag
  sources["saturated"] = max_counts >= saturation_counts
  height, width = frame.shape
  keep = (sources["snr"] >= snr) & (x >= edge) & (x <= width - 1 - edge) & (y >= edge) & (y <= height - 1 - edge)
  if exclude_flagged:
    # Merged (deblended) sources stay: blends are what the segmentation is for; truncated,
    # overflowed, singular or saturated ones go.
    bad = sep.OBJ_TRUNC | sep.OBJ_DOVERFLOW | sep.OBJ_SINGU | sep.APER_TRUNC
    keep &= ((sources["flag"] & bad) == 0) & ~sources["saturated"]
  sources = sources[keep]
  return sources[np.argsort(-sources["snr"])]
