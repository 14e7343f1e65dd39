"""predict: a finished run restored from its checkpoints scores its own labelled set exactly as the run did."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from stargal_jax import experiment
from stargal_jax.classify import predict
from stargal_jax import inputs as inputs_lib

REPO = Path(__file__).resolve().parents[1]


def smoke_config(name, cache):
  spec = importlib.util.spec_from_file_location(f"configs.{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(REPO))  # the config imports configs.common
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(str(REPO))
  config = module.get_config("smoke")
  config.data.cache_dir = cache
  config.eval.plots = False
  return config


def _labelled_store(config):
  return inputs_lib.load_inputs(config.data, seed=config.seed).labelled


@pytest.mark.slow  # trains a run end to end
def test_restored_run_reproduces_the_runs_latents_scores_and_predictions(smoke_cache, tmp_path):
  config = smoke_config("cvae", smoke_cache)
  experiment.run(config, tmp_path)
  store = _labelled_store(config)
  # The run's own outputs were computed in-process from the trained parameters, before anything was restored.
  saved_latents = np.load(tmp_path / "latents.npz", allow_pickle=False)
  saved = np.load(tmp_path / "predictions.npz", allow_pickle=False)
  metrics_json = json.loads((tmp_path / "metrics.json").read_text())

  out = predict.score_cutouts(tmp_path, store)
  assert out["latents"].shape == saved_latents["latents"].shape == (len(store), 2)
  np.testing.assert_allclose(out["latents"], saved_latents["latents"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(out["score"], saved["score"], rtol=0, atol=1e-6)
  np.testing.assert_array_equal(out["pred"], saved["pred"])
  assert out["orientation_sign"] == metrics_json["orientation_sign"]
  np.testing.assert_allclose(out["r_mag"], saved_latents["r_mag"])
  assert abs((out["pred"] == 0).mean() - config.data.star_fraction) < 0.01  # the prior threshold

  # Raw image arrays give the same answer as the store they came from.
  from_array = predict.score_cutouts(predict.load_run(tmp_path), store.read(np.arange(len(store))), batch_size=64)
  np.testing.assert_allclose(from_array["latents"], out["latents"], rtol=0, atol=1e-6)
  np.testing.assert_array_equal(from_array["pred"], out["pred"])

  # A stage that did not reach its configured steps is refused, naming the directory.
  vae_dir = tmp_path / "checkpoints" / "vae"
  shutil.rmtree(vae_dir / str(config.vae.train.steps))
  with pytest.raises(FileNotFoundError, match="no finished stage"):
    predict.load_run(tmp_path)


@pytest.mark.slow  # trains a run end to end
def test_stage2_seed_study_scores_every_seed(smoke_cache, tmp_path):
  config = smoke_config("cvae", smoke_cache)
  config.num_seeds, config.seed_scope = 2, "stage2"
  experiment.run(config, tmp_path)
  saved = np.load(tmp_path / "predictions.npz", allow_pickle=False)
  saved_latents = np.load(tmp_path / "latents.npz", allow_pickle=False)  # seed 0's

  out = predict.score_cutouts(tmp_path, _labelled_store(config))
  assert out["latents"].shape[:2] == (2, saved["score"].shape[1])
  np.testing.assert_allclose(out["latents"][0], saved_latents["latents"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(out["score"], saved["score"], rtol=0, atol=1e-6)
  np.testing.assert_array_equal(out["pred"], saved["pred"])
  assert not np.allclose(out["latents"][0], out["latents"][1])  # independently seeded stage-2 models


def test_image_array_zeroes_and_counts_non_finite_pixels():
  images = np.ones((3, 5, 64, 64), np.float32)
  images[1, 2, 0, :4] = np.nan
  images[2, 0, 5, 5] = np.inf
  source = predict.ImageArray(images)
  assert len(source) == 3 and source.n_nonfinite_images == 2
  read = source.read(np.array([1, 2]))
  assert np.all(np.isfinite(read)) and read[0, 2, 0, :4].sum() == 0 and read[1, 0, 5, 5] == 0
  assert read[0].sum() == 5 * 64 * 64 - 4
  with pytest.raises(ValueError, match="images must be"):
    predict.ImageArray(np.ones((2, 3, 64, 64)))


def test_a_run_of_another_kind_is_refused(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"pipeline": "segmentation", "num_seeds": 1}))
  with pytest.raises(ValueError, match=r"unknown classification pipeline .*'segmentation'.*valid: \['ae_vae'"):
    predict.load_run(tmp_path)
