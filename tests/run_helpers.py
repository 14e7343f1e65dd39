"""Shared pieces of the run-level tests: tiny user data sets in the study's format, a smoke config pointed at them,
and a stand-in job that records its calls and leaves a checkpoint behind like a trained run."""

import dataclasses
import json
from pathlib import Path

import numpy as np

from stargal_jax import experiment
from stargal_jax.data import formats
from conftest import load_config


def write_user_data(root: Path, n_labelled: int = 40, n_unlabelled: int = 48, classes=("STAR", "GALAXY"),
                    seed: int = 0) -> tuple[Path, Path]:
  """(labelled dir, unlabelled dir) of small random cutouts; labelled classes cycle through `classes`."""
  rng = np.random.default_rng(seed)
  labelled, unlabelled = Path(root) / "labelled", Path(root) / "unlabelled"
  labelled.mkdir(parents=True, exist_ok=True)
  unlabelled.mkdir(parents=True, exist_ok=True)
  images = rng.normal(0.0, 0.1, (n_labelled,) + formats.IMAGE_SHAPE).astype(np.float32)
  half = n_labelled // 2
  for part, rows in (("a", slice(0, half)), ("b", slice(half, n_labelled))):
    ids = np.arange(n_labelled, dtype=np.int64)[rows] + 1000
    formats.write_labelled(labelled / f"{part}.npy", ids, images[rows],
                           np.array([classes[i % len(classes)] for i in range(n_labelled)])[rows],
                           np.zeros(len(ids)))
  formats.write_unlabelled(unlabelled / "u.npy",
                           rng.normal(0.0, 0.1, (n_unlabelled,) + formats.IMAGE_SHAPE).astype(np.float32))
  return labelled, unlabelled


def user_config(tmp_path: Path, name: str = "vae_manifold", arg: str = "smoke", **data_kwargs):
  """configs/<name>.py:<arg> on fresh user data under tmp_path (its store cache there too)."""
  labelled, unlabelled = write_user_data(tmp_path / "data", **data_kwargs)
  config = load_config(name, arg)
  config.data.labelled, config.data.unlabelled = str(labelled), str(unlabelled)
  config.data.cache_dir = str(tmp_path / "cache")
  return config


class RecordingJob:
  """Stands in for a run's job: records each call, and leaves a finished checkpoint step in the workdir as a
  trained run would (the trained state a run identity guards)."""

  def __init__(self):
    self.calls = []

  def __call__(self, config, workdir):
    self.calls.append(json.loads(config.to_json()))
    (Path(workdir) / "checkpoints" / "vae" / "6").mkdir(parents=True, exist_ok=True)
    return {}


def with_job(monkeypatch, pipeline: str, job) -> None:
  """Replaces the job of run registry entry `pipeline` (the checks around it stay)."""
  monkeypatch.setitem(experiment.RUNS, pipeline, dataclasses.replace(experiment.RUNS[pipeline], job=job))
