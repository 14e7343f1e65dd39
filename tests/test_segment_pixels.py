"""segment.pixels: robust background and S/N against hand computations and noise with known sigma."""

import numpy as np
import pytest
from scipy import ndimage

from stargal_jax.segment import pixels


def test_robust_background_ignores_objects_and_nans():
  rng = np.random.default_rng(0)
  noise = rng.normal(2.0, 0.5, (3, 2, 64, 64))
  images = noise.copy()
  images[:, :, 20:40, 20:40] += 50.0  # a bright object on 10% of the pixels
  images[0, 0, :5] = np.nan
  images[2, 1] = np.nan               # a band with no data at all
  level, sigma = pixels.robust_background(images)
  assert np.isnan(level[2, 1]) and np.isnan(sigma[2, 1])
  ok = np.isfinite(level)
  np.testing.assert_allclose(level[ok], 2.0, atol=0.05)
  np.testing.assert_allclose(sigma[ok], noise.std(axis=(2, 3))[ok], rtol=0.06)
  # Excluding the object pixels gives the plain median of the rest (no clipping needed).
  exclude = np.zeros((3, 64, 64), bool)
  exclude[:, 20:40, 20:40] = True
  # Chunking is invisible.
  chunked = pixels.robust_background(images, chunk=2)
  np.testing.assert_array_equal(chunked[0], level)
  np.testing.assert_array_equal(chunked[1], sigma)
  level_ex, _ = pixels.robust_background(images[1:2], exclude=exclude[1:2], n_iter=0, source_rounds=0)
  np.testing.assert_allclose(level_ex[0], np.median(images[1][:, ~exclude[1]], axis=1))


def test_snr_image_by_hand():
  images = np.zeros((1, 5, 2, 2))
  images[0, 1], images[0, 2], images[0, 3] = 3.0, 5.0, 7.0
  level = np.array([[0.0, 1.0, 1.0, 1.0, 0.0]])
  sigma = np.array([[1.0, 2.0, 4.0, 3.0, 1.0]])
  expected = ((3 - 1) / 2 + (5 - 1) / 4 + (7 - 1) / 3) / np.sqrt(3)
  np.testing.assert_allclose(pixels.snr_image(images, "gri", level, sigma), expected, rtol=1e-6)
  np.testing.assert_allclose(pixels.snr_image(images, "r", level, sigma), 1.0, rtol=1e-6)
  sigma[0, 3] = np.nan  # i has no noise estimate: g and r alone, over sqrt(2)
  np.testing.assert_allclose(pixels.snr_image(images, "gri", level, sigma), (1 + 1) / np.sqrt(2), rtol=1e-6)


def test_detection_image_has_unit_noise_and_peaks_on_a_faint_point_source():
  rng = np.random.default_rng(4)
  images = rng.normal(0.0, 1.0, size=(20, 5, 64, 64))
  noise_only = pixels.detection_image(images, "gri", sigma_px=1.5, clip=(-50, 50))
  assert abs(noise_only[:, 16:48, 16:48].std() - 1.0) < 0.05  # filtered, rescaled: unit noise again
  yy, xx = np.mgrid[:64, :64]
  psf = np.exp(-((yy - 40) ** 2 + (xx - 20) ** 2) / (2 * 1.5**2))
  faint = images[:1] + 1.0 * psf  # peak S/N 1 per pixel per band: invisible pixel by pixel
  det = pixels.detection_image(faint, "gri", sigma_px=1.5)
  peak = np.unravel_index(np.argmax(det[0]), (64, 64))
  assert np.hypot(peak[0] - 40, peak[1] - 20) <= 1.5  # noise moves the filtered peak by about a pixel
  # Expected there: 1.73 per-pixel S/N x sqrt(4 pi) 1.5 / 2 matched-filter gain = 4.6, less noise.
  assert det[0, 40, 20] > 3 and det.max() <= 50 and det.min() >= -5


def test_band_selection_and_model_inputs():
  assert pixels.band_indices("gri") == [1, 2, 3] and pixels.band_indices("u") == [0]
  with pytest.raises(KeyError, match="'u'"):
    pixels.band_indices("gry")
  images = np.random.default_rng(4).normal(size=(2, 5, 8, 8)).astype(np.float32)
  images[0, 1, 2, 3] = np.nan
  normalizer = {"method": "zscore", "center": [0.5] * 5, "scale": [2.0] * 5, "version": 1, "bands": list("ugriz")}
  x = pixels.model_inputs(images, normalizer)
  expected = np.transpose((np.nan_to_num(images) - 0.5) / 2.0, (0, 2, 3, 1))  # zscore by hand, NHWC
  np.testing.assert_allclose(x, expected, rtol=1e-6)
  assert x.shape == (2, 8, 8, 5) and x.dtype == np.float32


def test_nanmedian_last_axis_is_numpys_nanmedian():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(4, 3, 51))
  x[rng.random(x.shape) < 0.3] = np.nan
  x[0, 0] = np.nan  # a row with nothing usable: NaN, as numpy gives
  x[1, 1, 1:] = np.nan  # one value left
  x[2, 2, 2:] = np.nan  # two values: their mean
  with np.errstate(all="ignore"), pixels.quiet_nan_warnings():
    expected = np.nanmedian(x, axis=-1)
  np.testing.assert_array_equal(pixels.nanmedian_last_axis(x), expected)


def test_filtered_noise_gain_matches_monte_carlo_and_evens_the_smoothed_snr_noise_to_the_edges():
  from stargal_jax.segment import pipeline
  rng = np.random.default_rng(7)
  noise = rng.normal(size=(3000, 24, 24))
  filtered = ndimage.gaussian_filter(noise, (0, 1.2, 1.2), mode="nearest")
  measured = np.sqrt((filtered ** 2).mean(axis=0) / (filtered[:, 9:15, 9:15] ** 2).mean())
  gain = pixels.filtered_noise_gain(24, 24, 1.2)
  # Row profile (averaged over the middle columns) and the four corners, each from ~10^4-10^5 samples.
  np.testing.assert_allclose(gain[:, 12], measured[:, 8:16].mean(axis=1), rtol=0.04)  # 1.47 at the edge rows
  corners = measured[[0, 0, -1, -1], [0, -1, 0, -1]]
  np.testing.assert_allclose(gain[[0, 0, -1, -1], [0, -1, 0, -1]], corners.mean(), rtol=0.04)  # 2.15
  # The smoothed S/N map of pure noise: unit sigma on the edge rows as in the middle (it was ~1.47x).
  snr = pipeline.smoothed_snr(rng.normal(size=(60, 5, 40, 40)), 1.2)
  edge = np.concatenate([snr[:, 0, 3:-3].ravel(), snr[:, -1, 3:-3].ravel()])
  assert edge.std() == pytest.approx(snr[:, 15:25, 15:25].std(), rel=0.06)
