"""Tests for stargal_jax.classify.manifold on synthetic curved 1-D manifolds with known groups."""

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from stargal_jax.classify import manifold


def arc_with_two_segments(n=240, seed=0, noise=0.05):
  """Points on a 3-D-embedded arc of radius 3: group 1 on angles 0.2-1.2, group 0 on 1.8-3.0.

  The two groups overlap along the first coordinate's straight-line projection less than along
  the arc, which is what a 1-D manifold learner must follow.
  """
  rng = np.random.default_rng(seed)
  group = rng.random(n) < 0.3
  angle = np.where(group, rng.uniform(0.2, 1.2, n), rng.uniform(1.8, 3.0, n))
  points = np.c_[3 * np.cos(angle), 3 * np.sin(angle), np.zeros(n)] + rng.normal(0, noise, (n, 3))
  return points, group, angle


def connected_arc(n=240, seed=1, noise=0.05):
  rng = np.random.default_rng(seed)
  angle = rng.uniform(0.2, 3.0, n)
  points = np.c_[3 * np.cos(angle), 3 * np.sin(angle), np.zeros(n)] + rng.normal(0, noise, (n, 3))
  return points, angle


def best_sign_auc(labels, score):
  auc = roc_auc_score(labels, score)
  return max(auc, 1 - auc)


@pytest.mark.parametrize("method", sorted(manifold.EMBEDDINGS))
def test_each_embedding_separates_the_two_groups(method):
  points, group, _ = arc_with_two_segments()
  score = manifold.embed_1d(points, method, n_neighbors=10, seed=0)
  assert score.shape == (len(points),)
  assert best_sign_auc(group, score) > 0.95


@pytest.mark.parametrize("method", sorted(manifold.EMBEDDINGS))
def test_out_of_sample_extension_agrees_with_full_fit(method):
  points, angle = connected_arc()
  full = manifold.embed_1d(points, method, fit_size=len(points), seed=0)
  subsampled = manifold.embed_1d(points, method, fit_size=120, seed=0)
  assert abs(spearmanr(full, subsampled).statistic) > 0.95
  assert abs(spearmanr(full, angle).statistic) > 0.95  # and both follow the arc


def test_isomap_follows_the_arc_where_pca_folds_it():
  # Seven eighths of a circle: its PCA projection folds the ends together, geodesics do not.
  rng = np.random.default_rng(2)
  angle = rng.uniform(0.0, 1.75 * np.pi, 300)
  points = np.c_[np.cos(angle), np.sin(angle)] + rng.normal(0, 0.01, (300, 2))
  isomap = abs(spearmanr(manifold.embed_1d(points, "isomap"), angle).statistic)
  pca = abs(spearmanr(manifold.embed_1d(points, "pca"), angle).statistic)
  assert isomap > 0.99 and pca < 0.9


@pytest.mark.parametrize("method", ["isomap", "spectral", "tsne"])
def test_deterministic_given_seed(method):
  points, _, _ = arc_with_two_segments(n=160, seed=3)
  first = manifold.embed_1d(points, method, fit_size=100, seed=7)
  second = manifold.embed_1d(points, method, fit_size=100, seed=7)
  # ARPACK draws its start vector from numpy's global generator: equal to rounding, not bits.
  np.testing.assert_allclose(first, second, rtol=0, atol=1e-9 * np.abs(first).max())
  other_subsample = manifold.embed_1d(points, method, fit_size=100, seed=8)
  assert not np.allclose(first, other_subsample)


def test_one_dimensional_latents_pass_through():
  values = np.array([3.0, -1.0, 2.5])
  np.testing.assert_array_equal(manifold.embed_1d(values, "isomap"), values)
  np.testing.assert_array_equal(manifold.embed_1d(values[:, None], "tsne"), values)


def test_unknown_names_list_valid_names():
  with pytest.raises(ValueError, match="isomap.*pca.*spectral.*tsne"):
    manifold.embed_1d(np.zeros((5, 2)), "umap")
  with pytest.raises(ValueError, match="gmm.*kmeans"):
    manifold.cluster_2(np.zeros((5, 2)), "dbscan", seed=0)


