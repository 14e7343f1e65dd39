"""One SDSS frame file read: image, calibration, sky model and per-pixel noise (see the package docstring for
the data model and the noise recipe); the gain and dark-variance tables; detection and cutout constants.

A frame is checked as it is read, and any problem raises `FrameError` (one line naming the file): an unreadable
bzip2 or FITS file (truncated, garbage), missing HDUs, a missing or invalid band/run/camcol header, a file name
that disagrees with them, and a missing or unusable WCS (an identity WCS would map RA/Dec degrees to pixels and
cut the wrong place)."""

from __future__ import annotations

import bz2
import dataclasses
import io
import re
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from stargal_jax import registry



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
SPLINE_PAD = 12


SOURCE_DTYPE = np.dtype([
  ("x", "<f8"), ("y", "<f8"), ("flux", "<f8"), ("fluxerr", "<f8"), ("snr", "<f8"),
  ("peak", "<f8"), ("max_counts", "<f8"), ("flag", "<i4"), ("saturated", "?"),
])


COORD_KINDS = ("pixel", "sky")


FRAME_NAME = re.compile(r"frame-([ugriz])-(\d{6})-(\d)-(\d{4})\.fits(\.bz2)?$")


# The WCS a frame must carry: axis types, reference point and pixel, and the linear transform (CD, or PC/CDELT).
WCS_KEYWORDS = ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2")
WCS_MATRICES = (("CD1_1", "CD1_2", "CD2_1", "CD2_2"), ("CDELT1", "CDELT2"))
SKY_COLUMNS = ("ALLSKY", "XINTERP", "YINTERP")


class FrameError(ValueError):
  """A frame file (or a field of them) that cannot give correct cutouts; the message names the file."""


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
  value = registry.lookup(registry.lookup(table, camcol, "camcol"), band, "band")
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


def _read_hdus(path: Path) -> tuple:
  """(header, image, calib, allsky, xinterp, yinterp) of a frame file; FrameError when it cannot be read."""
  try:
    data = path.read_bytes()
    # Decompress once into memory: astropy's bz2 reader seeks backwards between HDUs, and every
    # backward seek decompresses the file again from the start.
    raw = bz2.decompress(data) if path.suffix == ".bz2" else data
  except (OSError, EOFError, ValueError) as error:
    if isinstance(error, FileNotFoundError):
      raise
    raise FrameError(f"{path}: not a readable bzip2-compressed file ({error})") from None
  with warnings.catch_warnings():
    # The headers use the deprecated RADECSYS keyword; astropy fixes it and says so. A truncated file is only
    # warned about by astropy: it is an error here.
    warnings.simplefilter("ignore", FITSFixedWarning)
    warnings.filterwarnings("error", message=".*truncated.*")
    try:
      with fits.open(io.BytesIO(raw)) as hdul:
        if len(hdul) < 3:
          raise FrameError(f"{path}: {len(hdul)} HDU(s); a frame has the image, its calibration and its sky "
                           f"model (HDUs 0-2)")
        columns = getattr(hdul[2], "columns", None)
        missing = [c for c in SKY_COLUMNS if columns is None or c not in columns.names]
        if missing:
          raise FrameError(f"{path}: HDU 2 (the sky model) lacks {', '.join(missing)}")
        header = hdul[0].header.copy()
        image = np.asarray(hdul[0].data, dtype=np.float32)
        calib = np.asarray(hdul[1].data, dtype=np.float32)
        sky_table = hdul[2].data
        allsky = np.asarray(sky_table["ALLSKY"][0], np.float32)
        xinterp = np.asarray(sky_table["XINTERP"][0], np.float64)
        yinterp = np.asarray(sky_table["YINTERP"][0], np.float64)
    except FrameError:
      raise
    except (OSError, ValueError, TypeError, IndexError, KeyError, UserWarning) as error:
      raise FrameError(f"{path}: not a readable FITS frame ({str(error).splitlines()[0]})") from None
  return header, image, calib, allsky, xinterp, yinterp


