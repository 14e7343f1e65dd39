"""A field's objects and their segmentation map on the r-band frame grid (SExtractor's segmentation-map convention).

Objects: the cutouts of a field (`stargal_jax.sdss_frames`) at SEP detections on r or at given positions, with
per-object flags: non-finite pixels, saturation (a pixel at or above `sdss_frames.SATURATION_COUNTS` raw counts
within SATURATION_RADIUS_PX of the position in any band), and a cutout that reaches beyond the r frame.

Map: an int32 image with the r frame's shape and WCS, 0 = background, and each object's pixels holding its
catalogue row id (1-based, the catalogue's `id` column). Two sources of object pixels:
- `run`: a finished segmentation (`segmentation` or `seg_cvae` run): each cutout's central segment (mask label 1)
  is placed back on the frame (cutout pixel (i, j) of an object at (x, y) is frame pixel
  (round(y) - 32 + i, round(x) - 32 + j)), and its neighbour segments (labels >= 2) count as neighbours;
- `sep`: SEP run once on the whole r frame with the detection's settings (`sdss_frames.detect`), its segmentation
  map kept; each object claims the SEP segment under its centre pixel (or the nearest segment pixel within
  CLAIM_RADIUS_PX); neighbours are the other SEP segments inside its 64 x 64 cutout.
Overlaps (OVERLAP_RULE): a pixel claimed by several objects (overlapping cutout masks, or one SEP segment
claimed by several positions) goes to the object whose centre is nearest to the pixel centre.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import sep
from astropy.io import fits
from astropy.wcs import WCS

from stargal_jax import BANDS, CUTOUT_CENTRE, catalogue, sdss_frames
from stargal_jax.segment import labelling

MAP_DTYPE = np.int32
SATURATION_RADIUS_PX = sdss_frames.APERTURE_RADIUS  # 2": the object's core
CLAIM_RADIUS_PX = 2.0
SEP_PIXSTACK = 5_000_000  # crowded Galactic-plane frames overflow SEP's default pixel stack
SEP_SUB_OBJECTS = 4096
OVERLAP_RULE = "a pixel claimed by several objects goes to the one whose centre is nearest"
SEGMENTATION_SOURCES = ("run", "sep")


@dataclasses.dataclass(frozen=True, eq=False)
class FieldObjects:
  """The objects of one field: positions (r-frame pixels, 0-based; sky), cutouts and flags, row for row."""
  field: sdss_frames.Field
  x: np.ndarray
  y: np.ndarray
  ra: np.ndarray
  dec: np.ndarray
  objID: np.ndarray  # -1 where the input gave none
  images: np.ndarray  # (N, 5, 64, 64) nanomaggies, NaN outside a band's frame
  noise: np.ndarray
  n_nonfinite: np.ndarray
  saturated: np.ndarray
  edge: np.ndarray
  n_dropped: int  # positions or detections left out (flagged, without keep_flagged)

  def __len__(self) -> int:
    return len(self.x)


def saturated_near(field: sdss_frames.Field, x, y, radius: float = SATURATION_RADIUS_PX,
                   limit: float = sdss_frames.SATURATION_COUNTS) -> np.ndarray:
  """(N,) True where any band has a pixel at or above `limit` raw counts within `radius` px of r-pixel (x, y)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  out = np.zeros(len(x), bool)
  for band in BANDS:
    frame = field.frames[band]
    counts = frame.counts
    bx, by = sdss_frames.r_to_band_pixels(field, band, x, y)
    height, width = frame.shape
    for k in np.flatnonzero(np.isfinite(bx) & np.isfinite(by)):
      x0, x1 = max(int(np.ceil(bx[k] - radius)), 0), min(int(np.floor(bx[k] + radius)) + 1, width)
      y0, y1 = max(int(np.ceil(by[k] - radius)), 0), min(int(np.floor(by[k] + radius)) + 1, height)
      if x0 >= x1 or y0 >= y1:
        continue
      yy, xx = np.mgrid[y0:y1, x0:x1]
      inside = (xx - bx[k]) ** 2 + (yy - by[k]) ** 2 <= radius ** 2
      out[k] |= bool((counts[y0:y1, x0:x1][inside] >= limit).any())
  return out


def reaches_edge(shape: tuple[int, int], x, y, size: int = sdss_frames.CUTOUT_SIZE,
                 centre: float = CUTOUT_CENTRE) -> np.ndarray:
  """(N,) True where the cutout's pixel centres x - centre .. x - centre + size - 1 (likewise y) leave the frame."""
  height, width = shape
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  low, high = -centre, size - 1 - centre
  return (x + low < -0.5) | (x + high > width - 0.5) | (y + low < -0.5) | (y + high > height - 0.5)


