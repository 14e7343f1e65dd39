"""Segmentation jobs end to end (smoke), chunked hypercolumn k-means against the unchunked computation,
masked stores, subset AUCs, and the HSC band mapping."""

import json
import shutil
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from stargal_jax import experiment, inputs as inputs_lib, models, paths, train
from stargal_jax import segmentation as seg
from stargal_jax import segmentation_job as job
from stargal_jax.data import store as stores
from conftest import load_config

REPO = Path(__file__).resolve().parents[1]


def scenes(n, seed=0, size=64):
  """Noise + a central Gaussian blob + one off-centre neighbour; truth-like masks (1 central, 2 neighbour)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size]
  images = rng.normal(0.0, 0.05, (n, 5, size, size)).astype(np.float32)
  masks = np.zeros((n, size, size), np.int32)
  for i in range(n):
    nx, ny = rng.uniform(8, 20), rng.uniform(40, 56)
    central = np.exp(-0.5 * ((xx - 32) ** 2 + (yy - 32) ** 2) / 3.0 ** 2)
    neighbour = np.exp(-0.5 * ((xx - nx) ** 2 + (yy - ny) ** 2) / 2.0 ** 2)
    images[i] += (2.0 * central + 1.0 * neighbour)[None].astype(np.float32)
    masks[i][central > 0.05] = 1
    masks[i][neighbour > 0.05] = 2
  return images, masks


# --------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def segmentation_run(smoke_cache, tmp_path_factory):
  config = load_config("segmentation")
  config.data.cache_dir = smoke_cache
  workdir = tmp_path_factory.mktemp("segmentation")
  return config, workdir, experiment.run(config, workdir)


def test_segmentation_job_smoke(segmentation_run):
  config, workdir, out = segmentation_run
  labelled = inputs_lib.load_inputs(config.data, seed=config.seed).labelled
  with np.load(workdir / "segmentation.npz", allow_pickle=False) as f:
    objid, masks = f["objID"], f["mask"]
  np.testing.assert_array_equal(objid, labelled.index["objID"])
  assert np.issubdtype(masks.dtype, np.integer) and masks.shape == (len(labelled), 64, 64)
  assert masks.min() >= 0
  for m in masks[:50]:  # neighbour labels run 2, 3, ... without gaps
    nb = np.unique(m[m >= 2])
    np.testing.assert_array_equal(nb, np.arange(2, 2 + nb.size))
  centre_is_central = (masks[:, 31:33, 31:33] == 1).any(axis=(1, 2))
  assert centre_is_central.mean() > 0.8
  written = json.loads((workdir / "metrics.json").read_text())
  assert set(written["reconstruction"]["models"]) == {"conv_ae", "residual_conv_ae"}
  assert [r["k"] for r in written["k_sweep"]] == [3, 4]
  ours, sep_scores = written["scores"].values()
  assert 0.3 < ours["central_iou"] <= 1 and 0.3 < sep_scores["central_iou"] <= 1
  assert out["segmentation"]["central_found_fraction"] == pytest.approx(
      (masks == 1).any(axis=(1, 2)).mean())
  assert (workdir / "report.md").read_text().count("| ours (k=4) |") >= 1
  assert (workdir / "plots" / "segmentation_examples.png").stat().st_size > 1000


def test_seg_cvae_smoke(segmentation_run, tmp_path):
  config = load_config("seg_cvae")
  config.data.cache_dir = segmentation_run[0].data.cache_dir
  config.eval.plots = False
  config.num_seeds = 2  # the seed-study path: per-seed subset AUCs and paired gains
  # Same segmentation AE settings: it resumes from the segmentation run's final checkpoint, so only the
  # two classifications train here (keeps the file fast).
  shutil.copytree(segmentation_run[1] / "checkpoints" / "residual_conv_ae",
                  tmp_path / "checkpoints" / "residual_conv_ae")
  out = experiment.run(config, tmp_path)
  written = json.loads((tmp_path / "metrics.json").read_text())
  for key in ("auc_masked", "auc_unmasked", "auc_with_neighbours_masked", "auc_with_neighbours_unmasked"):
    assert 0.0 <= written[key] <= 1.0
  assert written["auc_masked"] == pytest.approx(json.loads((tmp_path / "masked" / "metrics.json").read_text())["auc"])
  assert written["subsets"]["unmasked"]["with_neighbours"]["n"] > 0
  assert out["auc_gain_with_neighbours"] == pytest.approx(
      out["auc_with_neighbours_masked"] - out["auc_with_neighbours_unmasked"])
  assert len(written["subsets"]["masked"]["all"]["auc_per_seed"]) == 2
  assert out["gain"]["with_neighbours"]["mean"] == pytest.approx(out["auc_gain_with_neighbours"])
  assert "mean change" in (tmp_path / "report.md").read_text()
  masked = stores.load_store(tmp_path / "masked_stores" / "labelled")
  np.testing.assert_array_equal(masked.index["objID"], np.load(tmp_path / "segmentation.npz")["objID"])


# --------------------------------------------------------------------------- chunking

@pytest.fixture(scope="module")
def tiny_model():
  model = models.build_model("residual_conv_ae", dict(latent_dim=4, channels=(4, 4, 4, 4)), 0)
  graphdef, params, state = models.split_model(model)
  return train.TrainResult(graphdef, params, state, [])


def test_hypercolumn_fn_matches_eager_features(tiny_model):
  x = np.random.default_rng(0).normal(size=(3, 64, 64, 5)).astype(np.float32)
  layers = (0, 6, 7)
  outputs, _ = models.apply_model(tiny_model.graphdef, tiny_model.params, tiny_model.model_state, x,
                                  return_features=True)
  expected = models.hypercolumns([outputs["features"][i] for i in layers])
  got = job.make_hypercolumn_fn(tiny_model, layers)(x)
  assert got.shape == (3, 64, 64, 12)
  np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="out of range"):
    job.make_hypercolumn_fn(tiny_model, (8,))(x)


def test_detection_channel_is_appended_with_its_share_of_the_variance(tiny_model):
  x = np.random.default_rng(1).normal(size=(2, 64, 64, 5)).astype(np.float32)
  detection = job.DetectionChannel(share=0.5, sigma_px=1.2)
  got = job.make_hypercolumn_fn(tiny_model, (0, 6, 7), detection=detection)(x)
  np.testing.assert_allclose(got[..., :12], job.make_hypercolumn_fn(tiny_model, (0, 6, 7))(x))
  np.testing.assert_allclose(got[..., 12], seg.detection_image(np.transpose(x, (0, 3, 1, 2)), "gri", 1.2))
  for share in (0.25, 0.5, 0.75):
    w = job.DetectionChannel(share=share).weights(13)
    assert np.all(w[:12] == 1.0) and w[12] ** 2 / (w[12] ** 2 + 12) == pytest.approx(share)
  config = ml_collections.ConfigDict(dict(detection_share=0.0, detection_sigma_px=1.2, snr_bands="gri"))
  assert job.DetectionChannel.from_config(config) is None
  config.detection_share = 1.0
  with pytest.raises(ValueError, match="detection_share"):
    job.DetectionChannel.from_config(config)


def test_chunked_segmentation_equals_unchunked(tiny_model):
  images, _ = scenes(7, seed=1)
  x = job.model_inputs(images, {"method": "zscore", "center": [0.0] * 5, "scale": [0.05] * 5, "version": 1,
                                "bands": list("ugriz")})
  fetch = lambda idx: x[idx]
  hc_fn = job.make_hypercolumn_fn(tiny_model, (0, 6, 7))
  full = hc_fn(x)  # every image at once: the unchunked reference
  k, n_sample, seed = 3, 3000, 5
  # Chunks of 3 over 7 images: the last chunk is padded, and the sample straddles chunk borders.
  sample = job.gather_pixel_sample(job.iter_hypercolumns(hc_fn, fetch, 7, 3), lambda idx: images[idx], 7,
                                   n_sample, seed)
  rows = np.sort(np.random.default_rng(seed).choice(7 * 64 * 64, n_sample, replace=False))
  np.testing.assert_array_equal(sample.rows, rows)
  np.testing.assert_allclose(sample.features, full.reshape(-1, full.shape[-1])[rows], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sample.snr, seg.snr_image(images, "gri").reshape(-1)[rows], rtol=1e-6)

  fitted = job.fit_segmenter(sample, k, seed)
  reference = seg.fit_pixel_kmeans(full, k, n_sample, seed)  # draws the same rows itself
  np.testing.assert_allclose(fitted.kmeans.centres, reference.centres, rtol=1e-4, atol=1e-5)
  ids = job.assign_clusters({k: fitted}, job.iter_hypercolumns(hc_fn, fetch, 7, 3), 7)[k]
  ref_ids = seg.assign_pixels(reference, full)
  assert (ids == ref_ids).mean() > 0.9999
  # The object calls from the sample agree with the mean S/N of every pixel of each cluster.
  full_snr = seg.cluster_mean_snr(ref_ids, seg.snr_image(images, "gri"), k)
  np.testing.assert_array_equal(fitted.is_object, full_snr > 1.0)
  masks = job.segment_set({k: fitted}, hc_fn, fetch, 7, 3, job.LabelOptions())[k]
  expected = seg.label_objects(fitted.is_object[ref_ids])
  assert (masks == expected).mean() > 0.9999
  assert masks.dtype == job.MASK_DTYPE


def test_reconstruction_error_matches_direct_computation(tiny_model):
  x = np.random.default_rng(2).normal(size=(5, 64, 64, 5)).astype(np.float32)
  rows = np.array([0, 2, 3, 4])
  got = job.reconstruction_error(tiny_model, lambda idx: x[idx], rows, batch_size=3)
  outputs, _ = models.apply_model(tiny_model.graphdef, tiny_model.params, tiny_model.model_state, x[rows])
  err = (np.asarray(outputs["recon"], np.float64) - x[rows]) ** 2
  assert got["mse"] == pytest.approx(err.mean(), rel=1e-4)
  np.testing.assert_allclose(list(got["mse_per_band"].values()), err.mean(axis=(0, 1, 2)), rtol=1e-4)
  assert got["unexplained_fraction"] == pytest.approx(err.sum() / (x[rows].astype(np.float64) ** 2).sum(), rel=1e-4)


# --------------------------------------------------------------------------- masked stores

def in_memory_store(root, images):
  index = np.zeros(len(images), stores.INDEX_DTYPE)
  index["objID"] = np.arange(100, 100 + len(images))
  index["label"] = np.arange(len(images)) % 2
  return stores.Store(root=Path(root), images=images, index=index, files=("a.npy",),
                      summary={"n_objects": len(images)})


def test_masked_store_keeps_central_and_replaces_neighbours_with_matching_noise(tmp_path):
  images, masks = scenes(9, seed=2)
  source = in_memory_store(tmp_path / "src", images)
  masked = job.write_masked_store(source, masks, tmp_path / "masked", seed=3, dilate=2, chunk=4)
  again = job.write_masked_store(source, masks, tmp_path / "masked_one_chunk", seed=3, dilate=2, chunk=100)
  out = masked.read(np.arange(9))
  np.testing.assert_array_equal(out, again.read(np.arange(9)))  # chunking does not change the result
  np.testing.assert_array_equal(masked.index, source.index)
  region = seg.neighbour_region(masks, 2)
  for i in range(9):
    central = masks[i] == 1
    np.testing.assert_array_equal(out[i][:, central], images[i][:, central])
    np.testing.assert_array_equal(out[i][:, ~region[i]], images[i][:, ~region[i]])
    assert not np.any(out[i][:, region[i]] == images[i][:, region[i]])
  # The fill is noise like the background: level ~ 0, sigma ~ 0.05, no trace of the neighbour's 1.0 peak.
  fill = np.concatenate([out[i][:, region[i]].ravel() for i in range(9)])
  assert abs(fill.mean()) < 0.005 and fill.std() == pytest.approx(0.05, rel=0.1)
  assert fill.max() < 0.4


def test_subset_aucs_match_sklearn():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 400).astype(np.int8)  # QSOs (2) count with the stars
  score = rng.normal(size=400) + (labels == 1)
  sel = rng.random(400) < 0.4
  got = job.subset_aucs(labels, score, {"all": np.ones(400, bool), "some": sel})
  assert got["all"]["auc"] == pytest.approx(roc_auc_score(labels == 1, score))
  assert got["some"]["auc"] == pytest.approx(roc_auc_score(labels[sel] == 1, score[sel]))
  assert got["some"]["n"] == sel.sum()
  assert got["some"]["auc_best_sign"] == pytest.approx(max(got["some"]["auc"], 1 - got["some"]["auc"]))


def test_subset_aucs_per_seed_and_masking_gain():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 3, 300).astype(np.int8)
  scores = rng.normal(size=(3, 300)) + np.array([[0.5], [1.0], [2.0]]) * (labels == 1)
  near = rng.random(300) < 0.3
  subsets = {"with_neighbours": near, "without_neighbours": ~near}
  got = job.subset_aucs(labels, scores, subsets)
  per_seed = [roc_auc_score(labels[near] == 1, s[near]) for s in scores]
  np.testing.assert_allclose(got["with_neighbours"]["auc_per_seed"], per_seed)
  assert got["with_neighbours"]["auc"] == pytest.approx(np.mean(per_seed))
  assert got["with_neighbours"]["auc_std"] == pytest.approx(np.std(per_seed, ddof=1))
  # Masking that helps only the objects with neighbours: seed s's masked score is its unmasked score with
  # the neighbour objects' galaxy signal doubled.
  masked = scores + np.array([[0.5], [1.0], [2.0]]) * ((labels == 1) & near)
  aucs = {"masked": job.subset_aucs(labels, masked, subsets), "unmasked": got}
  gain = job.masking_gain(aucs)
  expected = np.array(aucs["masked"]["with_neighbours"]["auc_per_seed"]) - np.array(per_seed)
  np.testing.assert_allclose(gain["with_neighbours"]["per_seed"], expected)
  np.testing.assert_allclose(gain["without_neighbours"]["per_seed"], 0.0, atol=1e-12)
  assert gain["with_minus_without"]["mean"] == pytest.approx(expected.mean()) and gain["with_minus_without"]["mean"] > 0
  assert gain["with_minus_without"]["seeds_positive"] == 3


# --------------------------------------------------------------------------- real data

def test_hsc_scene_noise_matched_to_training_sigma():
  path = paths.shared_data_dir() / "hsc_scarlet" / "hsc_cosmos_35.npz"
  if not path.is_file():
    pytest.skip(f"HSC scenes not found at {path}")
  sigma = np.array([0.06, 0.02, 0.03, 0.05, 0.2])
  cutout = job.hsc_scene_cutout(path, sigma)
  assert cutout.shape == (5, 64, 64) and np.isfinite(cutout).all()
  _, measured = seg.robust_background(cutout[None].astype(np.float64))
  np.testing.assert_allclose(measured[0], sigma, rtol=0.15)
  # u is the g band at u's noise level: the same picture, scaled by the ratio of the sigmas.
  with np.load(path, allow_pickle=False) as f:
    h, w = f["images"].shape[1:]
  inside = np.s_[(64 - h) // 2:(64 - h) // 2 + h, (64 - w) // 2:(64 - w) // 2 + w]
  np.testing.assert_allclose(cutout[0][inside] * sigma[1] / sigma[0], cutout[1][inside], rtol=1e-4, atol=1e-6)
