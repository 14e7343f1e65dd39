"""The trainer: resume equals an uninterrupted run, NaN stops with the last good checkpoint, one compilation."""

import time

import jax
import ml_collections
import numpy as np
import pytest

from stargal_jax import losses, models, train


def _train_config(steps, checkpoint_every=4):
  return ml_collections.ConfigDict(dict(steps=steps, batch_size=16, learning_rate=1e-2, grad_clip=10.0,
                                        checkpoint_every=checkpoint_every, log_every=2))


def _codes(n=64, seed=0):
  return np.tanh(np.random.default_rng(seed).normal(size=(n, 30))).astype(np.float32)


def _batch_for_step(codes, poison_step=None):
  def batch_for_step(step):
    x = codes[(step * 16) % len(codes):][:16]
    if step == poison_step:
      x = np.full_like(x, np.nan)
    return {"x": x}
  return batch_for_step


def _model():
  return models.build_model("dense_vae", dict(in_dim=30, hidden=30, latent_dim=2, eps_scale=0.1), jax.random.key(0))


LOSS = dict(recon_mse=1.0, kl=0.2)
OPTIONS = dict(kl=dict(units=(0,)))


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def test_resumed_run_equals_uninterrupted(tmp_path):
  codes = _codes()
  key = jax.random.key(1)
  full = train.train(_model(), _train_config(8), LOSS, OPTIONS, _batch_for_step(codes), key, tmp_path / "a", "a")
  train.train(_model(), _train_config(4), LOSS, OPTIONS, _batch_for_step(codes), key, tmp_path / "b", "b")
  resumed = train.train(_model(), _train_config(8), LOSS, OPTIONS, _batch_for_step(codes), key, tmp_path / "b", "b")
  np.testing.assert_array_equal(_flat(full.params), _flat(resumed.params))
  assert _flat(full.params).size > 0


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  codes = _codes()
  with pytest.raises(train.TrainingDiverged, match=r"step 5 .*recon_mse"):
    train.train(_model(), _train_config(8), LOSS, OPTIONS, _batch_for_step(codes, poison_step=5),
                jax.random.key(1), tmp_path / "c", "c")
  saved = sorted(int(p.name) for p in (tmp_path / "c").iterdir() if p.name.isdigit())
  assert saved == [4]
  # Restarting resumes from that checkpoint (step 4) and, with clean data, completes.
  result = train.train(_model(), _train_config(8), LOSS, OPTIONS, _batch_for_step(codes), jax.random.key(1),
                       tmp_path / "c", "c")
  assert result.history[-1]["step"] == 8


def test_train_step_compiles_once():
  model = _model()
  graphdef, params, state = models.split_model(model)
  optimizer = train.make_optimizer(_train_config(1))
  step = train.make_train_step(graphdef, losses.make_loss_fn(LOSS, OPTIONS), optimizer)
  train_state = {"params": params, "model_state": state, "opt_state": optimizer.init(params)}
  codes = _codes()
  for i in range(4):
    train_state, metrics = step(train_state, {"x": codes[:16]}, jax.random.key(i))
  assert bool(metrics["finite"])
  assert step._cache_size() == 1


def test_predict_in_batches_pads_and_matches_direct_call(tmp_path):
  codes = _codes(37)
  result = train.train(_model(), _train_config(2), LOSS, OPTIONS, _batch_for_step(codes), jax.random.key(0),
                       tmp_path / "d", "d")
  out = train.predict_in_batches(result, lambda idx: codes[idx], len(codes), batch_size=16)
  direct, _ = models.apply_model(result.graphdef, result.params, result.model_state, codes, key=None, train=False)
  np.testing.assert_allclose(out["mu"], np.asarray(direct["mu"]), rtol=1e-5, atol=1e-6)
  assert out["mu"].shape == (37, 2)


def test_data_mesh_uses_devices_that_divide_the_batch():
  mesh = train.data_mesh(batch_size=16)
  assert 16 % mesh.devices.size == 0


def test_seed_study_equals_separately_trained_seeds(tmp_path):
  """The vmapped, seed-sharded study trains each seed exactly as a lone run with the same keys and data."""
  codes = _codes()
  keys = jax.random.split(jax.random.key(7), 3)
  build = lambda k: models.build_model("dense_vae", dict(in_dim=30, hidden=30, latent_dim=2, eps_scale=0.1), k)
  shifts = [0, 5, 11]  # Each seed its own data order.
  per_seed = lambda s: (lambda step: {"x": np.roll(codes, shifts[s], axis=0)[(step * 16) % 64:][:16]})
  study = train.train_seeds(build, keys, _train_config(6), LOSS, OPTIONS,
                            lambda step: {"x": np.stack([per_seed(s)(step)["x"] for s in range(3)])},
                            tmp_path / "study", "study")
  for s, k in enumerate(keys):
    init_key, step_key = jax.random.split(k)
    alone = train.train(build(init_key), _train_config(6), LOSS, OPTIONS, per_seed(s), step_key,
                        tmp_path / f"alone{s}", "alone")
    np.testing.assert_allclose(_flat(jax.tree.map(lambda x: x[s], study.params)), _flat(alone.params),
                               rtol=2e-5, atol=2e-6)
  out = train.predict_seeds_in_batches(study, lambda idx: codes[idx], 40, batch_size=16)
  assert out["mu"].shape == (3, 40, 2)


def test_batches_ahead_yields_every_batch_in_order_and_prepares_the_next():
  calls = []

  def batch_for_step(step):
    calls.append(step)
    return {"x": np.full(3, step)}

  ahead = train.batches_ahead(batch_for_step, 5, 9)
  first = next(ahead)
  assert first["x"].tolist() == [5, 5, 5]
  for _ in range(200):  # the loader thread asks for step 6 while step 5 is being used
    if 6 in calls:
      break
    time.sleep(0.005)
  assert calls[:2] == [5, 6]
  rest = [int(b["x"][0]) for b in ahead]
  assert rest == [6, 7, 8] and calls == [5, 6, 7, 8]  # nothing past the end is prepared
  assert list(train.batches_ahead(batch_for_step, 3, 3)) == []


def test_batches_ahead_raises_the_loaders_error():
  def batch_for_step(step):
    if step == 2:
      raise OSError("disk gone")
    return {"x": np.zeros(1)}

  with pytest.raises(OSError, match="disk gone"):
    list(train.batches_ahead(batch_for_step, 0, 5))
