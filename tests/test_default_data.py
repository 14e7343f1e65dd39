"""Tests for stargal_jax.default_data: generated once into the cache, then reused."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from stargal_jax import default_data
from stargal_jax.data import store
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


def _hidden(sim):
  return sorted(p.name for p in sim.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("damage", ["no manifest", "corrupt manifest", "missing file", "empty folder"])
def test_a_partial_set_is_regenerated_with_a_message(tmp_path, capsys, damage):
  root = tmp_path / "sim" / default_data.dataset_name(3, 2, 1)
  if damage == "empty folder":
    root.mkdir(parents=True)
  else:
    first = default_data.ensure_default_data(tmp_path, n_labelled=3, n_unlabelled=2, seed=1, workers=1)
    expected = {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    {"no manifest": lambda: (root / "manifest.json").unlink(),
     "corrupt manifest": lambda: (root / "manifest.json").write_text('{"version": '),
     "missing file": lambda: next(first.unlabelled_dir.glob("*.npy")).unlink()}[damage]()
  capsys.readouterr()
  data = default_data.ensure_default_data(tmp_path, n_labelled=3, n_unlabelled=2, seed=1, workers=1)
  err = capsys.readouterr().err
  assert data.root == root and "simulating" in err
  if damage != "empty folder":
    assert "incomplete" in err and "regenerating" in err and str(root) in err
    assert {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} == expected
  manifest = json.loads((data.root / "manifest.json").read_text())
  assert manifest["n_labelled"] == 3 and manifest["n_unlabelled"] == 2 and manifest["seed"] == 1
  assert _hidden(tmp_path / "sim") == []  # nothing left beside the set


def test_temp_folders_of_a_killed_simulation_are_removed_on_the_next_start(tmp_path, capsys):
  sim = tmp_path / "sim"
  script = ("import sys; from stargal_jax import default_data; "
            "default_data.ensure_default_data(sys.argv[1], n_labelled=400, n_unlabelled=400, seed=3, workers=1)")
  writer = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 120
    while not (sim.is_dir() and any(sim.rglob("*.npy"))):  # a part of the set is on disk
      assert writer.poll() is None and time.monotonic() < deadline, "the writer ended before writing"
      time.sleep(0.05)
  finally:
    writer.send_signal(signal.SIGKILL)
    writer.wait()
  assert _hidden(sim) != [] and not (sim / default_data.dataset_name(400, 400, 3)).exists()
  capsys.readouterr()
  default_data.ensure_default_data(tmp_path, n_labelled=2, n_unlabelled=1, seed=1, workers=1)
  err = capsys.readouterr().err
  assert _hidden(sim) == [], _hidden(sim)
  assert "removed" in err and "killed" in err and default_data.dataset_name(400, 400, 3) in err


def test_a_live_writers_temp_folders_are_kept(tmp_path):
  sim = tmp_path / "sim"
  live, dead = default_data.dataset_name(5, 5, 8), default_data.dataset_name(5, 5, 9)
  folders = [sim / f".building-{live}@a1", sim / f".{live}.tmp-abc",  # a live writer's (its lock is held)
             sim / f".building-{dead}@b2", sim / f".{dead}.tmp-xyz"]  # a killed writer's
  for folder in folders:
    (folder / "labelled").mkdir(parents=True)
  with store.exclusive_lock(default_data.lock_path(tmp_path, live), "simulating") as locked:
    assert locked
    default_data.ensure_default_data(tmp_path, n_labelled=2, n_unlabelled=1, seed=1, workers=1)
    assert [f.exists() for f in folders] == [True, True, False, False]
  assert _hidden(sim) == sorted(f.name for f in folders[:2])  # lock files are removed on release


def test_shifted_simulator_parameters_are_their_own_cached_set(tmp_path):
  from stargal_jax.simulate import SimParams
  default = default_data.ensure_default_data(tmp_path, n_labelled=3, n_unlabelled=2, seed=5, workers=1)
  shifted_params = SimParams(seeing_r_median_arcsec=1.7)
  shifted = default_data.ensure_default_data(tmp_path, n_labelled=3, n_unlabelled=2, seed=5, workers=1,
                                             params=shifted_params)
  assert default.root.name == f"sim-v{SIM_VERSION}-L3-U2-seed5"
  assert shifted.root.name.startswith(default.root.name + "-p") and shifted.root != default.root
  manifest = json.loads((shifted.root / "manifest.json").read_text())
  assert manifest["params"]["seeing_r_median_arcsec"] == 1.7
  # The same parameters given again (equal values, a new object) find the same set.
  again = default_data.ensure_default_data(tmp_path, n_labelled=3, n_unlabelled=2, seed=5, workers=1,
                                           params=SimParams(seeing_r_median_arcsec=1.7))
  assert again == shifted
  with np.load(default.truth_path, allow_pickle=False) as a, np.load(shifted.truth_path, allow_pickle=False) as b:
    assert not np.array_equal(a["psf_fwhm_arcsec"], b["psf_fwhm_arcsec"])  # the seeing really changed


def test_config_star_fraction_is_the_default_labelled_sets_point_fraction(tmp_path):
  """configs/common.py's prior (the label-free threshold) against the default labelled set's truth.

  Every object's kind is the first draw of its own random stream (rendering only decides whether it is
  detected, never its kind), so the kinds of all default_n_labelled objects are read from those streams;
  that shortcut is checked against the truth file of a small set generated the ordinary way.
  """
  from configs import common
  from stargal_jax.data.formats import CLASS_CODES
  from stargal_jax.simulate import SimParams, dataset, populations
  data, params = common.data_config(), SimParams()

  def kind(i):
    return populations.sample_kind(dataset.object_rng(data.default_seed, dataset.LABELLED_STREAM, i), params)

  small = default_data.ensure_default_data(tmp_path, n_labelled=12, n_unlabelled=1, seed=data.default_seed, workers=1)
  with np.load(small.truth_path, allow_pickle=False) as truth:
    assert [CLASS_CODES[kind(i)] for i in range(12)] == truth["label"].tolist()
  point = np.mean([kind(i) != "GALAXY" for i in range(data.default_n_labelled)])
  assert abs(data.star_fraction - point) < 0.005, (data.star_fraction, point)
