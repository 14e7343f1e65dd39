"""classify.evaluate: a seed's metrics against sklearn, the seed study's summary against numpy/scipy/sklearn."""

import itertools

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import adjusted_rand_score, roc_auc_score

from stargal_jax.classify import evaluate
from stargal_jax.data import store as stores


def labelled_store(labels):
  index = np.zeros(len(labels), stores.INDEX_DTYPE)
  index["objID"], index["label"] = np.arange(len(labels)), labels
  return stores.Store(root=None, images=np.zeros((len(labels), 5, 1, 1), np.float32), index=index, files=(),
                      summary={})


def scored_seed(score, star_fraction=0.3):
  threshold = float(np.quantile(score, star_fraction))
  return {"score": score, "pred": (score > threshold).astype(np.int8), "orientation_sign": 1, "threshold": threshold}


@pytest.fixture(scope="module")
def study():
  rng = np.random.default_rng(0)
  labels = rng.choice([0, 1, 2], size=300, p=[0.25, 0.7, 0.05]).astype(np.int8)  # QSOs count with the stars
  galaxy = labels == 1
  measurements = {"r_mag": rng.uniform(16, 23, 300), "extendedness": rng.normal(size=300),
                  "baseline_concentration": rng.normal(size=300) + galaxy}
  scores = [rng.normal(size=300) + strength * galaxy for strength in (0.5, 1.0, 2.0)]
  latents = np.c_[scores[0], rng.normal(size=300)]
  store = labelled_store(labels)
  evaluations = [evaluate.evaluate(latents, scored_seed(s), store, measurements, 0.3, (19.0, 21.0), seed=s_i,
                                   supervised_ceiling=s_i == 0) for s_i, s in enumerate(scores)]
  return labels, galaxy, scores, measurements, store, evaluations


def test_one_seed_against_sklearn(study):
  labels, galaxy, scores, measurements, _, evaluations = study
  first = evaluations[0]
  assert first["method"]["auc"] == pytest.approx(roc_auc_score(galaxy, scores[0]))
  assert first["method"]["auc_best_sign"] == pytest.approx(max(first["method"]["auc"], 1 - first["method"]["auc"]))
  assert first["method"]["accuracy"] == pytest.approx(np.mean(first["pred"] == galaxy))
  assert first["baselines"]["concentration"]["auc"] == pytest.approx(
      roc_auc_score(galaxy, measurements["baseline_concentration"]))
  assert "supervised_ceiling" in first and "supervised_ceiling" not in evaluations[1]
  np.testing.assert_array_equal(first["score"], scores[0])
  bright = measurements["r_mag"] < 19.0
  assert first["method"]["by_mag"][0]["auc"] == pytest.approx(roc_auc_score(galaxy[bright], scores[0][bright]))


def test_seed_study_summary_against_numpy_scipy_and_sklearn(study):
  labels, galaxy, scores, measurements, store, evaluations = study
  numbers, over_seeds = evaluate.seed_study(evaluations, store, measurements, 0.3, (19.0, 21.0))
  aucs = np.array([roc_auc_score(galaxy, s) for s in scores])
  np.testing.assert_allclose(numbers["auc_per_seed"], aucs)
  assert numbers["auc"] == numbers["auc_mean"] == pytest.approx(aucs.mean())
  assert numbers["auc_std"] == pytest.approx(aucs.std(ddof=1))
  half = stats.t.ppf(0.975, 2) * aucs.std(ddof=1) / np.sqrt(3)
  np.testing.assert_allclose(numbers["auc_ci95"], [aucs.mean() - half, aucs.mean() + half])
  assert over_seeds["auc"]["mean"] == pytest.approx(aucs.mean()) and numbers["num_seeds"] == 3
  pairs = [adjusted_rand_score(evaluations[a]["pred"], evaluations[b]["pred"])
           for a, b in itertools.combinations(range(3), 2)]
  assert numbers["seed_agreement_ari"] == pytest.approx(np.mean(pairs))
  # Mean rank; the same rounding as the library's (each seed's ranks / (N - 1), then the mean), as averaged ranks tie.
  ranks = np.mean([(stats.rankdata(s) - 1) / 299 for s in scores], axis=0)
  assert numbers["consensus"]["auc"] == pytest.approx(roc_auc_score(galaxy, ranks))
  assert len(numbers["by_mag_per_seed"]) == 3
