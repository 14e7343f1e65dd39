"""Tests for stargal_jax.metrics against sklearn/scipy and brute-force loops over every cut."""

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import adjusted_rand_score, roc_auc_score

from stargal_jax import metrics


def _labelled_scores(n=400, seed=0, ties=False):
  rng = np.random.default_rng(seed)
  is_galaxy = rng.random(n) < 0.7
  score = rng.normal(size=n) + 1.2 * is_galaxy
  if ties:
    score = np.round(score, 1)  # many ties
  return is_galaxy, score


@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_matches_sklearn(ties):
  is_galaxy, score = _labelled_scores(ties=ties)
  assert metrics.roc_auc(is_galaxy, score) == pytest.approx(roc_auc_score(is_galaxy, score), abs=1e-12)
  flipped = 1 - roc_auc_score(is_galaxy, score)
  assert metrics.roc_auc(is_galaxy, -score) == pytest.approx(flipped, abs=1e-12)


def test_roc_auc_hand_example_and_one_class():
  # galaxies {3, 2}, stars {2, 1}: pairs (3>2), (3>1), (2=2 -> 0.5), (2>1) -> 3.5 / 4.
  assert metrics.roc_auc([1, 1, 0, 0], [3, 2, 2, 1]) == pytest.approx(0.875)
  assert math.isnan(metrics.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
  with pytest.raises(ValueError, match="non-finite"):
    metrics.roc_auc([1, 0], [0.5, np.nan])
  with pytest.raises(ValueError, match="QSO"):  # class codes must not pass as galaxy masks
    metrics.roc_auc([0, 1, 2], [0.1, 0.2, 0.3])


def test_prior_threshold_predictions_count_order_and_permutation():
  rng = np.random.default_rng(1)
  score = rng.normal(size=1001)
  prediction = metrics.prior_threshold_predictions(score, 0.3)
  assert np.count_nonzero(prediction == 0) == round(0.3 * 1001)
  assert score[prediction == 0].max() < score[prediction == 1].min()
  permutation = rng.permutation(score.size)
  np.testing.assert_array_equal(metrics.prior_threshold_predictions(score[permutation], 0.3),
                                prediction[permutation])
  assert metrics.prior_threshold_predictions(score, 0.0).all()
  assert not metrics.prior_threshold_predictions(score, 1.0).any()
  with pytest.raises(ValueError):
    metrics.prior_threshold_predictions(score, 1.5)


def _brute_galaxy_purity(is_galaxy, score, completeness):
  """Loops over cuts from the strictest: the first reaching the completeness gives the purity."""
  for t in np.sort(np.unique(score))[::-1]:
    selected = score >= t
    if (is_galaxy & selected).sum() / is_galaxy.sum() >= completeness:
      return (is_galaxy & selected).sum() / selected.sum()


def _brute_star_completeness(is_galaxy, score, purity):
  best = math.nan
  is_star = ~is_galaxy
  for t in np.unique(score):
    selected = score <= t
    if (is_star & selected).sum() / selected.sum() >= purity:
      value = (is_star & selected).sum() / is_star.sum()
      best = value if math.isnan(best) else max(best, value)
  return best


@pytest.mark.parametrize("ties", [False, True])
def test_purity_and_completeness_match_brute_force(ties):
  is_galaxy, score = _labelled_scores(n=300, seed=2, ties=ties)
  score = score + 3.0 * (~is_galaxy & (score < -1.5))  # a few stars at the galaxy end
  assert metrics.galaxy_purity_at_completeness(is_galaxy, score, 0.96) == pytest.approx(
      _brute_galaxy_purity(is_galaxy, score, 0.96))
  # A weak separation cannot reach 97% star purity; 0.6 is reachable.
  assert metrics.star_completeness_at_purity(is_galaxy, score, 0.6) == pytest.approx(
      _brute_star_completeness(is_galaxy, score, 0.6))


def test_purity_completeness_hand_example():
  # Scores ascending; labels: s s g s g g g g g g (s = star, g = galaxy).
  is_galaxy = np.array([0, 0, 1, 0, 1, 1, 1, 1, 1, 1], bool)
  score = np.arange(10.0)
  # 7 galaxies; 96% needs all 7 -> cut at score >= 2 selects 8 objects: purity 7/8.
  assert metrics.galaxy_purity_at_completeness(is_galaxy, score, 0.96) == pytest.approx(7 / 8)
  # Star cuts score <= t: t=0,1 pure (completeness 1/3, 2/3); t=3 gives 3/4 purity, 3/3 complete.
  assert metrics.star_completeness_at_purity(is_galaxy, score, 0.97) == pytest.approx(2 / 3)
  assert metrics.star_completeness_at_purity(is_galaxy, score, 0.75) == pytest.approx(1.0)


def test_unattainable_returns_nan_with_reason():
  is_galaxy = np.array([1, 0, 1, 0], bool)  # the lowest score is a galaxy: no pure star cut
  with pytest.warns(UserWarning, match="star purity"):
    assert math.isnan(metrics.star_completeness_at_purity(is_galaxy, [0.0, 1.0, 2.0, 3.0], 0.97))
  with pytest.warns(UserWarning, match="no galaxies"):
    assert math.isnan(metrics.galaxy_purity_at_completeness([0, 0], [0.0, 1.0]))


def test_classification_metrics_overall_and_by_mag():
  is_galaxy, score = _labelled_scores(n=600, seed=3)
  rng = np.random.default_rng(33)  # independent of the labels' generator
  r_mag = rng.uniform(16, 23, size=score.size)
  r_mag[:5] = np.nan
  bright_stars_only = (r_mag < 17.0)
  is_galaxy = is_galaxy & ~bright_stars_only  # the brightest bin below holds stars only
  result = metrics.classification_metrics(is_galaxy, score, 0.3, r_mag, mag_bins=(17.0, 19.0, 21.0))
  assert result["auc"] == pytest.approx(roc_auc_score(is_galaxy, score))
  assert result["auc_best_sign"] == pytest.approx(max(result["auc"], 1 - result["auc"]))
  predictions = metrics.prior_threshold_predictions(score, 0.3)
  assert result["accuracy"] == pytest.approx(np.mean(predictions == is_galaxy))
  assert result["n"] == 600 and result["n_galaxy"] == is_galaxy.sum() and result["n_without_mag"] == 5
  labels = [b["label"] for b in result["by_mag"]]
  assert labels == ["r<17", "17<=r<19", "19<=r<21", "r>=21"]
  first, second = result["by_mag"][0], result["by_mag"][1]
  assert math.isnan(first["auc"]) and any("one class" in note for note in first["notes"])
  in_second = (r_mag >= 17) & (r_mag < 19)
  assert second["auc"] == pytest.approx(roc_auc_score(is_galaxy[in_second], score[in_second]))
  assert second["accuracy"] == pytest.approx(np.mean(predictions[in_second] == is_galaxy[in_second]))
  assert sum(b["n"] for b in result["by_mag"]) == 595
  text = json.dumps(metrics.to_json_safe(result), allow_nan=False)  # NaN must have become null
  assert json.loads(text)["by_mag"][0]["auc"] is None


def test_to_json_safe_converts_numpy_and_nonfinite():
  value = {"a": np.float32(1.5), "b": np.array([1.0, np.nan, np.inf]), "c": (np.int64(3), -np.inf)}
  assert metrics.to_json_safe(value) == {"a": 1.5, "b": [1.0, None, None], "c": [3, None]}


def test_orient_score_uses_extendedness_not_labels():
  rng = np.random.default_rng(4)
  extent = rng.normal(size=500)
  score = -2.0 * extent + rng.normal(size=500)  # anti-correlated: must flip
  oriented, sign = metrics.orient_score(score, extent)
  assert sign == -1
  np.testing.assert_allclose(oriented, -score)
  extent_with_nan = extent.copy()
  extent_with_nan[:10] = np.nan
  assert metrics.orient_score(-score, extent_with_nan)[1] == 1
  with pytest.warns(UserWarning, match="uncorrelated"):
    assert metrics.orient_score(score, np.ones(500))[1] == 1


def test_summarize_over_seeds_matches_scipy_t_interval():
  values = np.array([0.90, 0.91, 0.88, 0.93, 0.89, np.nan])
  summary = metrics.summarize_over_seeds(values)
  finite = values[:-1]
  low, high = stats.t.interval(0.95, df=4, loc=finite.mean(), scale=stats.sem(finite))
  assert summary["n"] == 5 and summary["n_nonfinite"] == 1
  assert summary["mean"] == pytest.approx(finite.mean())
  assert summary["std"] == pytest.approx(finite.std(ddof=1))
  assert (summary["min"], summary["max"]) == (0.88, 0.93)
  assert (summary["ci95_low"], summary["ci95_high"]) == (pytest.approx(low), pytest.approx(high))
  single = metrics.summarize_over_seeds([0.8])
  assert single["mean"] == 0.8 and math.isnan(single["std"])


def test_seed_agreement_is_mean_pairwise_ari():
  rng = np.random.default_rng(5)
  base = rng.integers(0, 2, 300)
  swapped = 1 - base
  noisy = np.where(rng.random(300) < 0.2, 1 - base, base)
  expected = np.mean([adjusted_rand_score(base, swapped), adjusted_rand_score(base, noisy),
                      adjusted_rand_score(swapped, noisy)])
  assert metrics.seed_agreement([base, swapped, noisy]) == pytest.approx(expected)
  assert metrics.seed_agreement([base, swapped]) == pytest.approx(1.0)
  with pytest.raises(ValueError):
    metrics.seed_agreement([base])
