"""segment.labelling: connected components, the centre rule and neighbour masking, by hand."""

import numpy as np
import pytest
from scipy import ndimage

from stargal_jax.segment import labelling
from synthetic_scenes import NOISE, make_scenes


def test_label_objects_centre_rule_and_ordering():
  fg = np.zeros((3, 64, 64), bool)
  fg[0, 30:33, 30:33] = True      # covers the centre: central (9 px)
  fg[0, 2:12, 2:12] = True        # 100 px: first neighbour
  fg[0, 50:54, 50:54] = True      # 16 px: second neighbour
  fg[0, 5:7, 50:52] = True        # 4 px < min_area: dropped
  fg[1, 35:38, 31:34] = True      # off centre: nearest pixel (35, 31) is 3.54 px from (31.5, 31.5)
  fg[1, 2:12, 2:12] = True
  fg[2, 10:13, 10:13] = True      # two squares touching only at a corner
  fg[2, 13:16, 13:16] = True
  masks = labelling.label_objects(fg[:2], min_area=5, centre_radius=5.0)
  expected0 = np.zeros((64, 64), int)
  expected0[30:33, 30:33], expected0[2:12, 2:12], expected0[50:54, 50:54] = 1, 2, 3
  np.testing.assert_array_equal(masks[0], expected0)
  assert masks[1, 36, 32] == 1 and masks[1, 5, 5] == 2
  strict = labelling.label_objects(fg[1:2], centre_radius=3.0)
  assert (strict == 1).sum() == 0 and set(np.unique(strict)) == {0, 2, 3}
  assert strict[0, 5, 5] == 2 and strict[0, 36, 32] == 3  # ordered by size: 100 px before 9 px
  assert set(np.unique(labelling.label_objects(fg[2:], connectivity=8))) == {0, 2}
  assert set(np.unique(labelling.label_objects(fg[2:], connectivity=4))) == {0, 2, 3}


def test_neighbour_region_is_chebyshev_dilation_without_central():
  masks = np.zeros((1, 12, 12), int)
  masks[0, 5:7, 5:7] = 2
  masks[0, 4, 4:8] = 1
  dist = ndimage.distance_transform_cdt(masks[0] < 2, metric="chessboard")
  expected = (dist <= 2) & (masks[0] != 1)
  np.testing.assert_array_equal(labelling.neighbour_region(masks, dilate=2)[0], expected)


def test_mask_neighbours_replaces_with_background_like_noise():
  images, truth, _ = make_scenes(6, seed=3, pedestal=0.5)
  images[0, 2, 0, :8] = np.nan  # a few bad pixels in the background
  out = labelling.mask_neighbours(images, truth, seed=7, dilate=2)
  region = labelling.neighbour_region(truth, dilate=2)
  keep = np.broadcast_to(~region[:, None], images.shape)
  np.testing.assert_array_equal(out[keep], images[keep])  # central + background untouched (NaNs too)
  assert np.all(np.isfinite(out[~keep])) and not np.any(out[~keep] == 0.0)
  for b in range(5):
    filled = out[:, b][region]
    assert abs(filled.mean() - 0.5) < 4 * NOISE[b] / np.sqrt(filled.size)
    assert filled.std() == pytest.approx(NOISE[b], rel=0.1)
  np.testing.assert_array_equal(labelling.mask_neighbours(images, truth, seed=7), out)
  assert not np.array_equal(labelling.mask_neighbours(images, truth, seed=8), out)
  # Batching does not change the draw of an image; a given sigma overrides the estimate.
  np.testing.assert_array_equal(
      labelling.mask_neighbours(images[1:2], truth[1:2], seed=7, index_offset=1)[0], out[1])
  loud = labelling.mask_neighbours(images, truth, seed=7, noise_sigma=1.0)
  assert loud[:, 2][region].std() == pytest.approx(1.0, rel=0.1)


def test_connectivity_choice_and_mask_labels_from_clusters():
  with pytest.raises(KeyError, match="4, 8"):
    labelling.label_objects(np.zeros((1, 4, 4), bool), connectivity=6)
  fg = np.zeros((1, 64, 64), bool)
  fg[0, 31:34, 31:34] = True  # central
  fg[0, 10:12, 10:12] = True  # 4 px
  fg[0, 50, 48:51] = True
  fg[0, 51, 51:54] = True  # 6 px joined diagonally: one object with 8-connectivity, two of 3 px with 4
  eight = labelling.label_objects(fg, min_area=3, connectivity=8)[0]
  four = labelling.label_objects(fg, min_area=3, connectivity=4)[0]
  # Neighbours by decreasing size: the 6 px object, then the 4 px block.
  assert eight[32, 32] == 1 and eight[50, 48] == eight[51, 53] == 2 and eight[10, 10] == 3 and eight.max() == 3
  assert four[50, 48] != four[51, 53] and four[10, 10] == 2 and four.max() == 4
  assert labelling.label_objects(fg, min_area=5, connectivity=4)[0].max() == 1  # min_area drops the rest