def _identity(path: Path, header: fits.Header) -> tuple[str, int, int, int]:
  """(band, run, camcol, field) from the headers and the file name, checked against each other."""
  missing = [k for k in ("FILTER", "RUN", "CAMCOL") if k not in header]
  if missing:
    raise FrameError(f"{path}: header lacks {', '.join(missing)} (band, run, camcol)")
  band = str(header["FILTER"]).strip()
  try:
    run, camcol = int(header["RUN"]), int(header["CAMCOL"])
  except (TypeError, ValueError):
    raise FrameError(f"{path}: RUN={header['RUN']!r}, CAMCOL={header['CAMCOL']!r} are not integers") from None
  if band not in SDSS_GAIN[1] or camcol not in SDSS_GAIN or run < 1:
    raise FrameError(f"{path}: FILTER={band!r} RUN={run} CAMCOL={camcol}: an SDSS frame has a band of "
                     f"{''.join(SDSS_GAIN[1])}, a run >= 1 and a camcol of 1-6")
  # The field number comes from the file name: the header's FRAME is that CCD's own frame sequence
  # number, which differs between the bands of one field (they cross the sky at different times).
  match = FRAME_NAME.search(path.name)
  field = int(match.group(4)) if match else -1
  if match and (match.group(1), int(match.group(2)), int(match.group(3))) != (band, run, camcol):
    raise FrameError(f"{path}: file name disagrees with header FILTER={band!r} RUN={run} CAMCOL={camcol}")
  return band, run, camcol, field


def checked_wcs(path: Path, header: fits.Header) -> WCS:
  """The frame's celestial WCS; FrameError naming the file when keywords are missing or it is unusable."""
  missing = [k for k in WCS_KEYWORDS if k not in header]
  if not any(all(k in header for k in keys) for keys in WCS_MATRICES):
    missing.append("CD1_1..CD2_2 (or CDELT1, CDELT2 with PC)")
  if missing:
    raise FrameError(f"{path}: no usable WCS: the header lacks {', '.join(missing)}")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", FITSFixedWarning)
    try:
      wcs = WCS(header, naxis=2)
    except Exception as error:  # astropy raises several types for bad WCS values; wcslib's reason is its last line
      reason = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
      raise FrameError(f"{path}: invalid WCS ({reason[-1]})") from None
  matrix = np.asarray(wcs.pixel_scale_matrix, np.float64)
  if not wcs.has_celestial or not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) == 0:
    raise FrameError(f"{path}: no usable WCS: CTYPE1={header['CTYPE1']!r}, CTYPE2={header['CTYPE2']!r}, pixel "
                     f"scale matrix {matrix.tolist()} (need celestial axes and a non-singular transform)")
  return wcs


def read_frame(path: str | Path) -> Frame:
  """Reads one SDSS frame file (plain or .bz2) in one pass, checks it, and derives its sky and noise maps."""
  path = Path(path)
  header, image, calib, allsky, xinterp, yinterp = _read_hdus(path)
  band, run, camcol, field = _identity(path, header)
  wcs = checked_wcs(path, header)
  if image.ndim != 2 or image.shape != (len(yinterp), len(xinterp)) or calib.shape != (image.shape[1],):
    raise FrameError(f"{path}: inconsistent HDU shapes image {image.shape}, calib {calib.shape}, "
                     f"sky interpolation {len(yinterp)}x{len(xinterp)}")
  sky = sky_image(allsky, xinterp, yinterp)
  gain, dark_variance = sdss_gain(camcol, band, run), sdss_dark_variance(camcol, band, run)
  noise = noise_map(image, calib, sky, gain, dark_variance)
  return Frame(band=band, run=run, camcol=camcol, field=field, image=image, calib=calib, sky=sky,
               noise=noise, wcs=wcs, gain=gain, dark_variance=dark_variance, header=header)
