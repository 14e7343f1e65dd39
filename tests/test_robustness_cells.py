"""robustness.cells and protocol requests: config specs, shifted and sized cell configs, stage-1 sharing keys."""

import pytest

from conftest import load_config
from stargal_jax import registry
from stargal_jax.robustness import __main__ as cli
from stargal_jax.robustness import cells, protocol


def test_specs_load_the_config_files():
  assert cells.slug("configs/cvae.py:study,unit0") == "cvae-study-unit0"
  assert cells.load_config("cvae.py:study").to_dict() == load_config("cvae", "study").to_dict()
  assert cells.load_config(str(cells.CONFIG_DIR / "vae_aw.py") + ":star").to_dict() == load_config(
      "vae_aw", "star").to_dict()
  with pytest.raises(FileNotFoundError, match="nope.py"):
    cells.load_config("nope.py")


def test_cell_config_is_shifted_sized_and_seeded():
  small = cells.cell_config(cells.CellSpec("cvae.py", "deeper", "small", 4))
  full = load_config("cvae", None)
  assert small.data.sim_params.r_faint_limit == 23.5 and small.num_seeds == 4
  assert (small.data.default_n_labelled, small.data.default_n_unlabelled) == (1000, 2000)
  assert small.ae.train.steps == full.ae.train.steps // 4 and small.vae.train.steps == full.vae.train.steps // 4
  full_bootstrap = cells.cell_config(cells.CellSpec("bootstrap.py", "default", "full", 1))
  small_bootstrap = cells.cell_config(cells.CellSpec("bootstrap.py", "default", "small", 1))
  assert small_bootstrap.classifier.train.steps == full_bootstrap.classifier.train.steps // 4 == 500
  smoke = cells.cell_config(cells.CellSpec("cvae.py:study", "default", "smoke", 1))
  assert smoke.to_dict() == dict(load_config("cvae", "study,smoke").to_dict(), num_seeds=1,
                                 eval=dict(smoke.eval.to_dict(), plots=False))
  real = cells.cell_config(cells.CellSpec("cvae.py", cells.REAL, "full", 1))
  assert real.data.sim_params.to_dict() == full.data.sim_params.to_dict()
  with pytest.raises(registry.UnknownName, match="small"):
    cells.cell_config(cells.CellSpec("cvae.py", "default", "huge", 1))


def test_stage1_sharing_keys():
  key = lambda spec: cells.stage1_key(cells.cell_config(cells.CellSpec(spec, "default", "full", 20)))
  assert key("cvae.py:study") == key("ae_vae.py:study") is not None  # the same study AE, trained once
  assert key("cvae.py") != key("cvae.py:study")
  assert key("vae_manifold.py") is None  # no stage 1


def test_protocol_requests_fail_before_any_work():
  with pytest.raises(registry.UnknownName, match="seeing_worse"):
    protocol.check_request([("cvae.py", 1)], ["seeing_bad"], "full")
  with pytest.raises(FileNotFoundError):
    protocol.check_request([("cvae_missing.py", 1)], ["default"], "full")
  with pytest.raises(ValueError, match="seeds"):
    protocol.check_request([("cvae.py", 0)], ["default"], "full")
  specs = protocol.ordered_specs([("cvae.py", 20), ("vae_manifold.py", 5)], [cells.REAL, "default"], "full")
  assert [(s.distribution, s.config, s.seeds) for s in specs] == [
      ("default", "cvae.py", 20), ("default", "vae_manifold.py", 5), (cells.REAL, "cvae.py", 20),
      (cells.REAL, "vae_manifold.py", 5)]  # the real frames last: they read the default cells
  assert cli.parse_config("cvae.py:study,unit0=20", 1) == ("cvae.py:study,unit0", 20)
  assert cli.parse_config("cvae.py", 3) == ("cvae.py", 3)
  assert cli.main(["--config", "cvae.py", "--distributions", "nowhere", "--out", "/tmp/x"]) == 2


def test_cell_json_marks_a_finished_cell(tmp_path):
  spec = cells.CellSpec("cvae.py", "default", "smoke", 1)
  assert cells.finished(tmp_path, spec) is None
  directory = cells.cell_dir(tmp_path, spec)
  directory.mkdir(parents=True)
  cells.write_cell(directory, {"value": float("nan"), "spec": {"config": "cvae.py"}})
  assert cells.finished(tmp_path, spec) == {"value": None, "spec": {"config": "cvae.py"}}
  assert not list(directory.glob("*.tmp"))
