"""Where the project reads shared real data and writes cached data sets."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
  """Real SDSS frames and HSC scenes: $STARGAL_SHARED_DATA, else ../shared/data beside the checkout."""
  env = os.environ.get("STARGAL_SHARED_DATA")
  return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def cache_dir(configured: str = "") -> Path:
  """Generated data and packed stores: the config's value, else $STARGAL_CACHE, else ~/.cache/stargal_jax."""
  if configured:
    return Path(configured).expanduser()
  env = os.environ.get("STARGAL_CACHE")
  return Path(env).expanduser() if env else Path.home() / ".cache" / "stargal_jax"