@pytest.mark.parametrize("method", sorted(manifold.CLUSTERERS))
def test_cluster_2_finds_the_groups(method):
  points, group, _ = arc_with_two_segments(seed=4)
  labels, score = manifold.cluster_2(points, method, seed=0)
  assert set(np.unique(labels)) == {0, 1}
  agreement = max(np.mean(labels == group), np.mean(labels != group))
  assert agreement > 0.97
  assert best_sign_auc(group, score) > 0.99
  # The score and the labels tell the same story: label 1 has the larger scores.
  assert score[labels == 1].min() >= score[labels == 0].max()
  np.testing.assert_array_equal(manifold.cluster_2(points, method, seed=0)[0], labels)


def test_kmeans_score_is_the_distance_difference():
  rng = np.random.default_rng(5)
  points = np.r_[rng.normal(-2, 0.3, (50, 2)), rng.normal(2, 0.3, (50, 2))]
  labels, score = manifold.cluster_2(points, "kmeans", seed=0)
  centres = np.array([points[labels == 0].mean(0), points[labels == 1].mean(0)])
  expected = (np.linalg.norm(points - centres[0], axis=1) - np.linalg.norm(points - centres[1], axis=1))
  np.testing.assert_allclose(score, expected, rtol=1e-6)
  assert centres[1, 0] > centres[0, 0]  # component 1: larger first coordinate


def test_supervised_ceiling_separable_and_random_labels():
  rng = np.random.default_rng(6)
  points = rng.normal(size=(400, 3))
  separable = points[:, 0] + 0.5 * points[:, 1] > 0
  ceiling = manifold.supervised_ceiling(points * [1.0, 1.0, 100.0], separable, seed=0)
  assert ceiling["auc"] > 0.99 and ceiling["accuracy"] > 0.95
  noise = manifold.supervised_ceiling(points, rng.random(400) < 0.5, seed=0)
  assert abs(noise["auc"] - 0.5) < 0.1 and abs(noise["accuracy"] - 0.5) < 0.1


def mixed_morphology_and_brightness(n=3000, seed=0):
  """A 2-unit latent that mixes a bimodal 'morphology' with a skewed 'brightness' (which also differs a
  little between the classes, as on the sky), rotated and scaled: a GMM on it splits by brightness."""
  rng = np.random.default_rng(seed)
  group = rng.random(n) < 0.3
  magnitude = rng.gamma(2.0, 1.5, n) + 17 + 0.5 * group
  morphology = np.where(group, 1.0, -1.0) + rng.normal(0, 0.35, n)
  brightness = (magnitude - magnitude.mean()) * 2.0
  mixing = np.array([[0.8, 0.6], [-0.3, 0.9]])
  return np.c_[morphology, brightness] @ mixing.T + 0.1, magnitude, group


def test_uncorrelated_with_removes_the_nuisance_and_keeps_the_groups():
  latents, magnitude, group = mixed_morphology_and_brightness()
  score = manifold.uncorrelated_with(latents, magnitude)
  assert abs(np.corrcoef(score, magnitude)[0, 1]) < 1e-10
  assert best_sign_auc(group, score) > 0.99
  assert best_sign_auc(group, manifold.cluster_2(latents, "gmm")[1]) < 0.9  # what it fixes


def test_uncorrelated_with_matches_the_closed_form_direction_in_2d():
  # In 2-D the score is z . a with a . cov(z, m) = 0, i.e. a = (-c1, c0): the same up to scale and sign.
  latents, magnitude, _ = mixed_morphology_and_brightness(seed=1)
  c = np.cov(np.c_[latents, magnitude], rowvar=False)[:2, 2]
  direct = latents @ np.array([-c[1], c[0]])
  assert abs(np.corrcoef(manifold.uncorrelated_with(latents, magnitude), direct)[0, 1]) > 1 - 1e-12


