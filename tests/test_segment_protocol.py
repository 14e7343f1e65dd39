"""segment.protocol: disjoint splits, the grid search's choice by hand, the baselines through the common labelling,
and the issue's targets on hand-made score tables."""

import dataclasses

import numpy as np
import pytest

from stargal_jax.segment import labelling, matching, protocol
from synthetic_scenes import make_scenes


def test_split_rows_are_disjoint_sorted_and_reproducible():
  tune, score = protocol.split_rows(100, 20, 50, seed=3)
  assert len(tune) == 20 and len(score) == 50 and not set(tune) & set(score)
  assert (np.diff(tune) > 0).all() and (np.diff(score) > 0).all()
  np.testing.assert_array_equal(protocol.split_rows(100, 20, 50, seed=3)[1], score)
  with pytest.raises(ValueError, match="cannot take"):
    protocol.split_rows(10, 6, 5)


@pytest.fixture(scope="module")
def split():
  images, masks, table = make_scenes(6, seed=4)
  truth = {"mask": masks, "mag": np.full((6, 5), 20.0), **table}
  return protocol.make_split(lambda rows: images[rows], truth, np.arange(6))


def test_grid_search_takes_the_setting_with_the_best_selection_score(split):
  empty = np.zeros_like(split.true_masks)
  half = np.where(split.true_masks == 1, 1, 0)  # the centrals only: F1 below 1
  by_setting = {0: empty, 1: split.true_masks, 2: half}
  best, rows = protocol.grid_search(lambda s, _: by_setting[s["i"]], [{"i": 0}, {"i": 1}, {"i": 2}], split)
  assert best == {"i": 1}
  assert rows[1]["selection_score"] == pytest.approx(1.0)
  expected = matching.selection_score(matching.evaluate(half, split.true_masks, split.snr, split.truth))
  assert rows[2]["selection_score"] == pytest.approx(expected)


def test_grid_search_over_several_splits_takes_the_best_mean(split):
  """Setting 0 is perfect on split 0 and empty on split 1, setting 1 the centrals only on both: the mean decides,
  and each split's own score is kept."""
  half = np.where(split.true_masks == 1, 1, 0)
  empty = np.zeros_like(split.true_masks)
  by_setting = {(0, 0): split.true_masks, (0, 1): empty, (1, 0): half, (1, 1): half}
  best, rows = protocol.grid_search(lambda s, i: by_setting[(s["i"], i)], [{"i": 0}, {"i": 1}], [split, split])
  half_score = matching.selection_score(matching.evaluate(half, split.true_masks, split.snr, split.truth))
  empty_score = matching.selection_score(matching.evaluate(empty, split.true_masks, split.snr, split.truth))
  assert rows[0]["selection_score_by_split"] == pytest.approx([1.0, empty_score])
  assert rows[0]["selection_score"] == pytest.approx(0.5 * (1.0 + empty_score))
  assert rows[1]["selection_score"] == pytest.approx(half_score)
  assert empty_score == pytest.approx(0.0) and 0.5 < half_score < 1.0  # centrals exact, neighbours missed
  assert best == {"i": 1}


def test_grid_search_averages_a_neighbour_metric_over_the_splits_that_define_it(split):
  """A split without neighbours has no neighbour completeness (NaN): the mean is over the other splits."""
  centrals = np.where(split.true_masks == 1, 1, 0)
  no_neighbours = dataclasses.replace(split, truth={**split.truth, "nb_object": np.zeros(0, np.int64)})
  lonely = matching.evaluate(centrals, centrals, no_neighbours.snr, no_neighbours.truth)
  assert np.isnan(lonely["neighbour_completeness"])
  _, rows = protocol.grid_search(lambda s, i: split.true_masks if i == 0 else centrals, [{"i": 0}],
                                 [split, dataclasses.replace(no_neighbours, truth={**no_neighbours.truth,
                                                                                   "mask": centrals})])
  full = matching.evaluate(split.true_masks, split.true_masks, split.snr, split.truth)
  assert rows[0]["neighbour_completeness"] == pytest.approx(full["neighbour_completeness"])


