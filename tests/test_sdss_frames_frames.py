"""sdss_frames.frames on a real field: gain tables, the sky model against an independent bilinear
interpolation, the noise map against the background scatter. Skips cleanly when ../shared/data is absent."""

import bz2
import io

import numpy as np
import pytest
import sep
from astropy.io import fits
from scipy import interpolate, ndimage

from stargal_jax import sdss_frames as sf
from sdss_helpers import SPARSE


def test_gain_and_dark_variance_tables():
  assert sf.sdss_gain(6, "r", 1035) == 4.895
  assert sf.sdss_gain(2, "u", 1000) == 1.595 and sf.sdss_gain(2, "u", 2583) == 1.825
  assert sf.sdss_dark_variance(4, "z", 1035) == 9.61 and sf.sdss_dark_variance(4, "z", 5405) == 12.6025
  with pytest.raises(KeyError, match=r"camcol 7; valid: \[1, 2"):
    sf.sdss_gain(7, "r", 1035)
  with pytest.raises(KeyError, match=r"band 'y'; valid"):
    sf.sdss_dark_variance(1, "y", 1035)


def test_sky_model_matches_independent_bilinear_interpolation(sparse, sdss_frames_dir):
  frame = sparse.frames["u"]
  raw = bz2.decompress((sdss_frames_dir / SPARSE / f"frame-u-{SPARSE}.fits.bz2").read_bytes())
  with fits.open(io.BytesIO(raw)) as hdul:
    table = hdul[2].data
  allsky, xinterp, yinterp = table["ALLSKY"][0], table["XINTERP"][0], table["YINTERP"][0]
  grid = interpolate.RegularGridInterpolator((np.arange(allsky.shape[0]), np.arange(allsky.shape[1])),
                                             allsky.astype(np.float64), method="linear")
  rng = np.random.default_rng(0)
  rows, cols = rng.integers(0, frame.shape[0], 2000), rng.integers(0, frame.shape[1], 2000)
  rows[:2], cols[:2] = (0, frame.shape[0] - 1), (0, frame.shape[1] - 1)  # clamped corners
  points = np.stack([np.clip(yinterp[rows], 0, allsky.shape[0] - 1),
                     np.clip(xinterp[cols], 0, allsky.shape[1] - 1)], axis=1)
  np.testing.assert_allclose(frame.sky[rows, cols], grid(points), rtol=1e-5)
  # The recovered raw frame is the sky (tens of counts in u) plus sources: its median is the sky's.
  assert abs(np.median(frame.counts) / np.median(frame.sky) - 1) < 0.05


def test_noise_map_matches_background_scatter(sparse):
  """Median noise-map sigma vs the robust std of source-free pixels, per band, within 15%."""
  for band, frame in sparse.frames.items():
    data = np.ascontiguousarray(frame.image, np.float64)
    background = sep.Background(data)
    _, segmentation = sep.extract(data - background.back(), 1.5, err=background.globalrms, minarea=3,
                                  segmentation_map=True)
    free = ~ndimage.binary_dilation(segmentation > 0, iterations=4)
    pixels = data[free]
    robust_std = 1.4826 * np.median(np.abs(pixels - np.median(pixels)))
    ratio = np.median(frame.noise[free]) / robust_std
    assert abs(ratio - 1) < 0.15, f"{band}: noise map / measured background scatter = {ratio:.3f}"
