"""Shared pieces of the SDSS frame tests: the two fields and independent measurements on real pixels."""

import csv

import numpy as np
import sep
from scipy.spatial import cKDTree

from stargal_jax import BANDS


SPARSE = "001035-6-0017"


CROWDED = "005405-6-0099"


def window_centroid(image, x, y, sigma=1.5, iterations=100):
  """SExtractor's windowed centroid, in numpy: x <- x + 2 sum(w I dx) / sum(w I), Gaussian w."""
  yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
  for _ in range(iterations):
    dx, dy = xx - x, yy - y
    r2 = dx ** 2 + dy ** 2
    weighted = image * np.exp(-r2 / (2 * sigma ** 2)) * (r2 < (4 * sigma) ** 2)
    step_x, step_y = 2 * (weighted * dx).sum() / weighted.sum(), 2 * (weighted * dy).sum() / weighted.sum()
    x, y = x + step_x, y + step_y
    if abs(step_x) < 1e-5 and abs(step_y) < 1e-5:
      break
  return x, y


def native_positions_by_hand(frame):
  """Sources found directly on a band's own pixels (no WCS involved): SEP at 5 sigma, windowed."""
  data = np.ascontiguousarray(frame.image, np.float64)
  background = sep.Background(data)
  data = data - background.back()
  objects = sep.extract(data, 5.0, err=background.globalrms, minarea=5)
  x, y, flag = sep.winpos(data, objects["x"], objects["y"], np.full(len(objects), 1.5))
  ok = (flag == 0) & (objects["flag"] == 0)
  return np.stack([x[ok], y[ok]], axis=1)


def isolated_point_sources(field, sources, snr=30.0, max_counts=20000.0, isolation=12.0, top_fraction=0.4):
  """Bright, unsaturated, concentrated (stars: high 2px/5px aperture flux ratio) and isolated."""
  sources = sources[(sources["snr"] >= snr) & (sources["max_counts"] < max_counts) & (sources["flag"] == 0)]
  data = np.ascontiguousarray(field.reference.image, np.float64)
  everything = sep.extract(data, 3.0, err=sep.Background(data).globalrms, minarea=5)
  distance, _ = cKDTree(np.c_[everything["x"], everything["y"]]).query(np.c_[sources["x"], sources["y"]], k=2)
  inner, _, _ = sep.sum_circle(data, sources["x"], sources["y"], 2.0)
  outer, _, _ = sep.sum_circle(data, sources["x"], sources["y"], 5.0)
  concentration = inner / outer
  keep = (concentration >= np.quantile(concentration, 1 - top_fraction)) & (distance[:, 1] > isolation)
  return sources[keep]


def median_residual(predicted, detected, radius=1.5):
  distance, index = cKDTree(detected).query(predicted, distance_upper_bound=radius)
  ok = np.isfinite(distance)
  return np.median(detected[index[ok]] - predicted[ok], axis=0), int(ok.sum())


def check_centred(images, noise, bands, min_stars, min_snr=30.0, tolerance=0.5):
  centre = images.shape[-1] // 2
  core = slice(int(centre) - 4, int(centre) + 6)
  for band in bands:
    b = BANDS.index(band)
    flux = np.nansum(images[:, b, core, core], axis=(1, 2))
    band_snr = flux / np.sqrt(np.nansum(noise[:, b, core, core] ** 2, axis=(1, 2)))
    bright = np.flatnonzero((band_snr > min_snr) & ~np.isnan(images[:, b]).any(axis=(1, 2)))
    assert len(bright) >= min_stars, f"{band}: only {len(bright)} stars with S/N > {min_snr}"
    offsets = np.array([window_centroid(images[k, b], centre, centre) for k in bright]) - centre
    error = np.hypot(offsets[:, 0], offsets[:, 1])
    assert error.max() < tolerance, f"{band}: centroid offsets up to {error.max():.2f} px"


def write_csv(path, header, rows):
  with open(path, "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(header)
    writer.writerows(rows)