def test_grid_search_prefers_the_settings_that_reach_the_neighbour_purity_floor(split):
  """Setting 0 adds one false neighbour (purity below 1, F1 2T/(2T+1)), setting 1 drops two true neighbours
  (purity 1, F1 2(T-2)/(2T-2), lower): the score alone takes 0, a floor of 1 takes 1, and a floor that no setting
  reaches falls back to the score."""
  spurious = split.true_masks.copy()
  assert not spurious[0, :4, :4].any()
  spurious[0, :4, :4] = 9  # an empty corner: a predicted neighbour that matches nothing
  dropped = split.true_masks.copy()
  dropped[0][dropped[0] == 2] = 0
  dropped[1][dropped[1] == 2] = 0
  by_setting = {0: spurious, 1: dropped}
  grid = [{"i": 0}, {"i": 1}]
  truth = matching.evaluate(split.true_masks, split.true_masks, split.snr, split.truth)
  n_true, n_nb = truth["n_true"], truth["n_true_neighbours"]
  best, rows = protocol.grid_search(lambda s, _: by_setting[s["i"]], grid, split)
  assert best == {"i": 0}
  assert rows[0]["neighbour_purity"] == pytest.approx(n_nb / (n_nb + 1))
  assert rows[0]["f1"] == pytest.approx(2 * n_true / (2 * n_true + 1))
  assert rows[1]["neighbour_purity"] == pytest.approx(1.0)
  assert rows[1]["f1"] == pytest.approx(2 * (n_true - 2) / (2 * n_true - 2))
  assert rows[1]["neighbour_completeness"] == pytest.approx((n_nb - 2) / n_nb)
  assert protocol.grid_search(lambda s, _: by_setting[s["i"]], grid, split, least_neighbour_purity=1.0)[0] == \
    {"i": 1}
  assert protocol.grid_search(lambda s, _: by_setting[s["i"]], grid, split, least_neighbour_purity=1.01)[0] == \
    {"i": 0}


def test_tuned_purity_is_the_mean_over_splits_of_the_tuned_baselines_purity(split):
  options = labelling.LabelOptions()
  one, settings = protocol.tuned_purity("SEP", protocol.SEP_GRID[:2], split, options)
  best, rows = protocol.tune_baseline("SEP", protocol.SEP_GRID[:2], split, options, split.snr)
  assert settings == [best]
  assert one == pytest.approx(rows[protocol.SEP_GRID[:2].index(best)]["neighbour_purity"])
  two, settings = protocol.tuned_purity("SEP", protocol.SEP_GRID[:2], [split, split], options)
  assert two == pytest.approx(one) and settings == [best, best]


def test_baselines_find_the_scene_objects(split):
  options = labelling.LabelOptions()
  for name, setting in (("SEP", {"band": "gri", "thresh_sigma": 1.0, "deblend_cont": 0.001}),
                        ("photutils", {"nsigma": 2.0, "contrast": 0.01, "fwhm_px": 2.5})):
    masks = protocol.baseline_masks(name, split.images, setting, options, split.snr)
    m = protocol.evaluate_split(masks, split)
    assert m["central_found"] == 1.0 and m["detection"]["recall"] >= 0.9, name
  with pytest.raises(ValueError, match="unknown baseline"):
    protocol.baseline_masks("sextractor", split.images, {}, options)


def _scores(central_by_bin, f1_mid, nb_c, nb_p):
  return {"central_iou_by_mag": [{"bin": b, "central_iou": v} for b, v in zip(("< 19", "19-21", ">= 21"),
                                                                                central_by_bin)],
          "detection_by_snr": [{"bin": "5-10", "f1": f1_mid}], "neighbour_completeness": nb_c,
          "neighbour_purity": nb_p}


def test_done_checks_by_hand():
  scores = {"SEP (x)": _scores((0.7, 0.6, 0.5), 0.6, 0.5, 0.6), "photutils (y)": _scores((0.72, 0.5, 0.55), 0.65,
                                                                                           0.6, 0.5),
            "ours": _scores((0.8, 0.7, 0.54), 0.7, 0.5, 0.7)}
  c = protocol.done_checks(scores, "ours")
  assert not c["central_iou_above_baselines_every_r_bin"]  # 0.54 < photutils' 0.55 at r >= 21
  assert c["central_iou_by_r_bin_ours_vs_best_baseline"][">= 21"] == [0.54, 0.55]
  assert c["f1_snr_5-10_above_baselines"]
  assert c["neighbour_completeness_and_purity_at_least_sep"]
  scores["ours"]["neighbour_purity"] = 0.55
  assert not protocol.done_checks(scores, "ours")["neighbour_completeness_and_purity_at_least_sep"]


def _counts(n, central, mag, tp, fp, fn, nb):
  nb_true, nb_found, nb_pred, nb_real = nb
  full = lambda v: np.full(n, float(v))  # noqa: E731
  return {"central_iou": np.asarray(central, float) * np.ones(n), "central_mag": np.asarray(mag, float),
          "tp": full(tp), "fp": full(fp), "fn": full(fn), "nb_true": full(nb_true), "nb_found": full(nb_found),
          "nb_pred": full(nb_pred), "nb_real": full(nb_real)}


