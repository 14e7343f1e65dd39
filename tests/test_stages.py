"""stages: a config stage block trained, resumed and restored; the seed-vmapped stage against lone runs."""

import jax
import ml_collections
import numpy as np
import pytest

from stargal_jax import inputs as inputs_lib
from stargal_jax import stages, train


def _stage(steps=4):
  stage = ml_collections.ConfigDict()
  stage.model = "dense_vae"
  stage.model_kwargs = ml_collections.ConfigDict(dict(in_dim=6, hidden=8, latent_dim=2, eps_scale=0.1))
  stage.loss = ml_collections.ConfigDict(dict(recon_mse=1.0, kl=0.5))
  stage.loss_options = ml_collections.ConfigDict()
  stage.train = ml_collections.ConfigDict(dict(steps=steps, batch_size=8, learning_rate=1e-2, grad_clip=10.0,
                                               checkpoint_every=4, log_every=2))
  return stage


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


CODES = np.tanh(np.random.default_rng(0).normal(size=(40, 6))).astype(np.float32)


def test_train_stage_then_restore_stage_gives_the_trained_parameters(tmp_path):
  result = stages.train_stage(_stage(), lambda idx: CODES[idx], len(CODES), jax.random.key(0), tmp_path, "vae")
  restored = stages.restore_stage(_stage(), tmp_path / "checkpoints" / "vae")
  np.testing.assert_array_equal(_flat(restored.params), _flat(result.params))
  # The key splits into (init, data order, steps): the model built from the init key, trained by hand, agrees.
  init_key, data_key, step_key = jax.random.split(jax.random.key(0), 3)
  data_seed = int(jax.random.randint(data_key, (), 0, 2**31 - 1))
  by_hand = train.train(stages.build_model(_stage(), init_key), _stage().train, {"recon_mse": 1.0, "kl": 0.5}, {},
                        inputs_lib.batch_schedule(len(CODES), 8, data_seed, lambda idx: CODES[idx]), step_key,
                        tmp_path / "by_hand", "by_hand")
  np.testing.assert_array_equal(_flat(by_hand.params), _flat(result.params))
  with pytest.raises(FileNotFoundError, match="no finished stage"):
    stages.restore_stage(_stage(steps=6), tmp_path / "checkpoints" / "vae")


def test_model_kwargs_are_plain_with_tuples():
  stage = _stage()
  stage.model_kwargs = ml_collections.ConfigDict(dict(latent_dim=2, channels=[4, 4]))
  assert stages.model_kwargs(stage) == {"latent_dim": 2, "channels": (4, 4)}


def test_an_ensemble_stage_restores_its_members_and_predicts_their_mean(tmp_path):
  stage = _stage()
  keys = jax.random.split(jax.random.key(3), 3)
  batches = [inputs_lib.batch_schedule(len(CODES), 8, s, lambda idx: CODES[idx]) for s in (1, 2, 3)]
  trained = train.train_seeds(lambda k: stages.build_model(stage, k), keys, stage.train, {"recon_mse": 1.0, "kl": 0.5},
                              {}, lambda step: {"x": np.stack([b(step)["x"] for b in batches])},
                              tmp_path / "ens", "ens")
  stage.ensemble = 3
  restored = stages.restore_stage(stage, tmp_path / "ens")  # the member axis comes from the stage's own setting
  np.testing.assert_array_equal(_flat(restored.params), _flat(trained.params))
  mean = stages.predict_stage(restored, stage, lambda idx: CODES[idx], len(CODES), 16, keys=("mu",))["mu"]
  # Independently: each member's parameters taken out of the stack and run as a lone model.
  members = []
  for m in range(3):
    lone = train.TrainResult(trained.graphdef, jax.tree.map(lambda x: x[m], trained.params),
                             jax.tree.map(lambda x: x[m], trained.model_state), [])
    members.append(train.predict_in_batches(lone, lambda idx: CODES[idx], len(CODES), 16, keys=("mu",))["mu"])
  assert mean.shape == (len(CODES), 2) and np.abs(members[0] - members[1]).max() > 1e-3
  np.testing.assert_allclose(mean, np.mean(members, axis=0), rtol=1e-5, atol=1e-6)
  assert stages.ensemble_size(_stage()) == 1
