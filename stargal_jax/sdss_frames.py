"""Real SDSS frames -> the study's 5-band 64x64 cutouts, with per-pixel noise maps.

Input: the five calibrated SDSS "frame" files of one field, `frame-{u,g,r,i,z}-RRRRRR-C-FFFF.fits.bz2`
(data model: data.sdss.org/datamodel/files/BOSS_PHOTOOBJ/frames/RERUN/RUN/CAMCOL/frame.html).
HDU0 is the sky-subtracted image in nanomaggies with a TAN WCS, HDU1 the calibration vector
(nanomaggies per count, one value per column), HDU2 the sky model (a coarse grid `ALLSKY`, in
counts, with the fractional grid coordinates `XINTERP`/`YINTERP` of every full-size column/row),
HDU3 the asTrans astrometry.

Noise (data model recipe): counts = image / calib + sky; var_counts = counts / gain + dark_variance;
sigma_nmgy = calib * sqrt(var_counts). Gain and dark variance are per camcol and band, from the
tables on the data-model page above (transcribed here; the same values are in astrobject's
`instruments/sdss.py`, which cites that page); a few entries change with run number.

Conventions (all positions are 0-based, the centre of the first pixel is (0, 0), as in numpy,
SEP and astropy's `*_values` WCS calls; x is the column, y the row):
- Cutouts live on the r-band pixel grid. Cutout pixel (row i, column j) samples the r-grid point
  (x0 + j - c, y0 + i - c) for an object at r-pixel (x0, y0), c = `centre`. Default c = 32
  (`stargal_jax.CUTOUT_CENTRE`): it reproduces `frame[y-32:y+32, x-32:x+32]` for integer positions, the
  convention of the whole project (simulator, morphology). c = 31.5 puts the object between pixels. Array layout
  (N, 5, 64, 64), bands u, g, r, i, z.
- Every band is resampled per cutout: r-grid pixel centres -> r WCS -> sky -> band WCS -> band pixel
  coordinates (plus the band's measured alignment offset, below), then cubic B-spline interpolation
  (`scipy.ndimage.map_coordinates`, order 3) on a padded window, which equals interpolating the
  whole frame to ~1e-7. Pixels whose centre falls outside a band's frame are NaN.
- Alignment offsets: the frames' WCS (and asTrans) relative astrometry is off by up to ~1 pixel in
  some fields (measured: 005405-6-0099, i band +0.87, -0.59 px relative to r; g +0.38, -0.50).
  `load_field` therefore matches bright r-band sources to sources detected on each native band frame
  and adds the median residual (a constant per-band shift, in band pixels) to the WCS mapping.
- Noise cutouts: the native per-pixel sigma at each sampled position (the variance map is
  interpolated linearly, then square-rooted). Interpolated image pixels have slightly lower,
  correlated noise; the map states the per-pixel noise of the data they come from.
"""

from __future__ import annotations

import argparse
import contextlib
import bz2
import csv
import dataclasses
import io
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import sep
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from scipy import ndimage
from scipy.spatial import cKDTree

from stargal_jax import BANDS
from stargal_jax.data import formats

CUTOUT_SIZE = 64
REFERENCE_BAND = "r"

# Gain (electrons per count) and dark variance (counts^2), SDSS frame data model tables, per camcol.
# A tuple (before, after, run) means: `before` for runs <= run, `after` for later runs.
SDSS_GAIN = {
  1: {"u": 1.62, "g": 3.32, "r": 4.71, "i": 5.165, "z": 4.745},
  2: {"u": (1.595, 1.825, 1100), "g": 3.855, "r": 4.6, "i": 6.565, "z": 5.155},
  3: {"u": 1.59, "g": 3.845, "r": 4.72, "i": 4.86, "z": 4.885},
  4: {"u": 1.6, "g": 3.995, "r": 4.76, "i": 4.885, "z": 4.775},
  5: {"u": 1.47, "g": 4.05, "r": 4.725, "i": 4.64, "z": 3.48},
  6: {"u": 2.17, "g": 4.035, "r": 4.895, "i": 4.76, "z": 4.69},
}
SDSS_DARK_VARIANCE = {
  1: {"u": 9.61, "g": 15.6025, "r": 1.8225, "i": 7.84, "z": 0.81},
  2: {"u": 12.6025, "g": 1.44, "r": 1.00, "i": (5.76, 6.25, 1500), "z": 1.0},
  3: {"u": 8.7025, "g": 1.3225, "r": 1.3225, "i": 4.6225, "z": 1.0},
  4: {"u": 12.6025, "g": 1.96, "r": 1.3225, "i": (6.25, 7.5625, 1500), "z": (9.61, 12.6025, 1500)},
  5: {"u": 9.3025, "g": 1.1025, "r": 0.81, "i": 7.84, "z": (1.8225, 2.1025, 1500)},
  6: {"u": 7.0225, "g": 1.8225, "r": 0.9025, "i": 5.0625, "z": 1.21},
}

