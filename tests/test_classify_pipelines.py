"""classify.pipelines: the registry entries agree with the configs and with each other; seed scopes are checked
before any work; a one-seed `train_latents` is the pipeline's own latents."""

import jax
import numpy as np
import pytest

from stargal_jax import experiment, inputs as inputs_lib, registry, stages, train
from stargal_jax.classify import pipelines
from stargal_jax.data import store as stores
from conftest import load_config

# One config per pipeline (configs/*.py whose `pipeline` it is).
CONFIG_OF = {"vae_manifold": "vae_manifold", "ae_vae": "cvae", "vae_aeloss": "vae_aeloss", "bootstrap": "bootstrap"}
# The stage whose latents are scored: the VAE of the study's designs, the classifier of the bootstrapped one.
SCORED_STAGE = {"bootstrap": "classifier"}


def test_every_pipeline_entry_matches_its_config_and_the_run_registry():
  assert set(CONFIG_OF) == set(pipelines.PIPELINES)
  for name, pipeline in pipelines.PIPELINES.items():
    config = load_config(CONFIG_OF[name])
    assert config.pipeline == name and name in experiment.RUNS
    for stage in pipeline.stages:  # every stage is a trained config block
      assert {"model", "model_kwargs", "loss", "loss_options", "train"} <= set(config[stage])
    assert set(pipeline.encoder) <= set(pipeline.stages) and pipeline.encoder[-1] == SCORED_STAGE.get(name, "vae")
    if pipeline.stage2_vmaps_over_seeds:  # a shared stage 1 whose codes feed the vmapped stage 2
      assert pipeline.stages == pipeline.encoder == ("ae", "vae")


def test_seed_scope_is_checked_before_any_work():
  config = load_config("vae_manifold")
  config.num_seeds, config.seed_scope = 2, "stage2"
  with pytest.raises(ValueError, match=r"\['ae_vae'\].*'vae_manifold'"):
    pipelines.check_seed_scope(config)
  config.seed_scope = "some"
  with pytest.raises(registry.UnknownName, match=r"seed_scope 'some'; valid: \['all', 'stage2'\]"):
    pipelines.check_seed_scope(config)
  with pytest.raises(registry.UnknownName, match="vae_manifold"):
    pipelines.get_pipeline("vae_manfold")


def test_latents_of_prefers_the_posterior_mean():
  mu, z = np.zeros((2, 2)), np.ones((2, 2))
  assert pipelines.latents_of({"mu": mu, "z": z}) is mu and pipelines.latents_of({"z": z}) is z
  assert pipelines.seed_dir("w", 7).name == "seed_007"


def _tiny_inputs(tmp_path):
  """A 48-image set in memory (labelled = unlabelled), normalised by a fixed z-score."""
  rng = np.random.default_rng(0)
  images = rng.normal(0.0, 1.0, (48, 5, 64, 64)).astype(np.float32)
  index = np.zeros(48, stores.INDEX_DTYPE)
  index["objID"] = np.arange(48)
  store = stores.Store(root=tmp_path, images=images, index=index, files=("a.npy",), summary={"n_objects": 48})
  normalizer = {"method": "zscore", "center": [0.0] * 5, "scale": [1.0] * 5, "version": 1, "bands": list("ugriz")}
  return inputs_lib.Inputs(labelled=store, unlabelled=store, normalizer=normalizer, source="test", truth=None)


@pytest.mark.slow  # trains and restores a pipeline end to end
def test_one_seed_train_latents_are_the_pipelines_own(tmp_path):
  config = load_config("vae_manifold")
  config.vae.train.steps, config.vae.train.batch_size = 2, 8
  config.vae.model_kwargs.channels = (4, 4, 4, 4)  # small and quick; the shapes are what matter here
  config.eval.eval_batch_size = 16
  inputs = _tiny_inputs(tmp_path)
  key = jax.random.key(3)
  latents = pipelines.train_latents(config, inputs, tmp_path, key)
  assert latents.shape == (1, 48, 2)
  # The labelled set's latents are the trained model's mu on the normalised images, the model restored from
  # the checkpoint the pipeline wrote (one stage, `checkpoints/vae`, trained under the pipeline's own key).
  restored = stages.restore_stage(config.vae, tmp_path / "checkpoints" / "vae")
  x = np.transpose(inputs.labelled.images, (0, 2, 3, 1))
  direct = train.predict_in_batches(restored, lambda idx: x[idx], 48, 48)["mu"]
  np.testing.assert_allclose(latents[0], direct, rtol=1e-5, atol=1e-6)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "tensorboard"]  # the stage's curves
