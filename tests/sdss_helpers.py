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


# ---------------------------------------------------------------------------------------------
# Small synthetic frame files in the SDSS frame data model (HDU0 image + WCS, HDU1 calib, HDU2 sky model).

PIXEL_DEG = 0.396 / 3600.0
SYNTHETIC_SHAPE = (160, 200)  # rows, columns
SYNTHETIC_STARS = [(40.0 + 24.0 * i + 0.3 * j, 40.0 + 26.0 * j + 0.2 * i) for i in range(6) for j in range(4)]


def synthetic_frame_hdus(band="r", run=1035, camcol=6, stars=SYNTHETIC_STARS, crpix_shift=(0.0, 0.0), seed=0):
  """An HDUList shaped like an SDSS frame: Gaussian stars (sigma 1.5 px, 20 nanomaggies) on sky noise, a TAN WCS
  (0.396"/px) whose reference pixel may be shifted by `crpix_shift` (a wrong WCS), calibration and sky model."""
  from astropy.io import fits
  ny, nx = SYNTHETIC_SHAPE
  calib_value, sky_counts = 0.005, 100.0
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:ny, :nx]
  image = rng.normal(0.0, calib_value * np.sqrt(sky_counts / 4.9 + 1.0), (ny, nx))
  for x, y in stars:
    image += 20.0 / (2 * np.pi * 1.5 ** 2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5 ** 2))
  header = fits.Header()
  header.update(FILTER=band, RUN=run, CAMCOL=camcol, CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=10.0,
                CRVAL2=1.0, CRPIX1=nx / 2 + 1 + crpix_shift[0], CRPIX2=ny / 2 + 1 + crpix_shift[1],
                CD1_1=-PIXEL_DEG, CD1_2=0.0, CD2_1=0.0, CD2_2=PIXEL_DEG, CUNIT1="deg", CUNIT2="deg")
  grid = (8, 10)
  sky = fits.BinTableHDU.from_columns([
      fits.Column(name="ALLSKY", format=f"{grid[0] * grid[1]}E", dim=f"({grid[1]}, {grid[0]})",
                  array=np.full((1,) + grid, sky_counts, np.float32)),
      fits.Column(name="XINTERP", format=f"{nx}E", array=np.linspace(0, grid[1] - 1, nx, dtype=np.float32)[None]),
      fits.Column(name="YINTERP", format=f"{ny}E", array=np.linspace(0, grid[0] - 1, ny, dtype=np.float32)[None])])
  return fits.HDUList([fits.PrimaryHDU(image.astype(np.float32), header),
                       fits.ImageHDU(np.full(nx, calib_value, np.float32)), sky])


def write_synthetic_frame(folder, band="r", run=1035, camcol=6, field=17, hdus=None, **kwargs):
  """Writes frame-{band}-RRRRRR-C-FFFF.fits.bz2 (of `hdus`, or `synthetic_frame_hdus(band, ...)`); its path."""
  import bz2
  import io
  from pathlib import Path
  buffer = io.BytesIO()
  (hdus if hdus is not None else synthetic_frame_hdus(band, run, camcol, **kwargs)).writeto(buffer)
  path = Path(folder) / f"frame-{band}-{run:06d}-{camcol}-{field:04d}.fits.bz2"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(bz2.compress(buffer.getvalue()))
  return path
