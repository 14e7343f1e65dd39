"""sdss_frames.cutouts on a real field: cutouts on pixel nodes equal the frame slice, the windowed spline the
whole-frame one, sky and pixel positions agree, stars are centred in all five bands (independent centroids)."""

import numpy as np
import pytest
from scipy import  ndimage

from stargal_jax import BANDS
from stargal_jax import sdss_frames as sf
from sdss_helpers import check_centred, isolated_point_sources


def test_r_cutout_on_pixel_nodes_is_the_frame_slice(sparse):
  """Object on a pixel centre: the r samples fall on pixel centres, so no interpolation, and the cutout is
  frame[y-32:y+32, x-32:x+32]."""
  images, noise, meta = sf.cut_cutouts(sparse, [[1000.0, 700.0]])
  r = BANDS.index("r")
  np.testing.assert_allclose(images[0, r], sparse.reference.image[668:732, 968:1032], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(noise[0, r], sparse.reference.noise[668:732, 968:1032], rtol=1e-5)
  assert meta["n_nan"][0] == 0 and images.dtype == np.float32
  # The simulator's convention, object on pixel 32: frame[y-32:y+32, x-32:x+32] for integer positions.
  images, _, _ = sf.cut_cutouts(sparse, [[1000.0, 700.0]], centre=32.0)
  np.testing.assert_allclose(images[0, r], sparse.reference.image[668:732, 968:1032], rtol=1e-5, atol=1e-6)


def test_windowed_spline_equals_whole_frame_spline(sparse):
  x, y = np.meshgrid(np.arange(64) + 1200.3, np.arange(64) + 500.7)
  bx, by = sf.r_to_band_pixels(sparse, "g", x, y)
  image = sparse.frames["g"].image.astype(np.float64)
  whole = ndimage.map_coordinates(image, [by, bx], order=3, mode="mirror")
  windowed = sf.resample(image, bx, by)
  assert np.max(np.abs(windowed - whole)) < 1e-5 * np.max(np.abs(whole))


def test_pixels_outside_a_frame_are_nan(sparse):
  images, noise, meta = sf.cut_cutouts(sparse, [[10.0, 20.0]])
  r = BANDS.index("r")
  # r samples at x0 + j - 32: columns j < 22 (x < -0.5) and rows i < 12 (y < -0.5) are outside.
  expected = np.zeros((64, 64), bool)
  expected[:12, :] = True
  expected[:, :22] = True
  np.testing.assert_array_equal(np.isnan(images[0, r]), expected)
  np.testing.assert_array_equal(np.isnan(noise[0]), np.isnan(images[0]))
  assert meta["n_nan"][0] == np.isnan(images[0]).sum()


def test_sky_and_pixel_positions_give_the_same_cutouts(sparse):
  sources = sf.detect_sources(sparse, snr=50.0)[:4]
  pixel = np.c_[sources["x"], sources["y"]]
  ra, dec = sf.r_pixels_to_sky(sparse, sources["x"], sources["y"])
  by_pixel, noise_pixel, _ = sf.cut_cutouts(sparse, pixel)
  by_sky, noise_sky, meta = sf.cut_cutouts(sparse, np.c_[ra, dec], coords="sky")
  np.testing.assert_allclose(np.c_[meta["x"], meta["y"]], pixel, atol=1e-6)
  np.testing.assert_allclose(by_sky, by_pixel, rtol=1e-4, atol=1e-5 * np.abs(by_pixel).max())
  np.testing.assert_allclose(noise_sky, noise_pixel, rtol=1e-4)
  with pytest.raises(ValueError, match=r"valid: \['pixel', 'sky'\]"):
    sf.cut_cutouts(sparse, pixel, coords="galactic")


def test_stars_are_centred_in_all_five_bands(sparse):
  stars = isolated_point_sources(sparse, sf.detect_sources(sparse, snr=30.0))
  images, noise, meta = sf.cut_cutouts(sparse, np.c_[stars["x"], stars["y"]])
  assert (meta["n_nan"] == 0).all()
  check_centred(images, noise, BANDS, min_stars=5)
