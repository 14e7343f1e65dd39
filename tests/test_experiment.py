"""experiment: the one run registry; unknown names and config mistakes fail at once; launch.py's flags."""

import subprocess
import sys
from pathlib import Path

import pytest

from stargal_jax import experiment, registry
from stargal_jax.classify import pipelines
from conftest import config_module, load_config

REPO = Path(__file__).resolve().parents[1]


def test_run_registry_holds_every_pipeline_and_the_segmentation_jobs():
  assert set(experiment.RUNS) == set(pipelines.PIPELINES) | {"segmentation", "seg_cvae"}
  for name in pipelines.PIPELINES:
    assert experiment.RUNS[name].multiprocess
  assert not experiment.RUNS["segmentation"].multiprocess and not experiment.RUNS["seg_cvae"].multiprocess
  # Every config names a registered run.
  for path in sorted((REPO / "configs").glob("*.py")):
    if path.stem not in ("__init__", "common"):
      assert load_config(path.stem).pipeline in experiment.RUNS, path.name


def test_unknown_pipeline_fails_at_once_with_valid_names(tmp_path):
  config = load_config("cvae")
  config.pipeline = "no_such_pipeline"
  with pytest.raises(registry.UnknownName, match="ae_vae.*seg_cvae"):
    experiment.run(config, tmp_path)
  assert not (tmp_path / "config.json").exists()  # nothing written before the check


@pytest.mark.parametrize("name", ["cvae", "vae_aw", "vae_wae", "segmentation", "seg_cvae"])
def test_config_arguments_are_checked(name):
  with pytest.raises(ValueError, match=r"unknown config argument\(s\) \['smok'\]; valid: \[.*'smoke'"):
    load_config(name, "smok")


@pytest.mark.slow
def test_launch_rejects_unknown_config_key_and_argument_on_one_line(tmp_path):
  for flag in ("--config.vae.no_such_key=1", "--config=configs/cvae.py:smok"):
    args = [sys.executable, str(REPO / "launch.py"), "--config=configs/cvae.py:smoke", f"--workdir={tmp_path}", flag]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert ("no_such_key" if "no_such_key" in flag else "'smok'") in proc.stderr.splitlines()[0]


# ---------------------------------------------------------------------------------------------
# issue 14: a run never reports results it did not compute (run identity, workdir lock, validation first).

import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from stargal_jax.data import formats  # noqa: E402
from run_helpers import RecordingJob, user_config, with_job, write_user_data  # noqa: E402


def _one_line(error) -> str:
  text = str(error.value)
  assert "\n" not in text, text
  return text


def _copy(config):
  return ml_collections.ConfigDict(config.to_dict())


def test_rerun_with_another_training_config_stops_before_any_work(tmp_path, monkeypatch):
  """Why 1: another seed or latent size in a workdir holding checkpoints was 'resumed' and credited to the new
  config. Now it stops before the job starts, naming the differing keys and how to start fresh or re-score."""
  job = RecordingJob()
  with_job(monkeypatch, "vae_manifold", job)
  config = user_config(tmp_path)
  experiment.run(config, tmp_path / "run")
  written = (tmp_path / "run" / "config.json").read_text()
  other = _copy(config)
  other.vae.model_kwargs.latent_dim = 10
  other.seed = 1
  with pytest.raises(ValueError) as error:
    experiment.run(other, tmp_path / "run")
  text = _one_line(error)
  assert "vae.model_kwargs.latent_dim 2 -> 10" in text and "seed 0 -> 1" in text
  assert "--workdir" in text and "score." in text  # how to start fresh, and what may change without retraining
  assert len(job.calls) == 1 and (tmp_path / "run" / "config.json").read_text() == written


def test_rerun_with_only_scoring_keys_changed_rescores_and_says_so(tmp_path, monkeypatch, capsys):
  job = RecordingJob()
  with_job(monkeypatch, "vae_manifold", job)
  config = user_config(tmp_path)
  experiment.run(_copy(config), tmp_path / "run")
  capsys.readouterr()
  config.score.method, config.data.star_fraction, config.eval.plots = "pca", 0.25, False
  config.vae.train.log_every, config.vae.train.checkpoint_every = 1, 2  # bookkeeping: no effect on the state
  experiment.run(config, tmp_path / "run")
  out = capsys.readouterr().out
  assert len(job.calls) == 2 and job.calls[1]["score"]["method"] == "pca"
  line = next(line for line in out.splitlines() if "re-scor" in line)
  assert "score.method" in line and "data.star_fraction" in line and "log_every" not in line