# Detection defaults (r band): pixels 1.5 sigma above the sky noise (after a 3x3 matched filter),
# at least 5 connected pixels, SEP's default deblending; a source is kept when its S/N in a
# 5-pixel-radius (2 arcsec) aperture is >= 10.
DETECT_THRESH_SIGMA = 1.5
DETECT_SNR = 10.0
DETECT_MINAREA = 5
APERTURE_RADIUS = 5.0
# Windowed centroids: Gaussian weight sigma in pixels (PSF FWHM ~1.4" = 3.5 px -> sigma ~1.5 px).
WINDOW_SIGMA = 1.5
# Raw counts (image / calib + sky) at or above which a pixel is treated as (near) saturated; a source
# is `saturated` when any pixel in its bounding box (grown by 2 px) is. Heuristic, chosen here:
# saturated stars in these frames plateau at ~53-63k DN; 40k keeps clear of that and of the
# non-linear regime.
SATURATION_COUNTS = 40000.0
# Spline window margin: the cubic B-spline prefilter's influence decays as 0.268^n per pixel.
_SPLINE_PAD = 12

SOURCE_DTYPE = np.dtype([
  ("x", "<f8"), ("y", "<f8"), ("flux", "<f8"), ("fluxerr", "<f8"), ("snr", "<f8"),
  ("peak", "<f8"), ("max_counts", "<f8"), ("flag", "<i4"), ("saturated", "?"),
])
COORD_KINDS = ("pixel", "sky")
_FRAME_NAME = re.compile(r"frame-([ugriz])-(\d{6})-(\d)-(\d{4})\.fits(\.bz2)?$")


# ----------------------------------------------------------------------------------------------
# One frame

@dataclasses.dataclass(frozen=True, eq=False)
class Frame:
  """One calibrated SDSS frame: image and noise in nanomaggies, sky in counts, its own WCS."""
  band: str
  run: int
  camcol: int
  field: int
  image: np.ndarray  # (1489, 2048) float32, nanomaggies, sky-subtracted
  calib: np.ndarray  # (2048,) float32, nanomaggies per count, per column
  sky: np.ndarray  # (1489, 2048) float32, counts (the sky that was subtracted)
  noise: np.ndarray  # (1489, 2048) float32, sigma in nanomaggies
  wcs: WCS
  gain: float
  dark_variance: float
  header: fits.Header

  @property
  def shape(self) -> tuple[int, int]:
    return self.image.shape

  @property
  def counts(self) -> np.ndarray:
    """The frame back in raw counts (before calibration and sky subtraction)."""
    return self.image / self.calib[None, :] + self.sky


def _camcol_table(table: dict, camcol: int, band: str, run: int) -> float:
  if camcol not in table:
    raise KeyError(f"unknown camcol {camcol!r}; valid camcols: {sorted(table)}")
  if band not in table[camcol]:
    raise KeyError(f"unknown band {band!r}; valid bands: {', '.join(table[camcol])}")
  value = table[camcol][band]
  if isinstance(value, tuple):
    before, after, boundary = value
    return after if run > boundary else before
  return value


def sdss_gain(camcol: int, band: str, run: int) -> float:
  """Electrons per count for one SDSS photometric CCD (frame data model table)."""
  return _camcol_table(SDSS_GAIN, camcol, band, run)


def sdss_dark_variance(camcol: int, band: str, run: int) -> float:
  """Dark current plus read noise variance in counts^2 (frame data model table)."""
  return _camcol_table(SDSS_DARK_VARIANCE, camcol, band, run)


