"""segment.matching: IoU against a brute-force count, the one-to-one assignment against every permutation,
precision / recall / F1 on hand-built masks with known matches, footprint S/N and the truth subset by hand."""

import itertools

import numpy as np
import pytest

from stargal_jax.segment import matching


def test_iou_matrix_equals_brute_force_pixel_count():
  rng = np.random.default_rng(0)
  true = rng.integers(0, 4, (20, 20))
  pred = rng.integers(0, 5, (20, 20))
  pred[pred == 3] = 0  # a label that never occurs must not get a column
  t_labels, p_labels, iou = matching.iou_matrix(true, pred)
  assert list(t_labels) == [1, 2, 3] and list(p_labels) == [1, 2, 4]
  for a, t in enumerate(t_labels):
    for b, p in enumerate(p_labels):
      inter = sum(1 for i in range(20) for j in range(20) if true[i, j] == t and pred[i, j] == p)
      union = sum(1 for i in range(20) for j in range(20) if true[i, j] == t or pred[i, j] == p)
      assert iou[a, b] == pytest.approx(inter / union)


def test_match_objects_is_the_best_one_to_one_assignment_above_the_threshold():
  rng = np.random.default_rng(1)
  for _ in range(30):
    t, p = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    iou = rng.uniform(0, 1, (t, p)) * (rng.uniform(0, 1, (t, p)) < 0.6)
    pairs = matching.match_objects(iou, 0.3)
    # Brute force: every injective assignment of rows to columns (or to nothing), only pairs >= 0.3.
    best = 0.0
    for perm in itertools.permutations(list(range(p)) + [None] * t, t):
      best = max(best, sum(iou[r, c] for r, c in enumerate(perm) if c is not None and iou[r, c] >= 0.3))
    assert sum(iou[r, c] for r, c in pairs) == pytest.approx(best)
    assert all(iou[r, c] >= 0.3 for r, c in pairs)
    assert len({r for r, _ in pairs}) == len(pairs) == len({c for _, c in pairs})


def _hand_masks():
  """Cutout 0: central found (IoU 6/9), neighbour 2 shredded into two segments (IoU 4/8 and 2/8 with it),
  a false segment on background. Cutout 1: two touching true objects merged into one segment (IoU 9/18 and
  9/18: one match), a true neighbour missed."""
  true = np.zeros((2, 12, 12), int)
  pred = np.zeros((2, 12, 12), int)
  true[0, 1:4, 1:4] = 1                 # 9 px
  pred[0, 1:4, 1:3] = 1                 # 6 px inside: IoU 6/9
  true[0, 6:8, 6:10] = 2                # 8 px
  pred[0, 6:8, 6:8] = 2                 # 4 px: IoU 4/8
  pred[0, 6, 8:10] = 3                  # 2 px: IoU 2/8
  pred[0, 10:12, 0:3] = 4               # 6 px on background: false
  true[1, 1:4, 1:4] = 1                 # 9 px
  true[1, 1:4, 4:7] = 2                 # 9 px, touching 1
  pred[1, 1:4, 1:7] = 1                 # 18 px covers both: IoU 9/18 each
  true[1, 9:11, 9:11] = 3               # 4 px, missed
  return pred, true


