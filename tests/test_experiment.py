"""experiment: the one run registry; unknown names and config mistakes fail at once; launch.py's flags."""

import subprocess
import sys
from pathlib import Path

import pytest

from stargal_jax import experiment, registry
from stargal_jax.classify import pipelines
from conftest import load_config

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
