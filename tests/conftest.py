"""Shared fixtures: one generated smoke data set per test session; real data skip helpers."""

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import pytest

from stargal_jax import paths

REPO = Path(__file__).resolve().parents[1]

# XLA's persistent compilation cache, in a folder of this session only: the many tests that build the same small
# model's train step (each `train.train` jits a fresh closure) compile it once and then load it. Same executable,
# same numbers; set before any test compiles anything.
_XLA_CACHE = tempfile.mkdtemp(prefix="stargal_jax_test_xla_cache_")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def config_module(name):
  """configs/<name>.py as a module, loaded by path (its ARGUMENTS, get_config)."""
  spec = importlib.util.spec_from_file_location(f"configs.{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(REPO))
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(str(REPO))
  return module


def load_config(name, arg="smoke"):
  """configs/<name>.py's get_config(arg), loaded by path (the tests import it from here)."""
  return config_module(name).get_config(arg)


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
