"""sdss_frames: the package's public names are its modules' own, and the command's entry point is there."""

import importlib

from stargal_jax import sdss_frames


def test_public_names_are_the_modules_own():
  for name in sdss_frames.__all__:
    value = getattr(sdss_frames, name)
    home = importlib.import_module(getattr(value, "__module__", None) or "stargal_jax.sdss_frames")
    if callable(value) and home.__name__.startswith("stargal_jax.sdss_frames."):
      assert getattr(home, name) is value, name
  main_module = importlib.import_module("stargal_jax.sdss_frames.__main__")
  assert main_module.main is sdss_frames.main