def test_uncorrelated_with_ignores_linear_reparameterisation_and_non_finite_nuisance():
  latents, magnitude, _ = mixed_morphology_and_brightness(seed=2)
  score = manifold.uncorrelated_with(latents, magnitude)
  moved = manifold.uncorrelated_with(latents @ np.array([[3.0, 1.0], [0.5, -2.0]]) - 7.0, magnitude)
  assert abs(np.corrcoef(score, moved)[0, 1]) > 1 - 1e-12
  holes = magnitude.copy()
  holes[:10] = np.nan
  with_holes = manifold.uncorrelated_with(latents, holes)
  assert np.all(np.isfinite(with_holes)) and abs(np.corrcoef(score, with_holes)[0, 1]) > 0.999


def test_uncorrelated_with_clusters_the_remainder_of_a_wider_latent():
  latents, magnitude, group = mixed_morphology_and_brightness(seed=3)
  noise = np.random.default_rng(3).normal(0, 0.05, (len(latents), 1))
  score = manifold.uncorrelated_with(np.c_[latents, noise], magnitude)
  assert score.min() >= 0 and score.max() <= 1  # a GMM posterior
  assert best_sign_auc(group, score) > 0.99


def test_uncorrelated_with_rejects_what_it_cannot_use():
  latents, magnitude, _ = mixed_morphology_and_brightness(n=100)
  with pytest.raises(ValueError, match=">= 2 units"):
    manifold.uncorrelated_with(latents[:, :1], magnitude)
  with pytest.raises(ValueError, match="100 latents but 99"):
    manifold.uncorrelated_with(latents, magnitude[:99])
  with pytest.raises(ValueError, match="finite nuisance"):
    manifold.uncorrelated_with(latents, np.full(100, np.nan))


def test_isomap_falls_back_to_the_dense_eigensolver_when_arpack_fails(monkeypatch):
  from scipy.sparse.linalg import ArpackError
  from sklearn.manifold import Isomap
  points, group, _ = arc_with_two_segments()
  expected = manifold.embed_1d(points, "isomap")
  real_fit = Isomap.fit
  solvers = []

  def fit_failing_with_arpack(self, X, y=None):
    solvers.append(self.eigen_solver)
    if self.eigen_solver != "dense":
      raise ArpackError(-9)
    return real_fit(self, X, y)

  monkeypatch.setattr(Isomap, "fit", fit_failing_with_arpack)
  with pytest.warns(UserWarning, match="ARPACK failed"):
    score = manifold.embed_1d(points, "isomap")
  assert solvers == ["auto", "dense"]
  assert abs(spearmanr(score, expected).statistic) > 0.999 and best_sign_auc(group, score) > 0.95


def test_ceiling_models_are_cross_validated_by_hand():
  from sklearn.ensemble import HistGradientBoostingClassifier
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import roc_auc_score
  from sklearn.model_selection import StratifiedKFold
  from sklearn.preprocessing import StandardScaler

  rng = np.random.default_rng(6)
  n = 300
  galaxy = rng.random(n) < 0.6
  features = np.c_[rng.normal(size=n) + galaxy, rng.normal(size=n) * (1 + galaxy)]  # one linear, one not
  r_mag = rng.uniform(17, 23, n)
  for model in ("logistic", "boosting"):
    got = manifold.supervised_ceiling(features, galaxy, seed=2, model=model, r_mag=r_mag, mag_bins=(19.0, 21.0))
    probability = np.zeros(n)
    for train, test in StratifiedKFold(5, shuffle=True, random_state=2).split(features, galaxy):
      if model == "logistic":
        scaler = StandardScaler().fit(features[train])
        fit = LogisticRegression(max_iter=1000).fit(scaler.transform(features[train]), galaxy[train])
        probability[test] = fit.predict_proba(scaler.transform(features[test]))[:, 1]
      else:
        fit = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, early_stopping=True,
                                             validation_fraction=0.15, random_state=2).fit(features[train],
                                                                                         galaxy[train])
        probability[test] = fit.predict_proba(features[test])[:, 1]
    assert got["auc"] == pytest.approx(roc_auc_score(galaxy, probability), abs=1e-9)
    faint = r_mag >= 21
    assert got["by_mag"][2]["auc"] == pytest.approx(roc_auc_score(galaxy[faint], probability[faint]), abs=1e-9)
  with pytest.raises(KeyError, match="logistic"):
    manifold.supervised_ceiling(features, galaxy, model="svm")
