"""End to end: every config runs in its smoke setting; a killed run resumes to the same metrics."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stargal_jax import experiment, inputs as inputs_lib
from conftest import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["cvae", "vae_manifold", "ae_manifold", "vae_sc", "vae_dkl", "vae_aw", "vae_pw", "vae_wae", "ae_vae",
           "vae_aeloss"]


def smoke_config(name, cache, arg="smoke"):
  config = load_config(name, arg)
  config.data.cache_dir = cache
  config.eval.plots = False
  return config


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_runs_end_to_end(name, smoke_cache, tmp_path):
  out = experiment.run(smoke_config(name, smoke_cache), tmp_path)
  assert 0.0 <= out["auc"] <= 1.0 and out["auc_best_sign"] >= 0.5
  assert out["auc_best_sign"] == pytest.approx(max(out["auc"], 1 - out["auc"]))
  pred = np.load(tmp_path / "predictions.npz", allow_pickle=False)
  assert set(pred.files) >= {"objID", "score", "pred"} and len(pred["score"]) == out["n_labelled"]
  # The prior threshold makes the point-like fraction equal to the configured star fraction; tied scores stay
  # together on the point-like side (a collapsed latent, e.g. AW's saturated tanh after 6 steps, ties them all).
  point_fraction = (pred["pred"] == 0).mean()
  if len(np.unique(pred["score"])) == len(pred["score"]):
    assert abs(point_fraction - 0.3) < 0.01
  else:
    assert point_fraction >= 0.3 - 0.01
  assert json.loads((tmp_path / "metrics.json").read_text())["auc"] == pytest.approx(out["auc"])


@pytest.mark.parametrize("name,arg", [("vae_aw", "smoke,star"), ("vae_pw", "smoke,star"), ("vae_wae", "smoke,adversarial"),
                                      ("vae_dkl", "smoke,authors")])
def test_principled_and_authors_variants_run(name, arg, smoke_cache, tmp_path):
  out = experiment.run(smoke_config(name, smoke_cache, arg), tmp_path)
  assert 0.5 <= out["auc_best_sign"] <= 1.0


def test_killed_run_resumes_to_identical_metrics(smoke_cache, tmp_path, monkeypatch):
  config = smoke_config("cvae", smoke_cache)
  reference = experiment.run(config, tmp_path / "reference")

  original = inputs_lib.batch_schedule
  calls = {"n": 0}

  def dying_schedule(*args, **kwargs):
    batch_for_step = original(*args, **kwargs)

    def wrapped(step):
      calls["n"] += 1
      if calls["n"] == 5:  # Killed part-way through stage 1, after its first checkpoint (step 3).
        raise KeyboardInterrupt
      return batch_for_step(step)
    return wrapped

  monkeypatch.setattr(inputs_lib, "batch_schedule", dying_schedule)
  with pytest.raises(KeyboardInterrupt):
    experiment.run(config, tmp_path / "killed")
  monkeypatch.setattr(inputs_lib, "batch_schedule", original)
  resumed = experiment.run(config, tmp_path / "killed")
  for key in ("auc", "auc_best_sign", "accuracy"):
    assert resumed[key] == reference[key]


def test_unknown_pipeline_fails_at_once_with_valid_names(smoke_cache, tmp_path):
  config = smoke_config("cvae", smoke_cache)
  config.pipeline = "no_such_pipeline"
  with pytest.raises(ValueError, match="ae_vae"):
    experiment.run(config, tmp_path)


def test_launch_rejects_unknown_config_key(tmp_path):
  proc = subprocess.run([sys.executable, str(REPO / "launch.py"), "--config=configs/cvae.py:smoke",
                         f"--workdir={tmp_path}", "--config.vae.no_such_key=1"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode != 0 and "no_such_key" in proc.stderr


def test_seed_study_reports_every_seed_and_their_summary(smoke_cache, tmp_path):
  config = smoke_config("cvae", smoke_cache)
  config.num_seeds = 3
  out = experiment.run(config, tmp_path)
  aucs = np.array(out["auc_per_seed"])
  assert aucs.shape == (3,) and out["auc_mean"] == pytest.approx(aucs.mean())
  assert out["auc_std"] == pytest.approx(aucs.std(ddof=1)) and out["auc_min"] == aucs.min()
  assert out["auc_ci95"][0] <= out["auc_mean"] <= out["auc_ci95"][1]
  assert -1.0 <= out["seed_agreement_ari"] <= 1.0 and 0.0 <= out["consensus"]["auc"] <= 1.0
  pred = np.load(tmp_path / "predictions.npz", allow_pickle=False)
  assert pred["score"].shape == (3, out["n_labelled"]) and pred["pred"].shape == (3, out["n_labelled"])
  latents = np.load(tmp_path / "latents.npz", allow_pickle=False)
  assert latents["latents_per_seed"].shape == (3, out["n_labelled"], 2)
  np.testing.assert_allclose(latents["latents_per_seed"][0], latents["latents"], rtol=1e-6)
