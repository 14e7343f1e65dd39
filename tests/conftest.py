"""Shared fixtures: one generated smoke data set per test session; real data skip helpers."""

import os

import pytest

from stargal_jax import paths


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
