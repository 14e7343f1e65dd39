"""segment.edges: the outline moved to an isophote, checked against masks worked out by hand."""

import numpy as np

from stargal_jax.segment import edges


def _gaussian(h, w, y0, x0, sigma, peak):
  yy, xx = np.mgrid[0:h, 0:w]
  return peak * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * sigma ** 2))


def test_isolated_source_takes_the_isophote_exactly():
  snr = _gaussian(32, 32, 16, 16, 3.0, 20.0)[None].astype(np.float32)
  small = np.zeros((1, 32, 32), np.int16)
  small[0, 15:18, 15:18] = 1  # the clusters' mask: too tight
  out = edges.follow_isophote(small, snr, 2.0)
  # One peak, so every pixel above the level is connected to the seed: the mask is exactly {snr > 2}.
  np.testing.assert_array_equal(out[0], (snr[0] > 2.0).astype(np.int16))
  big = np.ones((1, 32, 32), np.int16)  # too wide: trimmed to the same isophote
  np.testing.assert_array_equal(edges.follow_isophote(big, snr, 2.0)[0], (snr[0] > 2.0).astype(np.int16))


def test_two_touching_sources_split_at_the_saddle_and_keep_their_labels():
  a = _gaussian(32, 48, 16, 14, 3.0, 20.0)
  b = _gaussian(32, 48, 16, 34, 3.0, 20.0)
  snr = np.maximum(a, b)[None].astype(np.float32)
  masks = np.zeros((1, 32, 48), np.int16)
  masks[0, 15:18, 13:16] = 1
  masks[0, 15:18, 33:36] = 2
  out = edges.follow_isophote(masks, snr, 1.0)[0]
  above = snr[0] > 1.0
  # By symmetry the pixel goes to the nearer peak (equal S/N only on the mid-line, which the maximum makes
  # a ridge of two equal halves; checked away from it).
  yy, xx = np.mgrid[0:32, 0:48]
  nearer_a = np.hypot(yy - 16, xx - 14) < np.hypot(yy - 16, xx - 34) - 2.0
  nearer_b = np.hypot(yy - 16, xx - 34) < np.hypot(yy - 16, xx - 14) - 2.0
  assert np.all(out[above & nearer_a] == 1) and np.all(out[above & nearer_b] == 2)
  assert np.all(out[~above] == 0)


def test_unreached_sources_stay_background_and_faint_segments_are_kept():
  bright = _gaussian(32, 32, 8, 8, 2.0, 20.0)
  undetected = _gaussian(32, 32, 24, 24, 2.0, 20.0)  # above the level but in no segment: not added
  snr = (bright + undetected)[None].astype(np.float32)
  masks = np.zeros((1, 32, 32), np.int16)
  masks[0, 7:10, 7:10] = 1
  masks[0, 0:2, 30:32] = 3  # a detection entirely below the level: kept as it was
  out = edges.follow_isophote(masks, snr, 1.5)[0]
  expected = np.where(bright > 1.5, 1, 0)
  expected[0:2, 30:32] = 3
  np.testing.assert_array_equal(out, expected)


def test_empty_masks_stay_empty():
  snr = np.ones((2, 8, 8), np.float32) * 5
  out = edges.follow_isophote(np.zeros((2, 8, 8), np.int16), snr, 1.0)
  assert out.dtype == np.int16 and not out.any()


def test_peak_fraction_gives_a_faint_segment_its_own_isophote():
  bright = _gaussian(32, 48, 16, 12, 2.0, 40.0)
  faint = _gaussian(32, 48, 16, 36, 2.0, 10.0)
  snr = (bright + faint)[None].astype(np.float32)
  masks = np.zeros((1, 32, 48), np.int16)
  masks[0, 15:18, 11:14] = 1
  masks[0, 15:18, 35:38] = 2
  out = edges.follow_isophote(masks, snr, 8.0, peak_fraction=0.3)[0]
  # Bright: its peak 40 x 0.3 = 12 > 8, so the level 8 holds; faint: 10 x 0.3 = 3 (by hand, the two
  # profiles do not overlap above 3).
  np.testing.assert_array_equal(out == 1, (bright > 8.0) & (np.mgrid[0:32, 0:48][1] < 24))
  np.testing.assert_array_equal(out == 2, (faint > 3.0) & (np.mgrid[0:32, 0:48][1] >= 24))
  # Without it the faint one keeps only its pixels above 8.
  plain = edges.follow_isophote(masks, snr, 8.0)[0]
  np.testing.assert_array_equal(plain == 2, (snr[0] > 8.0) & (np.mgrid[0:32, 0:48][1] >= 24))


def test_keep_significant_drops_the_neighbours_without_a_significant_peak():
  snr = np.zeros((2, 8, 8), np.float32)
  masks = np.zeros((2, 8, 8), np.int16)
  masks[0, 0:2, 0:2], snr[0, 0:2, 0:2] = 1, [[3.0, 4.0], [2.0, 1.0]]  # a faint central: stays
  masks[0, 0:2, 5:8], snr[0, 0:2, 5:8] = 2, [[7.0, 7.9, 6.0], [1.0, 1.0, 1.0]]  # peak 7.9 < 8: dropped
  masks[0, 5:8, 5:8], snr[0, 5:8, 5:8] = 3, 2.0
  snr[0, 6, 6] = 8.0  # peak exactly 8: kept
  masks[0, 5:8, 0:2], snr[0, 5:8, 0:2] = 5, 20.0  # label 4 absent: numbers are kept
  snr[0, 3, 3] = 50.0  # a bright pixel in no segment stays background
  masks[1, 2:4, 2:4], snr[1, 2:4, 2:4] = 2, 1.0  # a cutout with only a faint neighbour ends empty
  out = edges.keep_significant(masks, snr, 8.0)
  # By hand: the peaks per (cutout, label) are (0,1) 4, (0,2) 7.9, (0,3) 8, (0,5) 20, (1,2) 1.
  expected = masks.copy()
  expected[0][masks[0] == 2] = 0
  expected[1][masks[1] == 2] = 0
  np.testing.assert_array_equal(out, expected)
  assert out.dtype == masks.dtype
  assert sorted(np.unique(out[0])) == [0, 1, 3, 5] and not out[1].any()
  np.testing.assert_array_equal(edges.keep_significant(masks, snr, 0.5), masks)  # every peak passes


def test_edge_options_read_the_least_peak_from_the_config():
  from configs import segmentation
  sc = segmentation.seg_config()
  assert edges.EdgeOptions.from_config(sc) == edges.EdgeOptions(8.0, 0.5, 8.0)  # the protocol's choice
  sc.edge_min_peak, sc.edge_peak_fraction = 0.0, 0.0
  assert edges.EdgeOptions.from_config(sc) == edges.EdgeOptions(8.0, None, None)  # 0 = off


def test_a_negative_least_peak_fails_the_config_check():
  import pytest
  from configs import segmentation
  from stargal_jax import config_checks as cc
  from stargal_jax import experiment
  config = segmentation.get_config()
  config.seg.edge_min_peak = -1.0
  with pytest.raises(cc.ConfigError, match=r"config.seg.edge_min_peak = -1.0: must be >= 0"):
    experiment.check_config(config)
