"""segment.fitted_model: chunked fitting and segmentation against the unchunked computation; the
reconstruction error by hand; segmentation of synthetic scenes with known truth."""

import numpy as np
import pytest

from stargal_jax import models, train
from stargal_jax.segment import fitted_model, hypercolumns, labelling, pixel_kmeans, pixels, scoring
from synthetic_scenes import fit_and_segment, make_scenes, perfect_features, two_blob_scenes


@pytest.fixture(scope="module")
def scenes():
  return make_scenes(8, seed=1)


@pytest.fixture(scope="module")
def tiny_model():
  model = models.build_model("residual_conv_ae", dict(latent_dim=4, channels=(4, 4, 4, 4)), 0)
  graphdef, params, state = models.split_model(model)
  return train.TrainResult(graphdef, params, state, [])


def test_segment_recovers_central_and_neighbours(scenes):
  images, truth, table = scenes
  masks, _ = fit_and_segment(perfect_features(images), images, k=4, seed=0)
  s = scoring.score_masks(masks, truth, table)
  assert s["central_iou"] > 0.8
  neighbour_iou = (((masks >= 2) & (truth >= 2)).sum() / ((masks >= 2) | (truth >= 2)).sum())
  assert neighbour_iou > 0.8
  assert s["neighbour_completeness"] >= 0.9 and s["neighbour_purity"] >= 0.9
  np.testing.assert_array_equal(fit_and_segment(perfect_features(images), images, k=4, seed=0)[0], masks)


def test_chunked_segmentation_equals_unchunked(tiny_model):
  images, _ = two_blob_scenes(7, seed=1)
  x = pixels.model_inputs(images, {"method": "zscore", "center": [0.0] * 5, "scale": [0.05] * 5, "version": 1,
                                "bands": list("ugriz")})
  fetch = lambda idx: x[idx]
  hc_fn = hypercolumns.make_hypercolumn_fn(tiny_model, (0, 6, 7))
  full = hc_fn(x)  # every image at once: the unchunked reference
  k, n_sample, seed = 3, 3000, 5
  # Chunks of 3 over 7 images: the last chunk is padded, and the sample straddles chunk borders.
  sample = hypercolumns.gather_pixel_sample(hypercolumns.iter_hypercolumns(hc_fn, fetch, 7, 3),
                                            lambda idx: images[idx], 7,
                                   n_sample, seed)
  rows = np.sort(np.random.default_rng(seed).choice(7 * 64 * 64, n_sample, replace=False))
  np.testing.assert_array_equal(sample.rows, rows)
  np.testing.assert_allclose(sample.features, full.reshape(-1, full.shape[-1])[rows], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sample.snr, pixels.snr_image(images, "gri").reshape(-1)[rows], rtol=1e-6)

  fitted = pixel_kmeans.fit_segmenter(sample, k, seed)
  reference = pixel_kmeans.fit_pixel_kmeans(full, k, n_sample, seed)  # draws the same rows itself
  np.testing.assert_allclose(fitted.kmeans.centres, reference.centres, rtol=1e-4, atol=1e-5)
  ids = pixel_kmeans.assign_clusters({k: fitted}, hypercolumns.iter_hypercolumns(hc_fn, fetch, 7, 3), 7)[k]
  ref_ids = pixel_kmeans.assign_pixels(reference, full)
  assert (ids == ref_ids).mean() > 0.9999
  # The object calls from the sample agree with the mean S/N of every pixel of each cluster.
  full_snr = pixel_kmeans.cluster_mean_snr(ref_ids, pixels.snr_image(images, "gri"), k)
  np.testing.assert_array_equal(fitted.is_object, full_snr > 1.0)
  masks = fitted_model.segment_set({k: fitted}, hc_fn, fetch, 7, 3, labelling.LabelOptions())[k]
  expected = labelling.label_objects(fitted.is_object[ref_ids])
  assert (masks == expected).mean() > 0.9999
  assert masks.dtype == labelling.MASK_DTYPE


def test_reconstruction_error_matches_direct_computation(tiny_model):
  x = np.random.default_rng(2).normal(size=(5, 64, 64, 5)).astype(np.float32)
  rows = np.array([0, 2, 3, 4])
  got = fitted_model.reconstruction_error(tiny_model, lambda idx: x[idx], rows, batch_size=3)
  outputs, _ = models.apply_model(tiny_model.graphdef, tiny_model.params, tiny_model.model_state, x[rows])
  err = (np.asarray(outputs["recon"], np.float64) - x[rows]) ** 2
  assert got["mse"] == pytest.approx(err.mean(), rel=1e-4)
  np.testing.assert_allclose(list(got["mse_per_band"].values()), err.mean(axis=(0, 1, 2)), rtol=1e-4)
  assert got["unexplained_fraction"] == pytest.approx(err.sum() / (x[rows].astype(np.float64) ** 2).sum(), rel=1e-4)
