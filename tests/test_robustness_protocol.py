"""The robustness protocol end to end on tiny data (slow): cells on the default and a shifted simulation and on one
real field, the tables written from them, nothing rerun the second time."""

import json

import numpy as np
import pytest

from stargal_jax import paths
from stargal_jax.robustness import cells, protocol, real

pytestmark = pytest.mark.slow


def test_tiny_protocol_end_to_end(tmp_path, smoke_cache, monkeypatch):
  monkeypatch.setenv("STARGAL_CACHE", str(smoke_cache))
  distributions = ["default", "no_neighbours"]
  field = paths.shared_data_dir() / "sdss_frames" / real.HIGH_LATITUDE_FIELDS[0]
  if field.is_dir():  # the real frames where the shared data is present
    monkeypatch.setattr(real, "HIGH_LATITUDE_FIELDS", real.HIGH_LATITUDE_FIELDS[:1])
    monkeypatch.setitem(cells.REAL_SET_SIZES, "smoke", 200)
    distributions.append(cells.REAL)
  configs = [("cvae.py", 2)]
  md_path, json_path = protocol.run_protocol(tmp_path, configs, distributions, "smoke", log=lambda *_: None)
  rows = json.loads(json_path.read_text())
  assert [r["distribution"] for r in rows["simulated"]] == ["default", "no_neighbours"]
  for row, name in zip(rows["simulated"], ["default", "no_neighbours"]):
    directory = cells.cell_dir(tmp_path, cells.CellSpec("cvae.py", name, "smoke", 2))
    run = json.loads((directory / "metrics.json").read_text())
    assert row["auc_mean"] == pytest.approx(np.mean(run["auc_per_seed"]))
    assert row["best_index_auc"] == pytest.approx(max(v["auc"] for v in run["baselines"].values()))
    assert 0.0 <= row["ceiling_codes_logistic"] <= 1.0 and row["seeds"] == 2
  config = json.loads((cells.cell_dir(tmp_path, cells.CellSpec("cvae.py", "no_neighbours", "smoke", 2))
                       / "config.json").read_text())
  assert config["data"]["sim_params"]["neighbour_density_scale"] == 0.0
  if cells.REAL in distributions:
    assert rows["real"][0]["n_real"] == 200 and len(rows["real"][0]["ks_score"]) == 4
  assert md_path.read_text().count("| `cvae.py` |") == len(distributions)
  stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cells").rglob("cell.json")}
  protocol.run_protocol(tmp_path, configs, distributions, "smoke", log=lambda *_: None)  # finished: not rerun
  assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "cells").rglob("cell.json")}
