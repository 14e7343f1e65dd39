"""`python -m stargal_jax.data summarize`, run as a subprocess: JSON output and exit status 2."""

import json
import subprocess
import sys

import numpy as np
import pytest

from stargal_jax.data import formats



pytestmark = pytest.mark.slow  # subprocesses: the full run only


def _run(*args):
  return subprocess.run([sys.executable, "-m", "stargal_jax.data", "summarize", *map(str, args)],
                        capture_output=True, text=True, timeout=60)


def _images(n, seed):
  return np.random.default_rng(seed).standard_normal((n,) + formats.IMAGE_SHAPE).astype(np.float32)


def _write_sets(tmp_path):
  labelled, unlabelled = tmp_path / "labelled", tmp_path / "unlabelled"
  labelled.mkdir(), unlabelled.mkdir()
  images = _images(3, 0)
  images[2, 1, 0, :5] = np.nan
  formats.write_labelled(labelled / "a.npy", [1, 2, 3], images, ["STAR", "GALAXY", "GALAXY"], [0, 0.1, 0.2])
  formats.write_labelled(labelled / "b.npy", [4], _images(1, 1), ["QSO"], [1.2])
  for i in range(4):
    formats.write_unlabelled(unlabelled / f"u{i}.npy", _images(1, 10 + i))
  return labelled, unlabelled, images


def test_summary_json_counts(tmp_path):
  labelled, unlabelled, images = _write_sets(tmp_path)
  result = _run("--labelled", labelled, "--unlabelled", str(unlabelled / "u*.npy"), "--nan-policy", "drop")
  assert result.returncode == 0, result.stderr
  summary = json.loads(result.stdout)
  lab, unl = summary["labelled"], summary["unlabelled"]
  assert (lab["n_files"], lab["n_records"], lab["n_objects"]) == (2, 4, 3)
  assert lab["classes"] == {"STAR": 1, "GALAXY": 1, "QSO": 1}
  assert lab["nonfinite"] == {"policy": "drop", "objects": 1, "pixels": int((~np.isfinite(images)).sum()),
                              "action": "objects dropped"}
  assert (unl["n_files"], unl["n_objects"], unl["nonfinite"]["objects"]) == (4, 4, 0)
  only = json.loads(_run("--unlabelled", unlabelled).stdout)
  assert list(only) == ["unlabelled"] and only["unlabelled"]["n_objects"] == 4


def test_bad_input_exits_2_naming_file_and_record(tmp_path):
  labelled, _, _ = _write_sets(tmp_path)
  bad = labelled / "c.npy"
  formats.write_labelled(bad, [5, 6], _images(2, 2), ["GALAXY", "COMET"], [0, 0])
  result = _run("--labelled", labelled)
  assert result.returncode == 2 and result.stdout == ""
  assert f"{bad}, record 1: unknown class 'COMET'" in result.stderr
  raised = _run("--labelled", labelled / "a.npy", "--nan-policy", "raise")
  assert raised.returncode == 2 and "a.npy, record 2: 5 non-finite pixels" in raised.stderr
  skipped = _run("--labelled", labelled, "--skip-bad-files")
  assert skipped.returncode == 0, skipped.stderr
  summary = json.loads(skipped.stdout)["labelled"]
  assert summary["n_bad_files"] == 1 and summary["bad_files"][0]["path"] == str(bad)
  assert summary["n_objects"] == 4 and summary["nonfinite"]["action"] == "non-finite pixels set to 0"
  missing = _run("--labelled", tmp_path / "nowhere" / "*.npy")
  assert missing.returncode == 2 and "no .npy files match" in missing.stderr


def _one_line_error(result, *words):
  assert result.returncode == 2 and result.stdout == "", (result.returncode, result.stderr)
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
  for word in words:
    assert word in lines[0], lines[0]


def test_edge_case_inputs_exit_2_with_one_line_naming_the_file(tmp_path):
  empty = tmp_path / "empty.npy"
  np.save(empty, np.zeros(0, formats.UNLABELLED_DTYPE), allow_pickle=False)
  _one_line_error(_run("--unlabelled", empty), str(empty), "0 records")
  ids = tmp_path / "lab"
  ids.mkdir()
  formats.write_labelled(ids / "a.npy", [1, 2], _images(2, 0), ["STAR", "GALAXY"], [0, 0])
  formats.write_labelled(ids / "b.npy", [3, 1], _images(2, 1), ["STAR", "GALAXY"], [0, 0])
  _one_line_error(_run("--labelled", ids), f"{ids / 'b.npy'}, record 1: objID 1 already in {ids / 'a.npy'}")
  kept = _run("--labelled", ids, "--duplicates", "keep_first")
  assert kept.returncode == 0, kept.stderr
  assert json.loads(kept.stdout)["labelled"]["duplicates"] == {"policy": "keep_first", "objects_dropped": 1}
  three = tmp_path / "three.npy"
  formats.write_unlabelled(three, _images(3, 2))
  _one_line_error(_run("--unlabelled", three, "--max-records-per-file", "2"), str(three), "limit of 2")
  bright = tmp_path / "bright.npy"
  images = _images(1, 3)
  images[0, 2, 9, 9] = 1e30
  formats.write_unlabelled(bright, images)
  summary = json.loads(_run("--unlabelled", bright).stdout)["unlabelled"]
  assert summary["out_of_bounds"]["pixels"] == 1 and summary["nonfinite"]["pixels"] == 0
  assert json.loads(_run("--unlabelled", bright, "--pixel-bounds=-1e31,1e31").stdout)[
      "unlabelled"]["out_of_bounds"]["pixels"] == 0
  _one_line_error(_run("--unlabelled", bright, "--nan-policy", "raise"), f"{bright}, record 0", "outside")