def test_precision_recall_f1_on_hand_built_masks():
  pred, true = _hand_masks()
  snr = np.ones(true.shape)
  truth = {"mag": np.array([[0, 0, 18.0, 0, 0], [0, 0, 22.0, 0, 0]]),
           "nb_object": np.array([0, 1, 1]), "nb_label": np.array([2, 2, 3]), "nb_mag_r": np.array([20.0, 21.5, 23.0])}
  m = matching.evaluate(pred, true, snr, truth, snr_bins=(5.0,), mag_bins=(19.0, 21.0))
  # True objects: 5; predictions: 5. Matches: (0,1)-(0,1) 6/9, (0,2)-(0,2) 4/8, (1,1 or 2)-(1,1) 9/18.
  assert (m["n_true"], m["n_pred"]) == (5, 5)
  assert m["detection"]["tp"] == 3 and m["detection"]["fp"] == 2 and m["detection"]["fn"] == 2
  assert m["detection"]["precision"] == pytest.approx(3 / 5)
  assert m["detection"]["recall"] == pytest.approx(3 / 5)
  assert m["detection"]["f1"] == pytest.approx(6 / 10)
  # Strict (IoU >= 0.5): 6/9, 4/8 and 9/18 all qualify.
  assert m["detection_strict"]["tp"] == 3
  assert m["matched_iou"] == pytest.approx((6 / 9 + 4 / 8 + 9 / 18) / 3)
  # Central IoU: cutout 0 6/9; cutout 1 9/18.
  assert m["central_iou"] == pytest.approx((6 / 9 + 0.5) / 2)
  by_mag = {b["bin"]: b for b in m["central_iou_by_mag"]}
  assert by_mag["< 19"]["central_iou"] == pytest.approx(6 / 9) and by_mag[">= 21"]["central_iou"] == 0.5
  # Neighbours: true 2 (cutout 0) matched to predicted neighbour 2; the 18 px segment is predicted central, so
  # cutout 1's neighbours are not found as neighbours: completeness 1/3; predicted neighbours 2, 3, 4: 1 real.
  assert m["neighbour_completeness"] == pytest.approx(1 / 3)
  assert m["neighbour_purity"] == pytest.approx(1 / 3)
  # Touching footprints: cutout 1's two true objects; one of them matched.
  assert m["n_blended"] == 2 and m["blended_recall"] == pytest.approx(0.5)
  # S/N = area / sqrt(area) = sqrt(area) with a unit S/N map: true areas 9, 8, 9, 9, 4 -> 3, 2.83, 3, 3, 2.
  rows = {r["bin"]: r for r in m["detection_by_snr"]}
  assert rows["< 5"]["n_true"] == 5 and rows["< 5"]["tp"] == 3 and rows["< 5"]["fp"] == 2


def test_detection_by_snr_bins_true_positives_by_the_true_object():
  table = matching.ObjectTable(
    true_image=np.array([0, 0, 1]), true_label=np.array([1, 2, 1]), true_snr=np.array([7.0, 30.0, 3.0]),
    true_mag=np.full(3, np.nan), true_blended=np.zeros(3, bool), true_match=np.array([1, 0, 1]),
    true_iou=np.array([0.8, 0.0, 0.6]), pred_image=np.array([0, 0, 1]), pred_label=np.array([1, 2, 1]),
    pred_snr=np.array([40.0, 6.0, 8.0]), pred_match=np.array([1, 0, 1]))
  rows = {r["bin"]: r for r in matching.detection_by_snr(table, (5.0, 10.0))}
  # TP: the S/N 7 object (bin 5-10, though its segment measures 40) and the S/N 3 one; FN: S/N 30; FP: S/N 6.
  assert (rows["< 5"]["tp"], rows["< 5"]["fp"], rows["< 5"]["fn"]) == (1, 0, 0)
  assert (rows["5-10"]["tp"], rows["5-10"]["fp"], rows["5-10"]["fn"]) == (1, 1, 0)
  assert rows["5-10"]["f1"] == pytest.approx(2 / 3)
  assert (rows[">= 10"]["tp"], rows[">= 10"]["fn"]) == (0, 1) and rows[">= 10"]["recall"] == 0.0


def test_footprint_snr_and_truth_rows_by_hand():
  snr_map = np.zeros((4, 4))
  snr_map[0, :2] = [3.0, 5.0]
  mask = np.zeros((4, 4), int)
  mask[0, :2] = 1
  mask[3, 3] = 2
  np.testing.assert_allclose(matching.footprint_snr(snr_map, mask, np.array([1, 2])), [8 / np.sqrt(2), 0.0])
  truth = {"mask": np.arange(4)[:, None, None] * np.ones((4, 2, 2)), "mag": np.arange(4.0),
           "nb_object": np.array([0, 2, 2, 3]), "nb_label": np.array([2, 2, 3, 2]), "nb_mag_r": np.arange(4.0)}
  sub = matching.truth_rows(truth, np.array([3, 2]))
  np.testing.assert_array_equal(sub["mag"], [3.0, 2.0])
  np.testing.assert_array_equal(sub["nb_object"], [1, 1, 0])  # rows 2 -> position 1, 3 -> position 0
  np.testing.assert_array_equal(sub["nb_mag_r"], [1.0, 2.0, 3.0])
  assert matching.selection_score({"central_iou": 0.6, "detection": {"f1": 0.8}}) == pytest.approx(0.7)
