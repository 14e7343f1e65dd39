"""A field: the five frames of one run-camcol-field with their WCS, aligned to the r-band pixel grid by measured
per-band offsets; sources detected on its r band.

Alignment policy. A band none of whose bright r-band sources (at least `min_matches` of them) finds a
counterpart on its own frame through the WCS has a wrong WCS or is a frame of somewhere else: `load_field`
refuses the field (FrameError naming the file; `refine_alignment=False`, the CLI's `--no-refine`, cuts with the
WCS alone on purpose). A band with some matches but fewer than `min_matches` (a sparse u band, say; on the eight
real fields every band matched at least 31) keeps the WCS alone, flagged in `Field.alignment` and
alignment.json: the WCS between bands is off by under 1 px there (measured), so its cutouts remain usable, and
the flag says they were not refined.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import sep
from scipy.spatial import cKDTree

from stargal_jax import BANDS, registry
from stargal_jax.sdss_frames.detect import detect_frame_sources, extract_objects, windowed_centroids
from stargal_jax.sdss_frames.frames import (APERTURE_RADIUS, CUTOUT_SIZE, DETECT_MINAREA, DETECT_SNR,
                                            DETECT_THRESH_SIGMA, FRAME_NAME, REFERENCE_BAND, SATURATION_COUNTS,
                                            Frame, FrameError, read_frame)


@dataclasses.dataclass(frozen=True, eq=False)
class Field:
  """The five frames of one field and the per-band shifts (band pixels) that correct their WCS."""
  name: str
  frames: dict[str, Frame]  # band -> Frame, in BANDS order
  offsets: dict[str, tuple[float, float]]  # band -> (dx, dy) added to WCS-mapped band pixel coordinates
  n_matched: dict[str, int]  # band -> number of sources the offset was measured from (0: not measured)
  alignment: dict[str, str] = dataclasses.field(default_factory=dict)  # band -> how it is aligned (see above)

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
  registry.lookup(field.frames, band, "band")
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
  objects, data = extract_objects(frame, thresh, DETECT_MINAREA)
  objects = objects[(objects["flag"] & (sep.OBJ_TRUNC | sep.OBJ_SINGU)) == 0]
  x, y = windowed_centroids(data, objects["x"], objects["y"])
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
    match = FRAME_NAME.search(path.name)
    if match:
      found.setdefault(match.group(1), []).append(path)
  missing = [b for b in BANDS if b not in found]
  ambiguous = {b: [p.name for p in v] for b, v in found.items() if len(v) > 1}
  if missing or ambiguous:
    raise FileNotFoundError(f"{field_dir}: need one frame-{{band}}-RRRRRR-C-FFFF.fits[.bz2] per band "
                            f"{', '.join(BANDS)}; missing {missing}, ambiguous {ambiguous}")
  return {b: found[b][0] for b in BANDS}


def _alignment(frames: dict, stars: np.ndarray, raw_matches: dict, min_matches: int, files: dict) -> dict[str, str]:
  """How each band is aligned (the policy in the module docstring); FrameError for a band that matched none."""
  status = {REFERENCE_BAND: "reference"}
  for band in frames:
    if band == REFERENCE_BAND:
      continue
    n = raw_matches[band]
    if len(stars) < min_matches:
      status[band] = f"WCS only: {len(stars)} bright r-band sources, fewer than {min_matches} to measure an offset"
    elif n == 0:
      raise FrameError(f"{files[band]}: none of the {len(stars)} bright r-band sources has a counterpart within 3 px "
                       f"on this {band} frame through the WCS: its WCS is wrong or it is a frame of another field "
                       f"(--no-refine cuts with the WCS alone)")
    elif n < min_matches:
      status[band] = f"WCS only: {n} sources matched, fewer than {min_matches}"
    else:
      status[band] = f"measured from {n} sources"
  return status


def load_field(field_dir: str | Path, refine_alignment: bool = True, min_matches: int = 10) -> Field:
  """Reads the five frames of a field; measures each band's alignment offset from matched sources (see the
  module docstring for a band that matches none or few)."""
  field_dir = Path(field_dir)
  files = find_frame_files(field_dir)
  frames = {band: read_frame(path) for band, path in files.items()}
  ids = {(f.run, f.camcol, f.field) for f in frames.values()}
  if len(ids) != 1:
    raise FrameError(f"{field_dir}: frames from different fields {sorted(ids)}")
  offsets = {b: (0.0, 0.0) for b in BANDS}
  n_matched = {b: 0 for b in BANDS}
  alignment = {b: "reference" if b == REFERENCE_BAND else "WCS only: not refined (refine_alignment=False)"
               for b in BANDS}
  if refine_alignment:
    stars = detect_frame_sources(frames[REFERENCE_BAND], snr=20.0)
    native = {band: native_positions(frame) for band, frame in frames.items() if band != REFERENCE_BAND}
    measured, counts = measure_band_offsets(frames, stars["x"], stars["y"], min_matches=min_matches, native=native)
    raw = measure_band_offsets(frames, stars["x"], stars["y"], min_matches=1, native=native)[1]  # below the bar too
    alignment = _alignment(frames, stars, raw, min_matches, files)
    offsets.update(measured)
    n_matched.update(counts)
  return Field(name=field_dir.name, frames=frames, offsets=offsets, n_matched=n_matched, alignment=alignment)


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