def field_objects(field: sdss_frames.Field, positions=None, coords: str = "pixel", objID=None,
                  detect_snr: float = sdss_frames.DETECT_SNR, keep_flagged: bool = False,
                  max_objects: int | None = None) -> FieldObjects:
  """The field's objects: at `positions` ((N, 2) r pixels or ra, dec with coords='sky'), else SEP detections
  on r with S/N >= `detect_snr` (highest S/N first, at most `max_objects`). Without `keep_flagged`, detections
  SEP flags (truncated, saturated, within 32 px of the edge) are not made, and cutouts with non-finite pixels
  are left out (counted in `n_dropped`); with it every one is kept and flagged."""
  if positions is None:
    sources = sdss_frames.detect_sources(field, snr=detect_snr, exclude_flagged=not keep_flagged,
                                         edge=0.0 if keep_flagged else sdss_frames.CUTOUT_SIZE / 2)
    sources = sources[:max_objects] if max_objects else sources
    positions, coords, objID = np.stack([sources["x"], sources["y"]], axis=1), "pixel", None
  images, noise, meta = sdss_frames.cut_cutouts(field, positions, coords=coords)
  objID = np.full(len(images), -1, np.int64) if objID is None else np.asarray(objID, np.int64)
  n_nonfinite = np.count_nonzero(~np.isfinite(images), axis=(1, 2, 3)).astype(np.int32)
  keep = np.ones(len(images), bool) if keep_flagged else n_nonfinite == 0
  kept = np.flatnonzero(keep)
  x, y = meta["x"][kept], meta["y"][kept]
  return FieldObjects(field, x, y, meta["ra"][kept], meta["dec"][kept], objID[kept], images[kept], noise[kept],
                      n_nonfinite[kept], saturated_near(field, x, y), reaches_edge(field.reference.shape, x, y),
                      n_dropped=int((~keep).sum()))


@contextlib.contextmanager
def _sep_limits():
  """SEP's global limits raised for a whole frame, restored afterwards (they slow later small extractions)."""
  pixstack, sub_objects = sep.get_extract_pixstack(), sep.get_sub_object_limit()
  sep.set_extract_pixstack(max(pixstack, SEP_PIXSTACK))
  sep.set_sub_object_limit(max(sub_objects, SEP_SUB_OBJECTS))
  try:
    yield
  finally:
    sep.set_extract_pixstack(pixstack)
    sep.set_sub_object_limit(sub_objects)


def sep_frame_segments(frame: sdss_frames.Frame, thresh: float = sdss_frames.DETECT_THRESH_SIGMA,
                       minarea: int = sdss_frames.DETECT_MINAREA, deblend_nthresh: int = 32,
                       deblend_cont: float = 0.005) -> np.ndarray:
  """SEP's segmentation map (H, W) int32 of a whole frame (0 background, SEP object k at k + 1), with the
  settings of `sdss_frames.detect_sources`: residual background on a 64 px mesh removed, threshold relative to
  the sky-plus-dark noise, 3 x 3 matched filter, deblending."""
  image = np.ascontiguousarray(frame.image, dtype=np.float64)
  data = image - sep.Background(image, bw=64, bh=64, fw=3, fh=3).back()
  sky_noise = sdss_frames.noise_map(np.zeros_like(frame.image), frame.calib, frame.sky, frame.gain,
                                    frame.dark_variance)
  with _sep_limits():
    _, segmap = sep.extract(data, thresh, err=np.ascontiguousarray(sky_noise, dtype=np.float64), minarea=minarea,
                            deblend_nthresh=deblend_nthresh, deblend_cont=deblend_cont, segmentation_map=True)
  return np.asarray(segmap, MAP_DTYPE)


def segment_under(segments: np.ndarray, x, y, radius: float = CLAIM_RADIUS_PX) -> np.ndarray:
  """(N,) the segment id under each r pixel (x, y) (0-based), else the nearest segment pixel's within
  `radius`, else 0."""
  height, width = segments.shape
  out = np.zeros(len(x), MAP_DTYPE)
  reach = int(np.ceil(radius))
  for k, (xk, yk) in enumerate(zip(np.asarray(x, np.float64), np.asarray(y, np.float64))):
    col, row = int(np.floor(xk + 0.5)), int(np.floor(yk + 0.5))
    if 0 <= row < height and 0 <= col < width and segments[row, col] > 0:
      out[k] = segments[row, col]
      continue
    r0, r1, c0, c1 = max(row - reach, 0), min(row + reach + 1, height), max(col - reach, 0), min(col + reach + 1, width)
    if r0 >= r1 or c0 >= c1:
      continue
    block = segments[r0:r1, c0:c1]
    rows, cols = np.nonzero(block)
    if rows.size:
      distance = np.hypot(cols + c0 - xk, rows + r0 - yk)
      nearest = np.argmin(distance)
      if distance[nearest] <= radius:
        out[k] = block[rows[nearest], cols[nearest]]
  return out


