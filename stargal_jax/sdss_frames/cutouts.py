"""Cutouts on the r-band pixel grid: every band resampled per cutout (cubic B-spline on a padded window) with its
noise map; a figure of cutouts."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from stargal_jax import BANDS, registry
from stargal_jax.sdss_frames.field import Field, r_pixels_to_sky, r_to_band_pixels, sky_to_r_pixels
from stargal_jax.sdss_frames.frames import COORD_KINDS, CUTOUT_SIZE, SPLINE_PAD


def cutout_offsets(size: int = CUTOUT_SIZE, centre: float | None = None) -> np.ndarray:
  """Offsets of the cutout's pixel centres from the object, j - centre; default centre size // 2 (32 for 64,
  `stargal_jax.CUTOUT_CENTRE`)."""
  centre = size // 2 if centre is None else float(centre)
  return np.arange(size, dtype=np.float64) - centre


def resample(image: np.ndarray, x: np.ndarray, y: np.ndarray, order: int = 3,
             pad: int = SPLINE_PAD) -> np.ndarray:
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
  registry.check_choice(coords, COORD_KINDS, "coords")
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
