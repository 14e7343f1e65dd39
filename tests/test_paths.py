"""paths: the shared-data and cache folders follow the config, then the environment, then the defaults."""

from pathlib import Path

from stargal_jax import paths


def test_cache_and_shared_data_folders(monkeypatch, tmp_path):
  monkeypatch.setenv("STARGAL_CACHE", str(tmp_path / "env_cache"))
  monkeypatch.setenv("STARGAL_SHARED_DATA", str(tmp_path / "shared"))
  assert paths.cache_dir() == tmp_path / "env_cache"
  assert paths.cache_dir(str(tmp_path / "configured")) == tmp_path / "configured"  # the config wins
  assert paths.shared_data_dir() == tmp_path / "shared"
  monkeypatch.delenv("STARGAL_CACHE")
  monkeypatch.delenv("STARGAL_SHARED_DATA")
  assert paths.cache_dir() == Path.home() / ".cache" / "stargal_jax"
  assert paths.shared_data_dir() == paths.REPO_ROOT.parent / "shared" / "data"
  assert (paths.REPO_ROOT / "stargal_jax" / "paths.py").is_file()
