"""Shared fixtures: one generated smoke data set per test session; real data skip helpers."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from stargal_jax import paths

REPO = Path(__file__).resolve().parents[1]


def load_config(name, arg="smoke"):
  """configs/<name>.py's get_config(arg), loaded by path (the tests import it from here)."""
  spec = importlib.util.spec_from_file_location(f"configs.{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(REPO))
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(str(REPO))
  return module.get_config(arg)


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory):
  """A cache directory shared by the tests that run whole pipelines (the smoke data set is generated once)."""
  existing = os.environ.get("STARGAL_TEST_CACHE")
  return existing or str(tmp_path_factory.mktemp("stargal_cache"))


@pytest.fixture(scope="session")
def sdss_frames_dir():
  path = paths.shared_data_dir() / "sdss_frames"
  if not path.is_dir():
    pytest.skip(f"real SDSS frames not found at {path}")
  return path
