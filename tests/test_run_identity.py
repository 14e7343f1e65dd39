"""run_identity: the fingerprint of what determines a trained state (checked against hashlib by hand), the
comparison of a rerun with the workdir's record, the workdir lock."""

import hashlib
import json
import os
import socket

import pytest

import stargal_jax
from stargal_jax import run_identity as ri

SCORING = ("score.*", "data.star_fraction", "eval.*")
SETTINGS = {"seed": 0, "num_seeds": 1, "seed_scope": "all", "vae.model_kwargs.latent_dim": 2,
            "vae.model_kwargs.channels": [32, 64], "vae.train.steps": 6, "vae.train.log_every": 2,
            "score.method": "isomap", "data.star_fraction": 0.3, "data.cache_dir": "/tmp/c", "eval.plots": True}
DATA = {"unlabelled": {"store": "abc", "files": 1, "objects": 48}}


def _hash(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_the_fingerprint_covers_training_settings_data_and_version_only():
  record = ri.identity(SETTINGS, SCORING, "each seed on its own", DATA)
  training = {"seed": 0, "vae.model_kwargs.latent_dim": 2, "vae.model_kwargs.channels": [32, 64],
              "vae.train.steps": 6, "(seed layout)": "each seed on its own"}
  assert record["training"] == training
  assert record["config_fingerprint"] == _hash(training) and record["data_fingerprint"] == _hash(DATA)
  assert record["fingerprint"] == _hash({"config": _hash(training), "data": _hash(DATA),
                                         "package_version": stargal_jax.__version__})
  assert record["scoring"] == {"score.method": "isomap", "data.star_fraction": 0.3}
  assert record["seeds"] == {"num_seeds": 1, "seed_scope": "all"}
  rescored = dict(SETTINGS, **{"score.method": "pca", "data.star_fraction": 0.2, "vae.train.log_every": 9,
                               "data.cache_dir": "/elsewhere", "num_seeds": 5})
  assert ri.identity(rescored, SCORING, "each seed on its own", DATA)["fingerprint"] == record["fingerprint"]
  for key, value in (("seed", 1), ("vae.model_kwargs.channels", [32, 32]), ("vae.train.steps", 7)):
    assert ri.identity(dict(SETTINGS, **{key: value}), SCORING, "each seed on its own",
                       DATA)["fingerprint"] != record["fingerprint"], key
  assert ri.identity(SETTINGS, SCORING, "each seed on its own", {"x": 1})["fingerprint"] != record["fingerprint"]
  assert "num_seeds" not in ri.identity(SETTINGS, SCORING, None, DATA)["seeds"]  # a run that reads no seeds


def test_differences_name_each_changed_added_and_removed_key():
  assert ri.differences({"a": 1, "b": "x", "c": [1, 2]}, {"a": 2, "b": "x", "c": (1, 2), "d": "new"}) == [
      "a 1 -> 2", "d (absent) -> 'new'"]
  assert ri.differences({"a": 1}, {}) == ["a 1 -> (absent)"]


def _trained(workdir):
  (workdir / "checkpoints" / "vae" / "6").mkdir(parents=True)


def test_a_workdir_without_checkpoints_takes_the_new_config(tmp_path):
  ri.record(tmp_path, SETTINGS, SCORING, None, DATA, "vae_manifold")
  notes = []
  assert ri.check_config_part(tmp_path, dict(SETTINGS, seed=3), SCORING, None, say=notes.append) is None
  assert "no checkpoints yet" in notes[0] and "seed 0 -> 3" in notes[0]


def test_a_workdir_from_before_run_identities_is_judged_by_its_config_json(tmp_path):
  _trained(tmp_path)
  with pytest.raises(ri.RunIdentityError, match="recorded no run_identity.json or config.json"):
    ri.check_config_part(tmp_path, SETTINGS, SCORING, None)
  nested = {"seed": 0, "num_seeds": 1, "seed_scope": "all", "vae": {"model_kwargs": {"latent_dim": 2,
            "channels": [32, 64]}, "train": {"steps": 6, "log_every": 50}}, "score": {"method": "gmm"}}
  (tmp_path / "config.json").write_text(json.dumps(nested))
  notes = []
  assert ri.check_config_part(tmp_path, ri.flatten(nested), SCORING, None, say=notes.append) is None
  assert "made before run identities" in notes[0]
  with pytest.raises(ri.RunIdentityError, match=r"vae.model_kwargs.latent_dim 2 -> 3"):
    ri.check_config_part(tmp_path, dict(ri.flatten(nested), **{"vae.model_kwargs.latent_dim": 3}), SCORING, None)


def test_the_data_must_be_those_the_checkpoints_were_trained_on(tmp_path):
  _trained(tmp_path)
  ri.record(tmp_path, SETTINGS, SCORING, None, DATA, "vae_manifold")
  recorded = ri.check_config_part(tmp_path, SETTINGS, SCORING, None)
  ri.check_data_part(tmp_path, recorded, DATA, SCORING)
  with pytest.raises(ri.RunIdentityError, match=r"other data \(data.unlabelled.objects 48 -> 47, "
                                                r"data.unlabelled.store 'abc' -> 'abd'\)"):
    ri.check_data_part(tmp_path, recorded, {"unlabelled": {"store": "abd", "files": 1, "objects": 47}}, SCORING)


def test_a_held_workdir_names_its_holder_and_a_released_lock_leaves_nothing(tmp_path):
  with ri.workdir_lock(tmp_path, "a first run"):
    with pytest.raises(ri.WorkdirBusy) as error:
      with ri.workdir_lock(tmp_path, "a second run"):
        pass
    text = str(error.value)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in text and "a first run" in text
    assert str(tmp_path) in text and "--workdir" in text
  assert not (tmp_path / ri.LOCK_FILE).exists()


def test_the_lock_file_of_a_run_that_is_gone_is_taken_over(tmp_path):
  (tmp_path / ri.LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "gone", "since": "2026-01-01T00:00:00",
                                                   "purpose": "a killed run"}))
  notes = []
  with ri.workdir_lock(tmp_path, "a new run", say=notes.append):
    held = json.loads((tmp_path / ri.LOCK_FILE).read_text())
  assert held["pid"] == os.getpid() and "pid 999999 on host gone, started 2026-01-01T00:00:00" in notes[0]