def test_check_margins_of_identical_cutouts_have_no_scatter():
  """Every cutout alike: each margin is exact and every resample gives it (by hand: F1 2*3/(2*3+1+1) = 0.75 vs
  SEP's 2*2/(2*2+0+2) = 0.667 and photutils' 2*3/(2*3+2+1) = 0.667; neighbours min(0.6-0.4, 0.9-0.8) = 0.1)."""
  n = 40
  mag = np.where(np.arange(n) % 2 == 0, 18.0, 22.0)  # bins < 19 and >= 21; 19-21 empty
  counts = {"ours": _counts(n, 0.8, mag, 3, 1, 1, (10, 6, 10, 9)),
            "SEP x": _counts(n, 0.7, mag, 2, 0, 2, (10, 4, 10, 8)),
            "photutils y": _counts(n, 0.75, mag, 3, 2, 1, (10, 9, 10, 5))}
  m = protocol.check_margins(counts, "ours", n_resamples=50)
  assert m["central IoU r < 19"]["margin"] == pytest.approx(0.05)
  assert m["central IoU r < 19"]["p5"] == pytest.approx(0.05) and m["central IoU r < 19"]["verdict"] == "met"
  assert m["central IoU r 19-21"]["verdict"] == "undefined"
  assert m["F1 (S/N bin)"]["margin"] == pytest.approx(0.75 - 2 / 3)
  assert m["F1 (S/N bin)"]["p95"] == pytest.approx(0.75 - 2 / 3) and m["F1 (S/N bin)"]["verdict"] == "met"
  assert m["neighbours"]["margin"] == pytest.approx(0.1)
  lonely = {name: {**c, "nb_true": np.zeros(n), "nb_found": np.zeros(n)} for name, c in counts.items()}
  assert protocol.check_margins(lonely, "ours", n_resamples=10)["neighbours"]["verdict"] == "undefined"


def test_check_margins_tell_a_noisy_difference_from_a_clear_one():
  """Ours 0.1 better on half the cutouts and 0.1 worse on the others: within noise; 0.3 worse on all: missed."""
  n = 200
  mag = np.full(n, 22.0)
  rng = np.random.default_rng(0)
  base = rng.uniform(0.5, 0.7, n)
  noisy = base + np.where(np.arange(n) % 2 == 0, 0.1, -0.1)
  counts = {"ours": {**_counts(n, 0.0, mag, 3, 1, 1, (10, 6, 10, 9)), "central_iou": noisy},
            "SEP": {**_counts(n, 0.0, mag, 2, 0, 2, (10, 4, 10, 8)), "central_iou": base},
            "photutils": {**_counts(n, 0.0, mag, 3, 2, 1, (10, 9, 10, 5)), "central_iou": base - 0.3}}
  m = protocol.check_margins(counts, "ours", n_resamples=400, seed=1)
  assert m["central IoU r >= 21"]["margin"] == pytest.approx(0.0, abs=1e-12)
  assert m["central IoU r >= 21"]["p5"] < 0 < m["central IoU r >= 21"]["p95"]
  assert m["central IoU r >= 21"]["verdict"] == "within noise"
  counts["ours"]["central_iou"] = base - 0.3
  assert protocol.check_margins(counts, "ours", n_resamples=50)["central IoU r >= 21"]["verdict"] == "missed"


def test_per_cutout_counts_sum_to_the_evaluated_metrics(split):
  """The per-cutout numbers are the pieces of `matching.evaluate`'s: summed (or averaged) they give its counts in
  an S/N bin, neighbour completeness and purity, and central IoU, for a prediction with a false neighbour and
  two missed ones."""
  pred = split.true_masks.copy()
  pred[0, :4, :4] = 9
  pred[1][pred[1] == 2] = 0
  pred[2][pred[2] == 1] = 0  # a missed central
  m = matching.evaluate(pred, split.true_masks, split.snr, split.truth)
  for snr_bin, label in (((-np.inf, 5.0), "< 5"), ((20.0, 50.0), "20-50")):  # the false one; 4 found, 1 missed
    c = matching.per_cutout_counts(pred, split.true_masks, split.snr, split.truth, snr_bin)
    row = [b for b in m["detection_by_snr"] if b["bin"] == label][0]
    assert (c["tp"].sum(), c["fp"].sum(), c["fn"].sum()) == (row["tp"], row["fp"], row["fn"])
    assert row["tp"] + row["fp"] + row["fn"] > 0
  assert c["nb_found"].sum() / c["nb_true"].sum() == pytest.approx(m["neighbour_completeness"])
  assert c["nb_real"].sum() / c["nb_pred"].sum() == pytest.approx(m["neighbour_purity"])
  assert np.nanmean(c["central_iou"]) == pytest.approx(m["central_iou"])
  assert c["nb_pred"].sum() == m["n_pred_neighbours"]