def resolve_claims(shape: tuple[int, int], claims: Sequence[tuple[int, np.ndarray, np.ndarray]], x, y) -> np.ndarray:
  """The map (H, W) int32 from claims (object row k, pixel rows, pixel columns): each pixel gets id k + 1 of the
  claiming object whose centre (x[k], y[k]) is nearest (OVERLAP_RULE); unclaimed pixels 0."""
  out = np.zeros(shape, MAP_DTYPE)
  if not claims:
    return out
  owner = np.concatenate([np.full(len(rows), k, np.int64) for k, rows, _ in claims])
  rows = np.concatenate([np.asarray(r, np.int64) for _, r, _ in claims])
  cols = np.concatenate([np.asarray(c, np.int64) for _, _, c in claims])
  distance = np.hypot(cols - np.asarray(x)[owner], rows - np.asarray(y)[owner])
  flat = rows * shape[1] + cols
  order = np.lexsort((owner, distance, flat))  # by pixel, then nearest centre, then row order
  first = np.r_[True, flat[order][1:] != flat[order][:-1]]
  chosen = order[first]
  out.ravel()[flat[chosen]] = (owner[chosen] + 1).astype(MAP_DTYPE)
  return out


def map_from_sep(segments: np.ndarray, x, y) -> tuple[np.ndarray, np.ndarray]:
  """(map, neighbours): the catalogue map from a frame's SEP segments (module docstring, `sep`) and each object's
  number of other SEP segments inside its 64 x 64 cutout."""
  own = segment_under(segments, x, y)
  flat = segments.ravel()
  labelled = np.flatnonzero(flat)
  order = labelled[np.argsort(flat[labelled], kind="stable")]
  ids, starts = np.unique(flat[order], return_index=True)
  pixels_of = dict(zip(ids.tolist(), np.split(order, starts[1:])))
  width = segments.shape[1]
  claims = [(k, pixels_of[s] // width, pixels_of[s] % width) for k, s in enumerate(own.tolist()) if s > 0]
  seg_map = resolve_claims(segments.shape, claims, x, y)
  neighbours = np.zeros(len(own), np.int16)
  for k, (block, _, _) in enumerate(_cutout_blocks(segments, x, y)):
    present = np.unique(block[block > 0])
    neighbours[k] = int(np.count_nonzero(present != own[k]))
  return seg_map, neighbours


def _cutout_blocks(image: np.ndarray, x, y, size: int = sdss_frames.CUTOUT_SIZE, centre: float = CUTOUT_CENTRE):
  """Per object: (the frame block under its cutout, first row, first column); the block is clipped to the frame."""
  height, width = image.shape
  for xk, yk in zip(np.asarray(x, np.float64), np.asarray(y, np.float64)):
    row0, col0 = int(np.floor(yk + 0.5)) - int(centre), int(np.floor(xk + 0.5)) - int(centre)
    r0, c0 = max(row0, 0), max(col0, 0)
    yield image[r0:min(row0 + size, height), c0:min(col0 + size, width)], row0, col0


def map_from_cutout_masks(shape: tuple[int, int], masks: np.ndarray, x, y,
                          centre: float = CUTOUT_CENTRE) -> tuple[np.ndarray, np.ndarray]:
  """(map, neighbours): each cutout's central segment (label 1) placed back on the frame (module docstring,
  `run`) and each object's number of neighbour segments (labels >= 2)."""
  height, width = shape
  claims = []
  for k, (mask, xk, yk) in enumerate(zip(np.asarray(masks), np.asarray(x, np.float64), np.asarray(y, np.float64))):
    rows, cols = np.nonzero(mask == 1)
    rows = rows + int(np.floor(yk + 0.5)) - int(centre)
    cols = cols + int(np.floor(xk + 0.5)) - int(centre)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    claims.append((k, rows[inside], cols[inside]))
  neighbours = np.array([len(np.unique(m[m >= 2])) for m in np.asarray(masks)], np.int16)
  return resolve_claims(shape, claims, x, y), neighbours


def cutout_masks_of_run(images: np.ndarray, fitted, seg_config) -> np.ndarray:
  """(N, 64, 64) masks of real cutouts by a finished run's segmentation (`fitted_model.segment_real_cutouts`,
  sky residuals removed first as for every real cutout)."""
  from stargal_jax.segment import fitted_model
  return fitted_model.segment_real_cutouts(images, fitted, int(seg_config.k),
                                           labelling.LabelOptions.from_config(seg_config))


def write_segmentation_map(path: str | Path, seg_map: np.ndarray, field: sdss_frames.Field,
                           cards: Sequence[tuple[str, Any, str]] = ()) -> Path:
  """The map as a FITS image (primary HDU, int32) with the r frame's WCS and `cards` (keyword, value, comment)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the SDSS headers' RADECSYS is fixed by astropy, which says so
    header = WCS(field.reference.header).to_header()
  header["BUNIT"] = ("", "catalogue row id (0: background)")
  for keyword, value, comment in cards:
    header[keyword] = (value, catalogue.fitting_comment(keyword, value, comment))
  header["OVERLAP"] = ("nearest centre", OVERLAP_RULE[:47])
  header.add_comment("SExtractor segmentation-map convention: 0 = background, k = the object in row id = k of "
                     "the catalogue. Pixel (x, y) of the catalogue (0-based) is array element [y, x].")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", fits.verify.VerifyWarning)
    fits.PrimaryHDU(np.asarray(seg_map, MAP_DTYPE), header=header).writeto(path, overwrite=True, checksum=True)
  return path