def _linear_along(values: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
  """Linear interpolation of `values` at fractional indices `coords` along `axis`, clamped at the ends."""
  n = values.shape[axis]
  c = np.clip(np.asarray(coords, np.float64), 0.0, n - 1)
  lo = np.minimum(np.floor(c).astype(int), max(n - 2, 0))
  w = c - lo
  hi = np.minimum(lo + 1, n - 1)
  shape = [1] * values.ndim
  shape[axis] = len(c)
  w = w.reshape(shape)
  return np.take(values, lo, axis=axis) * (1 - w) + np.take(values, hi, axis=axis) * w


def sky_image(allsky: np.ndarray, xinterp: np.ndarray, yinterp: np.ndarray) -> np.ndarray:
  """Full-size sky (counts) from the coarse ALLSKY grid: bilinear at (YINTERP, XINTERP), constant
  beyond the grid edges (as IDL's `interpolate(..., /grid)` in the data model recipe; ALLSKY can
  have fewer rows than YINTERP reaches at the end of runs, where the data model asks for constant
  extrapolation)."""
  rows = _linear_along(np.asarray(allsky, np.float64), yinterp, axis=0)
  return _linear_along(rows, xinterp, axis=1).astype(np.float32)


def noise_map(image: np.ndarray, calib: np.ndarray, sky: np.ndarray, gain: float,
              dark_variance: float) -> np.ndarray:
  """Per-pixel sigma in nanomaggies: Poisson noise of the raw counts plus dark variance."""
  calib2d = np.asarray(calib, np.float64)[None, :]
  counts = image / calib2d + sky
  # Raw counts are sky plus sources, so a negative value is noise; it contributes no Poisson variance.
  var_counts = np.maximum(counts, 0.0) / gain + dark_variance
  return (calib2d * np.sqrt(var_counts)).astype(np.float32)


def read_frame(path: str | Path) -> Frame:
  """Reads one SDSS frame file (plain or .bz2) in one pass and derives its sky and noise maps."""
  path = Path(path)
  with warnings.catch_warnings():
    # The headers use the deprecated RADECSYS keyword; astropy fixes it and says so.
    warnings.simplefilter("ignore", FITSFixedWarning)
    # Decompress once into memory: astropy's bz2 reader seeks backwards between HDUs, and every
    # backward seek decompresses the file again from the start.
    raw = bz2.decompress(path.read_bytes()) if path.suffix == ".bz2" else path.read_bytes()
    with fits.open(io.BytesIO(raw)) as hdul:
      header = hdul[0].header.copy()
      image = np.asarray(hdul[0].data, dtype=np.float32)
      calib = np.asarray(hdul[1].data, dtype=np.float32)
      sky_table = hdul[2].data
      allsky = np.asarray(sky_table["ALLSKY"][0], np.float32)
      xinterp = np.asarray(sky_table["XINTERP"][0], np.float64)
      yinterp = np.asarray(sky_table["YINTERP"][0], np.float64)
      wcs = WCS(header)
  band = header["FILTER"].strip()
  # The field number comes from the file name: the header's FRAME is that CCD's own frame sequence
  # number, which differs between the bands of one field (they cross the sky at different times).
  match = _FRAME_NAME.search(path.name)
  run, camcol = int(header["RUN"]), int(header["CAMCOL"])
  field = int(match.group(4)) if match else -1
  if match and (match.group(1), int(match.group(2)), int(match.group(3))) != (band, run, camcol):
    raise ValueError(f"{path}: file name disagrees with header FILTER={band!r} RUN={run} CAMCOL={camcol}")
  if image.shape != (len(yinterp), len(xinterp)) or calib.shape != (image.shape[1],):
    raise ValueError(f"{path}: inconsistent HDU shapes image {image.shape}, calib {calib.shape}, "
                     f"sky interpolation {len(yinterp)}x{len(xinterp)}")
  sky = sky_image(allsky, xinterp, yinterp)
  gain, dark_variance = sdss_gain(camcol, band, run), sdss_dark_variance(camcol, band, run)
  noise = noise_map(image, calib, sky, gain, dark_variance)
  return Frame(band=band, run=run, camcol=camcol, field=field, image=image, calib=calib, sky=sky,
               noise=noise, wcs=wcs, gain=gain, dark_variance=dark_variance, header=header)


# ----------------------------------------------------------------------------------------------
# Source detection (SEP)

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


def _extract(frame: Frame, thresh: float, minarea: int, deblend_nthresh: int = 32,
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


def _windowed(data: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
  objects, data = _extract(frame, thresh, minarea, deblend_nthresh, deblend_cont)
  x, y = _windowed(data, objects["x"], objects["y"])
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


# ----------------------------------------------------------------------------------------------
# One field: five frames, aligned through their WCS onto the r grid

@dataclasses.dataclass(frozen=True, eq=False)
class Field:
  """The five frames of one field and the per-band shifts (band pixels) that correct their WCS."""
  name: str
  frames: dict[str, Frame]  # band -> Frame, in BANDS order
  offsets: dict[str, tuple[float, float]]  # band -> (dx, dy) added to WCS-mapped band pixel coordinates
  n_matched: dict[str, int]  # band -> number of sources the offset was measured from (0: not measured)

  @property
  def reference(self) -> Frame:
    return self.frames[REFERENCE_BAND]


def r_pixels_to_sky(field: Field, x, y) -> tuple[np.ndarray, np.ndarray]:
  """r-band pixel coordinates -> (RA, Dec) in degrees through the r WCS."""
  ra, dec = field.reference.wcs.pixel_to_world_values(np.asarray(x, np.float64), np.asarray(y, np.float64))
  return np.asarray(ra), np.asarray(dec)


def sky_to_r_pixels(field: Field, ra, dec) -> tuple[np.ndarray, np.ndarray]:
  """(RA, Dec) in degrees -> r-band pixel coordinates through the r WCS."""
  x, y = field.reference.wcs.world_to_pixel_values(np.asarray(ra, np.float64), np.asarray(dec, np.float64))
  return np.asarray(x), np.asarray(y)


def _wcs_r_to_band(frames: dict, band: str, x, y) -> tuple[np.ndarray, np.ndarray]:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if band == REFERENCE_BAND:
    return x, y
  ra, dec = frames[REFERENCE_BAND].wcs.pixel_to_world_values(x, y)
  bx, by = frames[band].wcs.world_to_pixel_values(ra, dec)
  return np.asarray(bx), np.asarray(by)


def r_to_band_pixels(field: Field, band: str, x, y) -> tuple[np.ndarray, np.ndarray]:
  """r-band pixel coordinates -> that band's pixel coordinates (WCS chain plus measured offset)."""
  if band not in field.frames:
    raise KeyError(f"unknown band {band!r}; valid bands: {', '.join(field.frames)}")
  bx, by = _wcs_r_to_band(field.frames, band, x, y)
  dx, dy = field.offsets[band]
  return bx + dx, by + dy


def _match_median(predicted: np.ndarray, detected: np.ndarray, radius: float) -> tuple[np.ndarray, int]:
  """Median (detected - predicted) over nearest-neighbour pairs closer than `radius`."""
  if len(predicted) == 0 or len(detected) == 0:
    return np.zeros(2), 0
  dist, idx = cKDTree(detected).query(predicted, distance_upper_bound=radius)
  ok = np.isfinite(dist)
  if not ok.any():
    return np.zeros(2), 0
  return np.median(detected[idx[ok]] - predicted[ok], axis=0), int(ok.sum())


def native_positions(frame: Frame, thresh: float = 5.0) -> np.ndarray:
  """(n, 2) windowed (x, y) of the sources SEP finds directly on a frame's own pixels."""
  objects, data = _extract(frame, thresh, DETECT_MINAREA)
  objects = objects[(objects["flag"] & (sep.OBJ_TRUNC | sep.OBJ_SINGU)) == 0]
  x, y = _windowed(data, objects["x"], objects["y"])
  return np.stack([x, y], axis=1)


def measure_band_offsets(frames: dict, x_r, y_r, min_matches: int = 10,
                         native: dict | None = None) -> tuple[dict, dict]:
  """Per-band constant shifts that make the WCS chain r -> band agree with the band's own pixels.

  The r positions (x_r, y_r) are mapped through the WCS; each is matched to the nearest source
  detected on the native band frame (3 px, then 1 px around the first median) and the median
  residual is the band's offset. Bands with fewer than `min_matches` matches get (0, 0).
  `native` may pass precomputed `native_positions` per band.
  """
  offsets, n_matched = {REFERENCE_BAND: (0.0, 0.0)}, {REFERENCE_BAND: 0}
  for band, frame in frames.items():
    if band == REFERENCE_BAND:
      continue
    detected = native[band] if native is not None else native_positions(frame)
    bx, by = _wcs_r_to_band(frames, band, x_r, y_r)
    predicted = np.stack([bx, by], axis=1)
    shift, _ = _match_median(predicted, detected, radius=3.0)
    refined, n = _match_median(predicted + shift, detected, radius=1.0)
    total = shift + refined
    offsets[band] = (float(total[0]), float(total[1])) if n >= min_matches else (0.0, 0.0)
    n_matched[band] = n if n >= min_matches else 0
  return offsets, n_matched


def find_frame_files(field_dir: str | Path) -> dict:
  """band -> path of the field's frame file; fails naming what is missing or ambiguous."""
  field_dir = Path(field_dir)
  found = {}
  for path in sorted(field_dir.glob("frame-*.fits*")):
    match = _FRAME_NAME.search(path.name)
    if match:
      found.setdefault(match.group(1), []).append(path)
  missing = [b for b in BANDS if b not in found]
  ambiguous = {b: [p.name for p in v] for b, v in found.items() if len(v) > 1}
  if missing or ambiguous:
    raise FileNotFoundError(f"{field_dir}: need one frame-{{band}}-RRRRRR-C-FFFF.fits[.bz2] per band "
                            f"{', '.join(BANDS)}; missing {missing}, ambiguous {ambiguous}")
  return {b: found[b][0] for b in BANDS}


def load_field(field_dir: str | Path, refine_alignment: bool = True, min_matches: int = 10) -> Field:
  """Reads the five frames of a field; measures each band's alignment offset from matched sources."""
  field_dir = Path(field_dir)
  frames = {band: read_frame(path) for band, path in find_frame_files(field_dir).items()}
  ids = {(f.run, f.camcol, f.field) for f in frames.values()}
  if len(ids) != 1:
    raise ValueError(f"{field_dir}: frames from different fields {sorted(ids)}")
  offsets = {b: (0.0, 0.0) for b in BANDS}
  n_matched = {b: 0 for b in BANDS}
  if refine_alignment:
    stars = detect_frame_sources(frames[REFERENCE_BAND], snr=20.0)
    measured, counts = measure_band_offsets(frames, stars["x"], stars["y"], min_matches=min_matches)
    offsets.update(measured)
    n_matched.update(counts)
  return Field(name=field_dir.name, frames=frames, offsets=offsets, n_matched=n_matched)


def detect_sources(field: Field, snr: float = DETECT_SNR, thresh: float = DETECT_THRESH_SIGMA,
                   minarea: int = DETECT_MINAREA, deblend_nthresh: int = 32, deblend_cont: float = 0.005,
                   edge: float = CUTOUT_SIZE / 2, aperture_radius: float = APERTURE_RADIUS,
                   saturation_counts: float = SATURATION_COUNTS, exclude_flagged: bool = True) -> np.ndarray:
  """SEP sources on the r band, as a `SOURCE_DTYPE` array sorted by decreasing S/N.

  Detection: residual background (64 px mesh) removed, pixels above `thresh` x the sky noise after
  SEP's 3x3 matched filter, >= `minarea` pixels, deblending with `deblend_nthresh` levels and
  contrast `deblend_cont`. x, y are windowed centroids (r pixels, 0-based); flux/fluxerr in
  nanomaggies in a circle of `aperture_radius` pixels with the noise map; snr = flux / fluxerr, kept
  when >= `snr`. Sources closer than `edge` pixels to the r frame edge are dropped; with
  `exclude_flagged`, so are truncated/overflowed/singular ones and those with a pixel at or above
  `saturation_counts` raw counts in their bounding box (`saturated`; `max_counts` is that maximum).
  """
  return detect_frame_sources(field.reference, snr=snr, thresh=thresh, minarea=minarea,
                              deblend_nthresh=deblend_nthresh, deblend_cont=deblend_cont, edge=edge,
                              aperture_radius=aperture_radius, saturation_counts=saturation_counts,
                              exclude_flagged=exclude_flagged)


# ----------------------------------------------------------------------------------------------
# Cutouts

def cutout_offsets(size: int = CUTOUT_SIZE, centre: float | None = None) -> np.ndarray:
  """Offsets of the cutout's pixel centres from the object, j - centre; default centre size // 2 (32 for 64,
  `stargal_jax.CUTOUT_CENTRE`)."""
  centre = size // 2 if centre is None else float(centre)
  return np.arange(size, dtype=np.float64) - centre


def resample(image: np.ndarray, x: np.ndarray, y: np.ndarray, order: int = 3,
             pad: int = _SPLINE_PAD) -> np.ndarray:
  """`image` interpolated at (x, y) (any equal shapes) from a padded window around them.

  Equals `map_coordinates` on the whole image (mode 'mirror') to ~0.27^pad of the local signal,
  at a fraction of the cost. Points whose pixel centre lies outside the image are NaN.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  height, width = image.shape
  out = np.full(x.shape, np.nan, np.float64)
  inside = (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)
  if not inside.any():
    return out
  x0 = max(int(np.floor(x[inside].min())) - pad, 0)
  x1 = min(int(np.ceil(x[inside].max())) + pad + 1, width)
  y0 = max(int(np.floor(y[inside].min())) - pad, 0)
  y1 = min(int(np.ceil(y[inside].max())) + pad + 1, height)
  window = np.asarray(image[y0:y1, x0:x1], np.float64)
  coords = np.stack([y[inside] - y0, x[inside] - x0])
  out[inside] = ndimage.map_coordinates(window, coords, order=order, mode="mirror")
  return out


def _positions_to_r_pixels(field: Field, positions, coords: str) -> tuple[np.ndarray, np.ndarray]:
  if coords not in COORD_KINDS:
    raise ValueError(f"unknown coords {coords!r}; valid: {', '.join(COORD_KINDS)}")
  positions = np.asarray(positions, np.float64).reshape(-1, 2)
  if coords == "sky":
    return sky_to_r_pixels(field, positions[:, 0], positions[:, 1])
  return positions[:, 0], positions[:, 1]


def cut_cutouts(field: Field, positions, size: int = CUTOUT_SIZE, coords: str = "pixel",
                centre: float | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
  """Cutouts centred on `positions`: (N, 2) r-band pixel (x, y) (coords='pixel') or RA, Dec in
  degrees (coords='sky', through the r WCS). The object lands at array coordinate `centre` on both
  axes (default (size - 1) / 2, see the module docstring).

  Returns images (N, 5, size, size) float32 nanomaggies, noise (same shape, sigma in nanomaggies;
  NaN where the image is NaN), and meta: dict of (N,) arrays x, y (r pixels), ra, dec, n_nan.
  """
  x, y = _positions_to_r_pixels(field, positions, coords)
  n = len(x)
  offsets = cutout_offsets(size, centre)
  grid_x = x[:, None, None] + offsets[None, None, :]  # (N, 1, size): column offsets
  grid_y = y[:, None, None] + offsets[None, :, None]  # (N, size, 1): row offsets
  grid_x, grid_y = np.broadcast_arrays(grid_x, grid_y)
  images = np.empty((n, len(BANDS), size, size), np.float32)
  noise = np.empty_like(images)
  for b, band in enumerate(BANDS):
    frame = field.frames[band]
    bx, by = r_to_band_pixels(field, band, grid_x, grid_y)  # one WCS call for all cutouts
    variance = np.square(frame.noise, dtype=np.float64)
    for k in range(n):
      images[k, b] = resample(frame.image, bx[k], by[k], order=3)
      noise[k, b] = np.sqrt(resample(variance, bx[k], by[k], order=1))
  ra, dec = r_pixels_to_sky(field, x, y)
  meta = {"x": x, "y": y, "ra": ra, "dec": dec,
          "n_nan": np.isnan(images).sum(axis=(1, 2, 3))}
  return images, noise, meta


# ----------------------------------------------------------------------------------------------
# Figure

def plot_cutouts(images: np.ndarray, path: str | Path, titles: Sequence[str] | None = None,
                 ncols: int = 4, stretch: float = 0.4, q: float = 10.0, panel_inches: float = 1.5) -> None:
  """gri composites (Lupton et al. 2004 asinh, i->red, r->green, g->blue) of (N, 5, H, W) cutouts."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from astropy.visualization import make_lupton_rgb

  g, r, i = (BANDS.index(b) for b in "gri")
  n = len(images)
  nrows = int(np.ceil(n / ncols))
  fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * panel_inches, nrows * panel_inches), squeeze=False)
  for k, ax in enumerate(axes.ravel()):
    ax.set_axis_off()
    if k >= n:
      continue
    clean = np.nan_to_num(np.asarray(images[k], np.float64), nan=0.0)
    ax.imshow(make_lupton_rgb(clean[i], clean[r], clean[g], stretch=stretch, Q=q), origin="lower")
    if titles is not None:
      ax.set_title(titles[k], fontsize=7)
  fig.tight_layout(pad=0.3)
  fig.savefig(path, dpi=72, pil_kwargs={"optimize": True})
  plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Command line

_LABEL_COLUMNS = ("objID", "class", "z")


def read_positions_csv(path: str | Path) -> tuple[np.ndarray, str, dict | None]:
  """(N, 2) positions, their kind ('sky' for ra,dec; 'pixel' for 0-based r-band x,y) and labels
  {objID, class, z} when all three columns are present (None when none are)."""
  with open(path, newline="") as handle:
    reader = csv.DictReader(handle)
    rows = list(reader)
    columns = {c.strip() for c in reader.fieldnames or ()}
  rows = [{k.strip(): v for k, v in row.items()} for row in rows]
  if {"ra", "dec"} <= columns:
    coords, keys = "sky", ("ra", "dec")
  elif {"x", "y"} <= columns:
    coords, keys = "pixel", ("x", "y")
  else:
    raise ValueError(f"{path}: need columns ra,dec or x,y; found {sorted(columns)}")
  positions = np.array([[float(row[keys[0]]), float(row[keys[1]])] for row in rows], np.float64).reshape(-1, 2)
  present = [c for c in _LABEL_COLUMNS if c in columns]
  if not present:
    return positions, coords, None
  if len(present) != len(_LABEL_COLUMNS):
    raise ValueError(f"{path}: labels need all of {', '.join(_LABEL_COLUMNS)}; found only {present}")
  classes = [row["class"].strip().upper() for row in rows]
  unknown = sorted(set(classes) - set(formats.CLASS_CODES))
  if unknown:
    raise ValueError(f"{path}: unknown classes {unknown}; valid classes: {', '.join(formats.CLASS_CODES)}")
  labels = {"objID": np.array([int(row["objID"]) for row in rows], np.int64),
            "class": np.array(classes), "z": np.array([float(row["z"]) for row in rows], np.float64)}
  return positions, coords, labels


def _write_cutout_files(out: Path, stem: str, images: np.ndarray, labels: dict | None,
                        per_file: int) -> list[tuple[str, int]]:
  """Writes images (and labels) in the study's format, `per_file` records a file; returns (file, record) per image."""
  where = []
  for start in range(0, len(images), per_file):
    stop = min(start + per_file, len(images))
    name = f"{stem}_{start:06d}.npy"
    if labels is None:
      formats.write_unlabelled(out / name, images[start:stop])
    else:
      formats.write_labelled(out / name, labels["objID"][start:stop], images[start:stop],
                             labels["class"][start:stop], labels["z"][start:stop])
    where += [(name, k) for k in range(stop - start)]
  return where


def central_aperture_flux(images: np.ndarray, radius: float = APERTURE_RADIUS,
                          centre: float | None = None) -> np.ndarray:
  """Flux (nanomaggies) of (N, H, W) images in pixels whose centre is within `radius` of `centre`."""
  offsets = cutout_offsets(images.shape[-1], centre)
  inside = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2
  return np.nansum(np.where(inside, images, 0.0), axis=(-2, -1))


def _figure_selection(fluxes: np.ndarray, count: int) -> np.ndarray:
  """Indices spread evenly in brightness rank, so the figure shows bright and faint objects."""
  order = np.argsort(-fluxes)
  picks = np.linspace(0, len(order) - 1, min(count, len(order))).round().astype(int)
  return order[np.unique(picks)]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m stargal_jax.sdss_frames",
    description="Cut 5-band 64x64 cutouts (study .npy format) from one SDSS field's frame files.")
  parser.add_argument("--field", required=True, help="folder with frame-{u,g,r,i,z}-RRRRRR-C-FFFF.fits.bz2")
  parser.add_argument("--positions", help="CSV with ra,dec (deg) or x,y (r-band pixels, 0-based, first "
                      "pixel centre at 0,0); optional objID,class,z -> labelled files")
  parser.add_argument("--detect-snr", type=float, default=DETECT_SNR,
                      help="without --positions: detect on r and keep sources with aperture S/N >= this")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--per-file", type=int, default=1, help="records per .npy file (the study: 1 unlabelled)")
  parser.add_argument("--keep-partial", action="store_true",
                      help="also write cutouts with NaN pixels (parts outside a band's frame)")
  parser.add_argument("--no-refine", action="store_true", help="use the frames' WCS without measured band offsets")
  parser.add_argument("--centre", type=float, default=None,
                      help="array coordinate of the object on both axes (default 32: frame[y-32:y+32, x-32:x+32], "
                      "the project's convention; 31.5 = between the two middle pixels)")
  parser.add_argument("--figure", help="also write a gri figure of up to 16 of the cutouts to this path")
  args = parser.parse_args(argv)
  if args.per_file < 1:
    parser.error("--per-file must be >= 1")

  field = load_field(args.field, refine_alignment=not args.no_refine)
  labels = None
  if args.positions:
    positions, coords, labels = read_positions_csv(args.positions)
  else:
    sources = detect_sources(field, snr=args.detect_snr)
    positions, coords = np.stack([sources["x"], sources["y"]], axis=1), "pixel"
  images, noise, meta = cut_cutouts(field, positions, coords=coords, centre=args.centre)
  complete = meta["n_nan"] == 0
  keep = np.ones(len(images), bool) if args.keep_partial else complete
  kept = np.flatnonzero(keep)

  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  kept_labels = None if labels is None else {k: v[kept] for k, v in labels.items()}
  where = _write_cutout_files(out, field.name, images[kept], kept_labels, args.per_file)
  np.save(out / "noise.npy", noise[kept], allow_pickle=False)
  location = dict(zip(kept.tolist(), where))
  noise_row = {int(k): row for row, k in enumerate(kept)}
  with open(out / "cutouts.csv", "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["index", "field", "x", "y", "ra", "dec"] + (list(_LABEL_COLUMNS) if labels else [])
                    + ["n_nan", "file", "record", "noise_row"])
    for k in range(len(images)):
      label_cells = [labels["objID"][k], labels["class"][k], labels["z"][k]] if labels else []
      file, record = location.get(k, ("", -1))
      writer.writerow([k, field.name, f"{meta['x'][k]:.4f}", f"{meta['y'][k]:.4f}", f"{meta['ra'][k]:.8f}",
                       f"{meta['dec'][k]:.8f}"] + label_cells + [int(meta["n_nan"][k]), file, record,
                                                               noise_row.get(k, -1)])
  with open(out / "alignment.json", "w") as handle:
    alignment = {"field": field.name, "offsets_band_pixels": field.offsets, "n_matched": field.n_matched}
    json.dump(alignment, handle, indent=1)
  if args.figure and len(kept):
    fluxes = central_aperture_flux(images[kept][:, BANDS.index("r")], centre=args.centre)
    pick = _figure_selection(fluxes, 16)
    titles = [f"r_ap={22.5 - 2.5 * np.log10(f):.1f}" if f > 0 else "r_ap<0" for f in fluxes[pick]]
    plot_cutouts(images[kept][pick], args.figure, titles=titles)
  print(f"{field.name}: {len(images)} positions, {len(kept)} written to {out} "
        f"({int((~complete).sum())} partly outside a frame{'' if args.keep_partial else ', skipped'}); "
        f"band offsets (px) " + ", ".join(f"{b} {dx:+.2f},{dy:+.2f}" for b, (dx, dy) in field.offsets.items()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
