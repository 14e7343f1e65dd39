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


@pytest.fixture(scope="session")
def sparse(sdss_frames_dir):
  """The high-latitude field 001035-6-0017 (sparse), loaded once per session."""
  from stargal_jax import sdss_frames
  return sdss_frames.load_field(sdss_frames_dir / "001035-6-0017")


@pytest.fixture(scope="session")
def crowded(sdss_frames_dir):
  """The Galactic-plane field 005405-6-0099 (crowded), without the alignment refinement (the test measures it)."""
  from stargal_jax import sdss_frames
  return sdss_frames.load_field(sdss_frames_dir / "005405-6-0099", refine_alignment=False)
