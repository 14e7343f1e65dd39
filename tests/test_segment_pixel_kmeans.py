"""segment.pixel_kmeans: k-means on standardised pixels against sklearn, the object/background rules by hand."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from stargal_jax.segment import pixel_kmeans, pixels


def test_kmeans_assignment_is_nearest_standardised_centre():
  rng = np.random.default_rng(0)
  truth = rng.integers(0, 3, size=(4, 8, 8))
  centres = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 500.0], [0.0, 8.0, -500.0]])
  feats = centres[truth] + rng.normal(0, [1.0, 1.0, 50.0], size=(4, 8, 8, 3))
  model = pixel_kmeans.fit_pixel_kmeans(feats, k=3, sample_pixels=10_000, seed=0)  # all 256 pixels
  flat = feats.reshape(-1, 3)
  np.testing.assert_allclose(model.mean, flat.mean(0))
  np.testing.assert_allclose(model.scale, flat.std(0))
  ids = pixel_kmeans.assign_pixels(model, feats)
  brute = cdist((flat - flat.mean(0)) / flat.std(0), model.centres).argmin(1).reshape(4, 8, 8)
  np.testing.assert_array_equal(ids, brute)
  np.testing.assert_array_equal(pixel_kmeans.assign_pixels(model, feats, chunk_pixels=1), ids)
  assert adjusted_rand_score(truth.ravel(), ids.ravel()) == 1.0
  # Sampling fewer pixels than exist is seeded: same seed, same model.
  a = pixel_kmeans.fit_pixel_kmeans(feats, 3, sample_pixels=100, seed=5)
  b = pixel_kmeans.fit_pixel_kmeans(feats, 3, sample_pixels=100, seed=5)
  np.testing.assert_array_equal(a.centres, b.centres)
  # A NaN feature sits at the feature mean instead of breaking the fit or the assignment.
  feats[0, 0, 0, 2] = np.nan
  assert pixel_kmeans.assign_pixels(pixel_kmeans.fit_pixel_kmeans(feats, 3, seed=0), feats).min() >= 0


def test_feature_weights_scale_the_standardised_features():
  rng = np.random.default_rng(3)
  feats = rng.normal(size=(2, 8, 8, 3)) * [1.0, 5.0, 0.2]
  weights = np.array([1.0, 1.0, 4.0])
  weighted = pixel_kmeans.fit_pixel_kmeans(feats, 3, sample_pixels=10_000, seed=0, weights=weights)
  plain = pixel_kmeans.fit_pixel_kmeans(feats, 3, sample_pixels=10_000, seed=0)
  np.testing.assert_allclose(weighted.scale, plain.scale / weights)
  # Same as k-means on the standardised features with the last one multiplied by 4, done by hand.
  flat = feats.reshape(-1, 3)
  by_hand = KMeans(3, n_init=4, random_state=0).fit((flat - flat.mean(0)) / flat.std(0) * weights)
  assert adjusted_rand_score(by_hand.labels_, pixel_kmeans.assign_pixels(weighted, feats).ravel()) == 1.0


def test_foreground_rules_by_hand():
  ids = np.array([[[0, 1], [2, 2]]])
  snr = np.array([[[0.1, 3.0], [0.9, 1.5]]])
  np.testing.assert_allclose(pixel_kmeans.cluster_mean_snr(ids, snr, k=4), [0.1, 3.0, 1.2, np.nan])
  images = np.zeros((1, 5, 8, 8))
  images[0, :, :4] = 1.0  # top half bright in every band; background level/sigma come from noise below
  images += np.random.default_rng(0).normal(0, 0.1, images.shape)
  cluster_ids = np.zeros((1, 8, 8), int)
  cluster_ids[0, :4] = 1
  cluster_ids[0, 4:, :4] = 2  # a cluster of pure noise
  snr_means = pixel_kmeans.cluster_mean_snr(cluster_ids, pixels.snr_image(images))
  by_threshold = pixel_kmeans.FOREGROUND_RULES["snr_threshold"](snr_means, 1.0)
  np.testing.assert_array_equal(by_threshold[cluster_ids], cluster_ids == 1)  # only the bright half is object
  faintest = pixel_kmeans.FOREGROUND_RULES["faintest_is_background"](snr_means, 1.0)
  np.testing.assert_array_equal(faintest, np.arange(3) != np.argmin(snr_means))


def test_registries_fail_listing_valid_names():
  sample = pixel_kmeans.PixelSample(np.zeros((8, 2), np.float32), np.zeros(8), np.arange(8))
  with pytest.raises(KeyError, match="faintest_is_background"):
    pixel_kmeans.fit_segmenter(sample, 2, rule="otsu")
  with pytest.raises(KeyError, match="minibatch"):
    pixel_kmeans.fit_pixel_kmeans(np.zeros((1, 4, 4, 2)), 2, algorithm="gmm")

