"""segment.scoring: mask scores against hand computations; the k-sweep table."""

import numpy as np
import pytest

from stargal_jax.segment import scoring
from synthetic_scenes import fit_and_segment, make_scenes, perfect_features


@pytest.fixture(scope="module")
def scenes():
  return make_scenes(8, seed=1)


def _tiny_masks():
  true = np.zeros((2, 6, 6), int)
  pred = np.zeros((2, 6, 6), int)
  true[0, 1:3, 1:3] = 1
  true[0, 2:4, 4:6] = 2
  true[0, 5, 0] = 3
  pred[0, 1:3, 1:3] = 1
  pred[0, 1, 3] = 1
  pred[0, 2, 5] = 2                  # overlaps true neighbour 2
  pred[0, 5, 3:5] = 3                # noise: overlaps nothing
  true[1, 1:3, 2:4] = 1
  pred[1, 1, 2:4] = 1
  pred[1, 2, 3] = 1
  pred[1, 2, 2] = 2                  # a shred of the central object
  pred[1, 4, 4] = 3                  # contains the centre of a neighbour with no truth pixels
  table = {"nb_object": np.array([0, 0, 1]), "nb_label": np.array([2, 3, 2]),
           "nb_mag_r": np.array([19.0, 21.0, 23.0]), "nb_x": np.array([4.5, 0.3, 4.2]),
           "nb_y": np.array([2.5, 5.1, 4.4])}
  return pred, true, table


def test_score_masks_against_hand_computation():
  pred, true, table = _tiny_masks()
  s = scoring.score_masks(pred, true, table, mag_bins=(18, 20, 22))
  np.testing.assert_allclose(s["central_iou_per_image"], [4 / 5, 3 / 4])
  assert s["central_iou"] == pytest.approx((0.8 + 0.75) / 2)
  assert s["object_iou_pooled"] == pytest.approx(9 / 17)
  assert s["object_iou_mean"] == pytest.approx((5 / 12 + 4 / 5) / 2)
  assert s["false_object_pixels_fraction"] == pytest.approx(4 / 59)
  assert s["missed_object_pixels_fraction"] == pytest.approx(4 / 13)
  assert (s["n_true_neighbours"], s["n_pred_neighbours"]) == (3, 4)
  assert s["neighbour_completeness"] == pytest.approx(2 / 3)
  assert s["neighbour_purity"] == pytest.approx(2 / 4)
  bins = s["completeness_by_mag"]
  assert [b["n"] for b in bins] == [0, 1, 1, 1]
  np.testing.assert_array_equal([b["completeness"] for b in bins], [np.nan, 1.0, 0.0, 1.0])
  by_central = scoring.score_masks(pred, true, table, mag_bins=(18, 20), central_mag=np.array([19.5, 25.0]))
  assert [b["n"] for b in by_central["central_iou_by_mag"]] == [0, 1, 1]
  np.testing.assert_allclose([b["central_iou"] for b in by_central["central_iou_by_mag"]], [np.nan, 0.8, 0.75])
  # Without the table the truth neighbours come from the masks: the no-pixel neighbour is unknown.
  s2 = scoring.score_masks(pred, true)
  assert s2["neighbour_completeness"] == pytest.approx(1 / 2)
  assert s2["neighbour_purity"] == pytest.approx(1 / 4)


def test_component_magnitudes_by_hand():
  images = np.zeros((1, 5, 6, 6))
  masks = np.zeros((1, 6, 6), int)
  masks[0, :2, :2] = 2
  images[0, 2, :2, :2] = 2.5           # 10 nanomaggies in r -> magnitude 20
  images[0, 2, 4:, 4:] = 0.0
  mags = scoring.component_magnitudes(images, masks, np.array([0]), np.array([2]))
  np.testing.assert_allclose(mags, [20.0])
  # Purity by measured magnitude: give each predicted neighbour of the tiny masks a known r flux.
  pred, true, table = _tiny_masks()
  images = np.zeros((2, 5, 6, 6))
  images[0, 2, 2, 5] = 10.0                        # real, r = 20.0
  images[0, 2, 5, 3:5] = 0.5                       # false (noise), r = 22.5
  images[1, 2, 2, 2] = 100.0                       # false (shred), r = 17.5
  images[1, 2, 4, 4] = 10 ** ((22.5 - 19.0) / 2.5)  # real, r = 19.0
  bins = scoring.score_masks(pred, true, table, mag_bins=(18, 20, 22), images=images)["purity_by_mag"]
  assert [b["n"] for b in bins] == [1, 1, 1, 1]
  assert [b["purity"] for b in bins] == [0.0, 1.0, 1.0, 0.0]


def test_sweep_k_one_row_per_k(scenes):
  images, truth, table = scenes
  fits = {k: fit_and_segment(perfect_features(images), images, k) for k in (2, 4)}
  masks_by_k, segmenters = {k: f[0] for k, f in fits.items()}, {k: f[1] for k, f in fits.items()}
  rows = scoring.k_sweep_rows(masks_by_k, segmenters, {"mask": truth, **table})
  assert [r["k"] for r in rows] == [2, 4]
  for r in rows:
    masks, s = masks_by_k[r["k"]], segmenters[r["k"]]
    # Counted here by hand from the masks and the fitted clusters.
    assert r["n_object_clusters"] == int(np.sum(s.is_object))
    assert r["object_pixel_fraction_sample"] == pytest.approx(float(np.sum(s.cluster_fraction[s.is_object])))
    assert r["central_found_fraction"] == pytest.approx(np.mean([(m == 1).any() for m in masks]))
    assert r["pred_neighbours_per_cutout"] == pytest.approx(np.mean([max(m.max(), 1) - 1 for m in masks]))
    true_objects, pred_objects = truth > 0, masks > 0
    assert r["false_object_pixels_fraction"] == pytest.approx(pred_objects[~true_objects].mean())
    assert r["object_iou"] == pytest.approx((true_objects & pred_objects).sum() / (true_objects | pred_objects).sum())
