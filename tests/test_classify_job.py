"""The classification job end to end (slow): every config runs in its smoke setting with its numbers recomputed
independently from the files it wrote; a killed run resumes to the same metrics; a seed study's summary."""

import itertools
import json

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import adjusted_rand_score, roc_auc_score

from stargal_jax import experiment, inputs as inputs_lib
from conftest import load_config

CONFIGS = ["cvae", "vae_manifold", "ae_manifold", "vae_sc", "vae_dkl", "vae_aw", "vae_pw", "vae_wae", "ae_vae",
           "vae_aeloss"]
pytestmark = pytest.mark.slow


def smoke_config(name, cache, arg="smoke"):
  config = load_config(name, arg)
  config.data.cache_dir = cache
  config.eval.plots = False
  return config


def check_against_written_files(out, workdir):
  """The headline numbers, recomputed with sklearn from predictions.npz and latents.npz (the prior from the run's
  config.json)."""
  star_fraction = json.loads((workdir / "config.json").read_text())["data"]["star_fraction"]
  pred = np.load(workdir / "predictions.npz", allow_pickle=False)
  saved = np.load(workdir / "latents.npz", allow_pickle=False)
  galaxy = saved["label"] == 1
  assert len(pred["score"]) == out["n_labelled"]
  assert out["auc"] == pytest.approx(roc_auc_score(galaxy, pred["score"]), abs=1e-6)
  assert out["auc_best_sign"] == pytest.approx(max(out["auc"], 1 - out["auc"]))
  assert out["accuracy"] == pytest.approx(np.mean(pred["pred"] == galaxy))
  # The prior threshold: the point-like share is the star fraction; tied scores stay together on the point-like
  # side (a collapsed latent, e.g. AW's saturated tanh after 6 steps, ties them all).
  threshold = np.quantile(pred["score"].astype(np.float64), star_fraction)
  np.testing.assert_array_equal(pred["pred"], pred["score"] > np.float32(threshold))
  assert json.loads((workdir / "metrics.json").read_text())["auc"] == out["auc"]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_runs_end_to_end(name, smoke_cache, tmp_path):
  check_against_written_files(experiment.run(smoke_config(name, smoke_cache), tmp_path), tmp_path)


@pytest.mark.parametrize("name,arg", [("vae_aw", "smoke,star"), ("vae_pw", "smoke,star"),
                                      ("vae_wae", "smoke,adversarial"), ("vae_dkl", "smoke,authors"),
                                      ("cvae", "smoke,unit0"), ("cvae", "smoke,gmm")])
def test_principled_and_authors_variants_run(name, arg, smoke_cache, tmp_path):
  check_against_written_files(experiment.run(smoke_config(name, smoke_cache, arg), tmp_path), tmp_path)


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


@pytest.mark.parametrize("seed_scope", ["stage2", "all"])
def test_seed_study_reports_every_seed_and_their_summary(seed_scope, smoke_cache, tmp_path):
  config = smoke_config("cvae", smoke_cache)
  config.num_seeds, config.seed_scope = 3 if seed_scope == "stage2" else 2, seed_scope
  out = experiment.run(config, tmp_path)
  num_seeds, n = config.num_seeds, out["n_labelled"]
  pred = np.load(tmp_path / "predictions.npz", allow_pickle=False)
  latents = np.load(tmp_path / "latents.npz", allow_pickle=False)
  galaxy = latents["label"] == 1
  assert pred["score"].shape == pred["pred"].shape == (num_seeds, n)
  assert latents["latents_per_seed"].shape == (num_seeds, n, 2)
  np.testing.assert_allclose(latents["latents_per_seed"][0], latents["latents"], rtol=1e-6)
  aucs = np.array([roc_auc_score(galaxy, s) for s in pred["score"]])
  np.testing.assert_allclose(out["auc_per_seed"], aucs, atol=1e-6)
  assert out["auc_mean"] == pytest.approx(aucs.mean(), abs=1e-6)
  assert out["auc_std"] == pytest.approx(aucs.std(ddof=1), abs=1e-6)
  pairs = [adjusted_rand_score(pred["pred"][a], pred["pred"][b])
           for a, b in itertools.combinations(range(num_seeds), 2)]
  assert out["seed_agreement_ari"] == pytest.approx(np.mean(pairs))
  ranks = np.mean([(stats.rankdata(s, method="ordinal") - 1) / (n - 1) for s in pred["score"]], axis=0)
  assert out["consensus"]["auc"] == pytest.approx(roc_auc_score(galaxy, ranks), abs=1e-3)
  if seed_scope == "all":
    assert all((tmp_path / f"seed_{s:03d}" / "checkpoints" / "vae").is_dir() for s in range(num_seeds))
  else:
    assert (tmp_path / "checkpoints" / "vae_seeds").is_dir()