def test_rerun_on_changed_data_stops_before_the_job(tmp_path, monkeypatch):
  job = RecordingJob()
  with_job(monkeypatch, "vae_manifold", job)
  config = user_config(tmp_path)
  experiment.run(config, tmp_path / "run")
  unlabelled = Path(config.data.unlabelled) / "u.npy"
  formats.write_unlabelled(unlabelled, np.ones((48,) + formats.IMAGE_SHAPE, np.float32))
  os.utime(unlabelled, ns=(time.time_ns() + 10**9,) * 2)  # a new mtime even on a coarse clock
  with pytest.raises(ValueError) as error:
    experiment.run(config, tmp_path / "run")
  assert "data.unlabelled" in _one_line(error) and len(job.calls) == 1


def test_seed_study_may_grow_one_seed_at_a_time_but_not_a_vmapped_stage2(tmp_path, monkeypatch):
  """seed_scope='all': each seed trains in its own directory, so num_seeds may grow (or shrink); a stage-2 study
  (seed_scope='stage2') trains its seeds as one program whose checkpoints hold exactly num_seeds."""
  for name in ("vae_manifold", "ae_vae"):
    with_job(monkeypatch, name, RecordingJob())
  config = user_config(tmp_path)
  config.num_seeds = 2
  experiment.run(config, tmp_path / "all")
  config.num_seeds = 3
  experiment.run(config, tmp_path / "all")
  study = user_config(tmp_path, "cvae")
  study.num_seeds = 2
  experiment.run(study, tmp_path / "stage2")
  study.num_seeds = 3
  with pytest.raises(ValueError) as error:
    experiment.run(study, tmp_path / "stage2")
  assert "num_seeds" in _one_line(error)


def test_a_second_run_in_a_busy_workdir_stops_at_once_naming_the_holder(tmp_path, monkeypatch):
  """Why 2: two launches into one workdir at once corrupted each other's checkpoints."""
  second = []

  def job(config, workdir):
    with pytest.raises(RuntimeError) as error:
      experiment.run(config, workdir)
    second.append(str(error.value))
    return {}

  with_job(monkeypatch, "vae_manifold", job)
  experiment.run(user_config(tmp_path), tmp_path / "run")
  assert len(second) == 1 and f"pid {os.getpid()}" in second[0] and str(tmp_path / "run") in second[0]


@pytest.mark.slow
def test_the_workdir_lock_names_a_live_holder_process_and_is_taken_over_after_sigkill(tmp_path, monkeypatch):
  """A real second process holding the workdir's lock (`WORKDIR/run.lock`): a run stops at once naming it; once
  that process is killed with SIGKILL the lock it left is taken over."""
  job = RecordingJob()
  with_job(monkeypatch, "vae_manifold", job)
  config = user_config(tmp_path)
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from stargal_jax.data import store\n"
       "with store.exclusive_lock(sys.argv[1], 'a test run'):\n  print('held', flush=True); time.sleep(120)",
       str(workdir / "run.lock")], cwd=REPO, stdout=subprocess.PIPE, text=True,
      env=dict(os.environ, PYTHONPATH=str(REPO)))
  try:
    assert holder.stdout.readline().strip() == "held"
    started = time.perf_counter()
    with pytest.raises(RuntimeError) as error:
      experiment.run(config, workdir)
    assert f"pid {holder.pid}" in str(error.value) and time.perf_counter() - started < 10 and not job.calls
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (workdir / "run.lock").exists()  # left behind by the killed holder
    experiment.run(config, workdir)
    assert len(job.calls) == 1
  finally:
    holder.kill()
    holder.wait(timeout=30)


BAD_SETTINGS = [
    ("vae.train.steps", 0, "vae.train.steps"),
    ("vae.train.steps", -3, "vae.train.steps"),
    ("vae.train.batch_size", 0, "vae.train.batch_size"),
    ("vae.train.learning_rate", 0.0, "vae.train.learning_rate"),
    ("vae.train.learning_rate", math.nan, "vae.train.learning_rate"),
    ("vae.train.checkpoint_every", 0, "vae.train.checkpoint_every"),
    ("data.star_fraction", 1.5, "data.star_fraction"),
    ("data.star_fraction", 0.0, "data.star_fraction"),
    ("num_seeds", 0, "num_seeds"),
    ("vae.loss.kl", -1.0, "vae.loss.kl"),
    ("vae.loss.kl", math.inf, "vae.loss.kl"),
    ("eval.eval_batch_size", 0, "eval.eval_batch_size"),
    ("data.mag_bins", (21.0, 19.0), "data.mag_bins"),
    ("score.method", "bogus", "score method 'bogus'; valid: ["),
    ("data.normalization", "bogus", "'bogus'; valid: ['asinh', 'asinh_shape', 'zscore']"),
    ("data.nan_policy", "bogus", "'bogus'; valid: ['drop', 'raise', 'zero']"),
    ("seed_scope", "bogus", "seed_scope 'bogus'; valid: ['all', 'stage2']"),
    ("vae.model", "bogus", "model 'bogus'; valid: ["),
    ("vae.model_kwargs.activation", "bogus", "activation 'bogus'; valid: ["),
    ("vae.loss_options", {"kl": {"units": (5,)}}, "units=(5,) invalid for latent dimension 2"),
    ("vae.loss_options", {"kl": {"unit": (0,)}}, "option of loss term 'kl' 'unit'"),
]


