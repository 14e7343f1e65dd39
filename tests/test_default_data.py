"""Tests for stargal_jax.default_data: generated once into the cache, then reused."""

import json

import numpy as np
import pytest

from stargal_jax import default_data
from stargal_jax.simulate import SIM_VERSION


def test_generates_once_then_reuses(tmp_path, monkeypatch, capsys):
  first = default_data.ensure_default_data(tmp_path, n_labelled=9, n_unlabelled=4, seed=5, workers=1)
  assert first.root == tmp_path / "sim" / f"sim-v{SIM_VERSION}-L9-U4-seed5"
  assert len(capsys.readouterr().err.strip().splitlines()) == 1  # one progress line
  assert len(list(first.unlabelled_dir.glob("*.npy"))) == 4
  labelled = [np.load(p, allow_pickle=False) for p in sorted(first.labelled_dir.glob("*.npy"))]
  assert sum(len(r) for r in labelled) == 9
  with np.load(first.truth_path, allow_pickle=False) as truth:
    assert np.array_equal(truth["objID"], np.concatenate([r["objID"] for r in labelled]))
  stamp = (first.root / "manifest.json").stat().st_mtime_ns

  def must_not_run(*args, **kwargs):
    raise AssertionError("regenerated a cached data set")

  monkeypatch.setattr(default_data, "simulate_dataset", must_not_run)
  second = default_data.ensure_default_data(tmp_path, n_labelled=9, n_unlabelled=4, seed=5, workers=1)
  assert second == first
  assert (first.root / "manifest.json").stat().st_mtime_ns == stamp
  assert "reusing" in capsys.readouterr().err
  with pytest.raises(AssertionError, match="regenerated"):  # other sizes or seeds are other sets
    default_data.ensure_default_data(tmp_path, n_labelled=9, n_unlabelled=4, seed=6, workers=1)


def test_incomplete_folder_is_not_taken_for_data(tmp_path):
  root = tmp_path / "sim" / default_data.dataset_name(3, 2, 1)
  (root / "labelled").mkdir(parents=True)
  with pytest.raises(RuntimeError, match="no complete data set"):
    default_data.ensure_default_data(tmp_path, n_labelled=3, n_unlabelled=2, seed=1, workers=1)
  (root / "labelled").rmdir()  # an empty folder (e.g. made by hand) is simply filled
  data = default_data.ensure_default_data(tmp_path, n_labelled=3, n_unlabelled=2, seed=1, workers=1)
  manifest = json.loads((data.root / "manifest.json").read_text())
  assert manifest["n_labelled"] == 3 and manifest["n_unlabelled"] == 2 and manifest["seed"] == 1
