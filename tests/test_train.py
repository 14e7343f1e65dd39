"""The trainer: resume equals an uninterrupted run, NaN stops with the last good checkpoint, one trace per run,
stateful loss terms carried without the trainer knowing them, restore of a finished run."""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from stargal_jax import checkpoint_checksums, losses, models, train


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


def test_training_traces_its_step_once_including_after_a_resume(tmp_path, monkeypatch):
  """train.train's own jitted step (the production path) is traced once per run, also when resuming."""
  traces = []
  make_loss_fn = losses.make_loss_fn

  def counting_make_loss_fn(*args, **kwargs):
    loss_fn = make_loss_fn(*args, **kwargs)

    def traced(*loss_args):
      traces.append(1)  # the Python body runs once per trace, never per compiled call
      return loss_fn(*loss_args)
    return traced

  monkeypatch.setattr(losses, "make_loss_fn", counting_make_loss_fn)
  codes = _codes()
  train.train(_model(), _train_config(4), LOSS, OPTIONS, _batch_for_step(codes), jax.random.key(1), tmp_path, "t")
  assert len(traces) == 1
  train.train(_model(), _train_config(8), LOSS, OPTIONS, _batch_for_step(codes), jax.random.key(1), tmp_path, "t")
  assert len(traces) == 2  # the resumed run: one trace for its 4 steps


def test_stateful_term_state_is_carried_and_checkpointed_by_the_trainer(tmp_path, monkeypatch):
  """A loss term with state the trainer has never heard of: its state lives in the train state, is updated after
  every step from the model outputs it names, reaches the loss context, and is checkpointed."""

  def z_mean_penalty(outputs, batch, context):
    return jnp.sum((jnp.mean(outputs["z"], axis=0) - context["z_running_sum"] / 100.0) ** 2)

  def build(options, latent_dim, learning_rate):
    def update(state, outputs, key):
      return ({"z_running_sum": state["z_running_sum"] + jnp.mean(outputs["z"], axis=0),
               "steps_seen": state["steps_seen"] + 1}, {"steps_seen": state["steps_seen"] + 1})
    return losses.StatefulTerm(init=lambda key: {"z_running_sum": jnp.zeros(latent_dim), "steps_seen": jnp.zeros(())},
                               context=lambda state: {"z_running_sum": state["z_running_sum"]}, update=update,
                               outputs=("z",))

  monkeypatch.setitem(losses.LOSS_TERMS, "z_mean_penalty", z_mean_penalty)
  monkeypatch.setitem(losses.STATEFUL_TERMS, "z_mean_penalty", build)
  codes = _codes()
  weights = dict(LOSS, z_mean_penalty=1.0)
  result = train.train(_model(), _train_config(6, checkpoint_every=6), weights, OPTIONS, _batch_for_step(codes),
                       jax.random.key(3), tmp_path / "s", "s")
  assert [h["steps_seen"] for h in result.history] == [2.0, 4.0, 6.0]
  manager = ocp.CheckpointManager((tmp_path / "s").absolute())
  saved = manager.restore(6)
  manager.close()
  assert float(saved["steps_seen"]) == 6.0
  # The state is the sum of the batch means of z along the trajectory: replayed here step by step from the same
  # initial state, with z recomputed by the model itself under each step's key.
  graphdef, state, step_fn = train.initial_state(_model(), _train_config(6), weights, OPTIONS, jax.random.key(3))
  step_fn = jax.jit(step_fn)
  z_of = jax.jit(lambda state, x, key: models.apply_model(graphdef, state["params"], state["model_state"], x,
                                                          key=jax.random.split(key)[0], train=True)[0]["z"])
  expected = np.zeros(2)
  for step in range(6):
    key = jax.random.fold_in(jax.random.key(3), step)
    expected += np.asarray(jnp.mean(z_of(state, _batch_for_step(codes)(step)["x"], key), axis=0))
    state, _ = step_fn(state, _batch_for_step(codes)(step), key)
  np.testing.assert_allclose(saved["z_running_sum"], expected, rtol=1e-5, atol=1e-6)


def test_restore_reads_the_final_checkpoint_and_refuses_an_unfinished_run(tmp_path):
  codes = _codes()
  result = train.train(_model(), _train_config(4), LOSS, OPTIONS, _batch_for_step(codes), jax.random.key(1),
                       tmp_path / "r", "r")
  restored = train.restore(_model(), _train_config(4), LOSS, OPTIONS, tmp_path / "r")
  np.testing.assert_array_equal(_flat(restored.params), _flat(result.params))
  with pytest.raises(FileNotFoundError, match="no finished stage of 8 steps"):
    train.restore(_model(), _train_config(8), LOSS, OPTIONS, tmp_path / "r")


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
  study = train.train_seeds(build, keys, _train_config(4), LOSS, OPTIONS,
                            lambda step: {"x": np.stack([per_seed(s)(step)["x"] for s in range(3)])},
                            tmp_path / "study", "study")
  for s, k in enumerate(keys):
    init_key, step_key = jax.random.split(k)
    alone = train.train(build(init_key), _train_config(4), LOSS, OPTIONS, per_seed(s), step_key,
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


# ---------------------------------------------------------------------------------------------
# issue 14 (Why 5): checkpoints carry checksums; a corrupt latest step falls back to the newest intact one.

import hashlib  # noqa: E402
import json  # noqa: E402


def _step_files(step_dir):
  """The data files of an orbax step (largest first): where corruption does harm."""
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != checkpoint_checksums.CHECKSUM_FILE]
  return sorted(files, key=lambda p: -p.stat().st_size)


