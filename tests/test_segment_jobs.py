"""segment.jobs: both jobs end to end (smoke, slow), masked stores, subset AUCs against sklearn, masking gain."""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from stargal_jax import experiment, inputs as inputs_lib
from stargal_jax.data import store as stores
from stargal_jax.segment import jobs, labelling
from conftest import load_config
from synthetic_scenes import two_blob_scenes


@pytest.fixture(scope="module")
def segmentation_run(smoke_cache, tmp_path_factory):
  config = load_config("segmentation")
  config.data.cache_dir = smoke_cache
  workdir = tmp_path_factory.mktemp("segmentation")
  return config, workdir, experiment.run(config, workdir)


@pytest.mark.slow  # both jobs end to end
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


@pytest.mark.slow  # both jobs end to end
def test_seg_cvae_smoke(segmentation_run, tmp_path):
  config = load_config("seg_cvae")
  config.data.cache_dir = segmentation_run[0].data.cache_dir
  config.eval.plots = False
  config.num_seeds = 2  # the seed-study path: per-seed subset AUCs and paired gains
  # Its own (smoke) segmentation AE: a workdir takes only checkpoints its own run identity recorded.
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


def in_memory_store(root, images):
  index = np.zeros(len(images), stores.INDEX_DTYPE)
  index["objID"] = np.arange(100, 100 + len(images))
  index["label"] = np.arange(len(images)) % 2
  return stores.Store(root=Path(root), images=images, index=index, files=("a.npy",),
                      summary={"n_objects": len(images)})


def test_masked_store_keeps_central_and_replaces_neighbours_with_matching_noise(tmp_path):
  images, masks = two_blob_scenes(9, seed=2)
  source = in_memory_store(tmp_path / "src", images)
  masked = jobs.write_masked_store(source, masks, tmp_path / "masked", seed=3, dilate=2, chunk=4)
  again = jobs.write_masked_store(source, masks, tmp_path / "masked_one_chunk", seed=3, dilate=2, chunk=100)
  out = masked.read(np.arange(9))
  np.testing.assert_array_equal(out, again.read(np.arange(9)))  # chunking does not change the result
  np.testing.assert_array_equal(masked.index, source.index)
  region = labelling.neighbour_region(masks, 2)
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
  got = jobs.subset_aucs(labels, score, {"all": np.ones(400, bool), "some": sel})
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
  got = jobs.subset_aucs(labels, scores, subsets)
  per_seed = [roc_auc_score(labels[near] == 1, s[near]) for s in scores]
  np.testing.assert_allclose(got["with_neighbours"]["auc_per_seed"], per_seed)
  assert got["with_neighbours"]["auc"] == pytest.approx(np.mean(per_seed))
  assert got["with_neighbours"]["auc_std"] == pytest.approx(np.std(per_seed, ddof=1))
  # Masking that helps only the objects with neighbours: seed s's masked score is its unmasked score with
  # the neighbour objects' galaxy signal doubled.
  masked = scores + np.array([[0.5], [1.0], [2.0]]) * ((labels == 1) & near)
  aucs = {"masked": jobs.subset_aucs(labels, masked, subsets), "unmasked": got}
  gain = jobs.masking_gain(aucs)
  expected = np.array(aucs["masked"]["with_neighbours"]["auc_per_seed"]) - np.array(per_seed)
  np.testing.assert_allclose(gain["with_neighbours"]["per_seed"], expected)
  np.testing.assert_allclose(gain["without_neighbours"]["per_seed"], 0.0, atol=1e-12)
  assert gain["with_minus_without"]["mean"] == pytest.approx(expected.mean()) and gain["with_minus_without"]["mean"] > 0
  assert gain["with_minus_without"]["seeds_positive"] == 3