@pytest.mark.parametrize("key, value, expected", BAD_SETTINGS, ids=[f"{k}={v}" for k, v, _ in BAD_SETTINGS])
def test_nonsense_settings_stop_before_any_work_on_one_line(tmp_path, monkeypatch, key, value, expected):
  """Why 4: steps=0 scored an untrained model, batch_size=0 divided by zero, star_fraction=1.5 failed after all the
  training; now every numeric setting is range-checked and every name looked up before anything is written."""
  job = RecordingJob()
  with_job(monkeypatch, "vae_manifold", job)
  config = load_config("vae_manifold")
  *parents, leaf = key.split(".")
  block = config
  for part in parents:
    block = block[part]
  block[leaf] = value
  with pytest.raises(ValueError) as error:
    experiment.run(config, tmp_path / "run")
  assert expected in _one_line(error) and not job.calls and not (tmp_path / "run").exists()


def test_a_one_class_labelled_set_is_refused_before_training(tmp_path, monkeypatch):
  job = RecordingJob()
  with_job(monkeypatch, "vae_manifold", job)
  config = user_config(tmp_path, classes=("GALAXY",))
  with pytest.raises(ValueError) as error:
    experiment.run(config, tmp_path / "run")
  assert "GALAXY" in _one_line(error) and config.data.labelled in str(error.value) and not job.calls


def test_a_batch_larger_than_the_training_set_is_refused_before_training(tmp_path, monkeypatch):
  job = RecordingJob()
  with_job(monkeypatch, "vae_manifold", job)
  config = user_config(tmp_path)
  config.vae.train.batch_size = 49
  with pytest.raises(ValueError) as error:
    experiment.run(config, tmp_path / "run")
  text = _one_line(error)
  assert "vae.train.batch_size" in text and "48" in text and not job.calls


def test_every_shipped_config_passes_the_checks(tmp_path, monkeypatch):
  """The checks refuse nonsense, not the designs: every config with each of its arguments is accepted."""
  for path in sorted((REPO / "configs").glob("*.py")):
    if path.stem in ("__init__", "common"):
      continue
    module = config_module(path.stem)
    for arg in (None, *getattr(module, "ARGUMENTS", ("smoke",))):
      config = load_config(path.stem, arg)
      experiment.check_config(config)


@pytest.mark.slow
def test_launch_prints_user_errors_on_one_line_naming_the_valid_keys(tmp_path):
  base = [sys.executable, str(REPO / "launch.py"), "--config=configs/cvae.py:smoke", f"--workdir={tmp_path / 'w'}"]
  cases = [("--config.train.steps=5", "the config has no setting 'train'; valid: ['ae', 'data', 'eval'", 1),
           ("--config.vae.train.steps=0", "error: config.vae.train.steps = 0: must be an integer >= 1", 2)]
  for flag, expected, status in cases:
    proc = subprocess.run(base + [flag], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == status and "Traceback" not in proc.stderr, proc.stderr
    assert expected in proc.stderr.splitlines()[0], proc.stderr
  assert not (tmp_path / "w").exists()
  shown = subprocess.run(base + ["--config.vae.train.steps=0"], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, STARGAL_TRACEBACK="1"))
  assert shown.returncode != 0 and "Traceback" in shown.stderr  # the traceback on demand


@pytest.mark.slow
def test_a_trained_run_is_refused_to_another_config_and_rescored_without_retraining(tmp_path, capsys):
  """Why 1 end to end (real training): a changed latent size is refused and leaves the run's outputs alone; a
  changed score method restores the trained state (bitwise the same latents) and scores it again."""
  config = user_config(tmp_path)
  config.eval.plots = False
  experiment.run(_copy(config), tmp_path / "run")
  latents = dict(np.load(tmp_path / "run" / "latents.npz"))
  metrics = (tmp_path / "run" / "metrics.json").read_text()
  other = _copy(config)
  other.vae.model_kwargs.latent_dim = 10
  with pytest.raises(ValueError, match="vae.model_kwargs.latent_dim 2 -> 10"):
    experiment.run(other, tmp_path / "run")
  assert (tmp_path / "run" / "metrics.json").read_text() == metrics
  capsys.readouterr()
  config.score.method = "pca"
  experiment.run(config, tmp_path / "run")
  out = capsys.readouterr().out
  assert "re-scoring the trained run" in out and "[vae] resumed from checkpoint at step 6" in out
  rescored = dict(np.load(tmp_path / "run" / "latents.npz"))
  for key in latents:
    np.testing.assert_array_equal(rescored[key], latents[key])
  identity = json.loads((tmp_path / "run" / "run_identity.json").read_text())
  assert identity["scoring"]["score.method"] == "pca" and len(identity["fingerprint"]) == 64