def test_every_saved_step_records_the_sha256_of_each_of_its_files(tmp_path):
  train.train(_model(), _train_config(8), LOSS, OPTIONS, _batch_for_step(_codes()), jax.random.key(1),
              tmp_path / "k", "k")
  steps = sorted(p for p in (tmp_path / "k").iterdir() if p.name.isdigit())
  assert [p.name for p in steps] == ["4", "8"]
  for step_dir in steps:
    recorded = json.loads((step_dir / checkpoint_checksums.CHECKSUM_FILE).read_text())["files"]
    by_hand = {p.relative_to(step_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in _step_files(step_dir)}
    assert recorded == by_hand and len(by_hand) >= 2


def _truncate(path):
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _zero(path):
  path.write_bytes(bytes(path.stat().st_size))


def _flip_one_bit(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x10
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _zero, _flip_one_bit], ids=["truncated", "zeroed", "one_bit"])
def test_a_corrupt_latest_step_falls_back_to_the_newest_intact_one(tmp_path, capsys, damage):
  """Training continues from the intact step and ends exactly where an uninterrupted run does."""
  codes, key = _codes(), jax.random.key(1)
  full = train.train(_model(), _train_config(12), LOSS, OPTIONS, _batch_for_step(codes), key, tmp_path / "a", "a")
  train.train(_model(), _train_config(8), LOSS, OPTIONS, _batch_for_step(codes), key, tmp_path / "b", "b")
  damage(_step_files(tmp_path / "b" / "8")[0])
  capsys.readouterr()
  resumed = train.train(_model(), _train_config(12), LOSS, OPTIONS, _batch_for_step(codes), key, tmp_path / "b", "b")
  out = capsys.readouterr().out
  assert "step 8" in out and "corrupt" in out and "resuming from step 4" in out
  assert "resumed from checkpoint at step 4" in out
  np.testing.assert_array_equal(_flat(full.params), _flat(resumed.params))


def test_no_intact_checkpoint_is_a_clear_error_naming_the_directory(tmp_path):
  codes = _codes()
  train.train(_model(), _train_config(8), LOSS, OPTIONS, _batch_for_step(codes), jax.random.key(1), tmp_path / "n",
              "n")
  for step in ("4", "8"):
    _flip_one_bit(_step_files(tmp_path / "n" / step)[0])
  with pytest.raises(train.CheckpointError, match=rf"{tmp_path / 'n'}: no intact checkpoint \(step 8: .*step 4: "):
    train.train(_model(), _train_config(12), LOSS, OPTIONS, _batch_for_step(codes), jax.random.key(1),
                tmp_path / "n", "n")
  with pytest.raises(train.CheckpointError, match=r"final checkpoint \(step 8\) is corrupt"):
    train.restore(_model(), _train_config(8), LOSS, OPTIONS, tmp_path / "n")


def test_the_non_finite_stop_names_what_describes_the_failing_batch(tmp_path):
  """The trainer knows no data: the batch source's `describe(step)` names the inputs of the diverging batch."""
  batches = _batch_for_step(_codes(), poison_step=5)
  source = lambda step: batches(step)
  source.describe = lambda step: f"rows of step {step}"
  with pytest.raises(train.TrainingDiverged, match=r"step 5 .*rows of step 5") as error:
    train.train(_model(), _train_config(8), LOSS, OPTIONS, source, jax.random.key(1), tmp_path / "d", "d")
  assert error.value.step == 5


def test_cosine_schedule_decays_adam_steps_to_zero_at_the_last_step():
  steps, rate = 10, 0.1
  config = ml_collections.ConfigDict(dict(steps=steps, learning_rate=rate, grad_clip=1e9, lr_schedule="cosine"))
  optimizer = train.make_optimizer(config)
  params = jnp.zeros(3)
  state = optimizer.init(params)
  sizes = []
  for _ in range(steps):
    updates, state = optimizer.update(jnp.ones(3), state, params)  # a constant gradient: Adam moves by the rate
    sizes.append(float(-updates[0]))
  expected = rate * 0.5 * (1 + np.cos(np.pi * np.arange(steps) / steps))
  np.testing.assert_allclose(sizes, expected, rtol=1e-4)
  config.lr_schedule = "constant"
  optimizer = train.make_optimizer(config)
  updates, _ = optimizer.update(jnp.ones(3), optimizer.init(params), params)
  np.testing.assert_allclose(-np.asarray(updates), rate, rtol=1e-4)
  config.lr_schedule = "warm"
  with pytest.raises(KeyError, match="learning-rate schedule 'warm'"):
    train.make_optimizer(config)
