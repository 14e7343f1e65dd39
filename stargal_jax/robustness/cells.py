"""One cell of the robustness protocol: a config run on one data distribution, at one size, with S seeds.

A cell is a classification run (`experiment.run`) in its own workdir `OUT/cells/<size>/<config>__<distribution>__s<S>`,
followed by the supervised ceilings of what it learned (`ceilings`); `cell.json` holds everything the table needs
and marks the cell finished: a finished cell is never rerun, an unfinished one resumes from its checkpoints.

Stage sharing: hierarchical designs whose stage 1 is the same (same `ae` block, data, seed; one shared stage 1 per
cell, i.e. one seed or `seed_scope='stage2'`) train it once per distribution: a later cell starts from a copy of
the first one's stage-1 checkpoints (restored, not retrained).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
import sys
import time
from pathlib import Path

import ml_collections

from stargal_jax import experiment
from stargal_jax import metrics as metrics_lib
from stargal_jax import paths, registry, shifts
from stargal_jax.classify import pipelines
from stargal_jax.robustness import ceilings

CONFIG_DIR = paths.REPO_ROOT / "configs"
CELL_FILE = "cell.json"


def _full(config: ml_collections.ConfigDict) -> None:
  config.data.default_n_labelled = 5000
  config.data.default_n_unlabelled = 10000


def _small(config: ml_collections.ConfigDict) -> None:
  """A quick check: a fifth of the data and a quarter of the steps (never the reported tables)."""
  config.data.default_n_labelled = 1000
  config.data.default_n_unlabelled = 2000
  config.data.normalizer_sample = 1000
  config.score.fit_size = 1000
  for stage in (config[name] for name in ("ae", "vae", "classifier") if name in config):
    if "train" in stage:
      stage.train.steps = max(50, stage.train.steps // 4)
      stage.train.checkpoint_every = max(25, stage.train.steps // 4)


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Seconds (tests): the config's own `:smoke` argument, added by `cell_config`."""


# Sizes: full = the reported tables (5,000 labelled / 10,000 unlabelled simulated cutouts), small = quick checks,
# smoke = seconds (tests).
SIZES = {"full": _full, "small": _small, "smoke": _smoke}
REAL = "real_sdss"  # the protocol's real-frame distribution (robustness.real); every other name is a simulation
REAL_SET_SIZES = {"full": None, "small": 1500, "smoke": 300}  # cutouts of the real frames (None: all)


@dataclasses.dataclass(frozen=True)
class CellSpec:
  config: str  # a config file (path, or a name under configs/) with its `:arguments`, e.g. 'cvae.py:study'
  distribution: str  # a key of shifts.DISTRIBUTIONS, or robustness.real.REAL
  size: str  # a key of SIZES
  seeds: int

  @property
  def name(self) -> str:
    return f"{slug(self.config)}__{self.distribution}__s{self.seeds}"


def slug(config_spec: str) -> str:
  """'configs/cvae.py:study' -> 'cvae-study': a file-system name for a config spec."""
  path, _, arg = config_spec.partition(":")
  return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).stem + (f"-{arg}" if arg else ""))


def config_path(config_spec: str) -> Path:
  path = Path(config_spec.partition(":")[0])
  for candidate in (path, CONFIG_DIR / path, CONFIG_DIR / path.name):
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(f"config {config_spec!r}: no such file (looked in . and {CONFIG_DIR})")


def load_config(config_spec: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file given as 'path/to/x.py[:arg]' (or 'x.py[:arg]' under configs/)."""
  path = config_path(config_spec)
  arg = config_spec.partition(":")[2] or None
  spec = importlib.util.spec_from_file_location(f"robustness_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  added = str(paths.REPO_ROOT) not in sys.path
  if added:  # the config files import `configs.common` from the checkout
    sys.path.insert(0, str(paths.REPO_ROOT))
  try:
    spec.loader.exec_module(module)
  finally:
    if added:
      sys.path.remove(str(paths.REPO_ROOT))
  return module.get_config(arg)


def cell_config(spec: CellSpec) -> ml_collections.ConfigDict:
  """The config of a cell: the config file (with `:smoke` at size smoke), shifted to the distribution (the
  real one has no simulator parameters), sized, with S seeds."""
  sizer = registry.lookup(SIZES, spec.size, "protocol size")
  config_spec = spec.config
  if spec.size == "smoke":
    config_spec += ("," if ":" in config_spec else ":") + "smoke"
  config = load_config(config_spec)
  if spec.distribution != REAL:
    shifts.apply_to_config(config, spec.distribution)
  sizer(config)
  config.num_seeds = int(spec.seeds)
  config.eval.plots = False  # the protocol reads numbers; each cell's report.md still has them
  return config


def cell_dir(out: Path, spec: CellSpec) -> Path:
  return Path(out) / "cells" / spec.size / spec.name


def finished(out: Path, spec: CellSpec) -> dict | None:
  path = cell_dir(out, spec) / CELL_FILE
  return json.loads(path.read_text()) if path.is_file() else None


def write_cell(directory: Path, result: dict) -> dict:
  """Writes cell.json atomically (a killed write leaves no finished-looking cell)."""
  safe = metrics_lib.to_json_safe(result)
  temporary = directory / (CELL_FILE + ".tmp")
  temporary.write_text(json.dumps(safe, indent=1))
  temporary.replace(directory / CELL_FILE)
  return safe


def stage1_key(config) -> str | None:
  """What determines a hierarchical design's shared stage 1 (None when the cell has no single stage 1)."""
  stages = pipelines.get_pipeline(config.pipeline).stages
  if stages[0] != "ae" or not (int(config.num_seeds) == 1 or config.seed_scope == "stage2"):
    return None
  return json.dumps({"ae": config.ae.to_dict(), "data": config.data.to_dict(), "seed": int(config.seed)},
                    sort_keys=True, default=str)


def share_stage1(out: Path, spec: CellSpec, config) -> str | None:
  """Copies the stage-1 checkpoints of a finished cell with the same stage 1 into this cell; returns its name."""
  key = stage1_key(config)
  target = cell_dir(out, spec) / "checkpoints" / "ae"
  if key is None or target.exists():
    return None
  for other in sorted((Path(out) / "cells" / spec.size).glob(f"*__{spec.distribution}__*")):
    info = other / "stage1.json"
    source = other / "checkpoints" / "ae"
    if other.name != spec.name and info.is_file() and source.is_dir() and info.read_text() == key:
      shutil.copytree(source, target)
      return other.name
  return None


def run_simulated_cell(out: Path, spec: CellSpec, log=print) -> dict:
  """Runs one simulated cell: the classification run (`experiment.run`), then its ceilings; writes cell.json."""
  config = cell_config(spec)
  directory = cell_dir(out, spec)
  directory.mkdir(parents=True, exist_ok=True)
  shared = share_stage1(out, spec, config)
  if shared:
    log(f"[robustness] {spec.name}: stage 1 restored from {shared}")
  t0 = time.perf_counter()
  run_metrics = experiment.run(config, directory)
  key = stage1_key(config)
  if key is not None:
    (directory / "stage1.json").write_text(key)
  cell_ceilings = ceilings.cell_ceilings(config, directory)
  cell_ceilings["indices"] = ceilings.data_index_ceilings(config)
  result = {"spec": dataclasses.asdict(spec), "pipeline": config.pipeline, "seed_scope": config.seed_scope,
            "metrics": run_metrics, "ceilings": cell_ceilings,
            "stage1_shared_from": shared, "wall_seconds": time.perf_counter() - t0,
            "data_source": run_metrics.get("data_source")}
  return write_cell(directory, result)
