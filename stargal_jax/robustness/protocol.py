"""The robustness protocol: every config on every distribution, cell by cell, resumable; the tables after each cell.

`run_protocol(out, configs, distributions, size)` runs the cells in distribution order (the real frames last: their
two-sample check reads the default-data cell of the same design), skips finished ones, keeps going past a failed
cell (its error is logged and it stays unfinished), and rewrites `OUT/robustness_<size>.{md,json}` from the finished
cells of the request after every cell.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Sequence

from stargal_jax import registry, shifts
from stargal_jax.robustness import cells, real, table


def all_distributions() -> tuple[str, ...]:
  return (*shifts.DISTRIBUTIONS, cells.REAL)


def check_request(configs: Sequence[tuple[str, int]], distributions: Sequence[str], size: str) -> None:
  """Fails before any work on an unknown distribution, size or config file, or a seed count below 1."""
  for name in distributions:
    if name != cells.REAL:
      shifts.get_distribution(name)
  registry.lookup(cells.SIZES, size, "protocol size")
  for spec, seeds in configs:
    cells.config_path(spec)
    if int(seeds) < 1:
      raise ValueError(f"config {spec!r}: seeds must be >= 1, got {seeds}")


def ordered_specs(configs: Sequence[tuple[str, int]], distributions: Sequence[str], size: str) -> list[cells.CellSpec]:
  order = sorted(distributions, key=lambda d: (d == cells.REAL, list(distributions).index(d)))
  return [cells.CellSpec(spec, d, size, int(seeds)) for d in order for spec, seeds in configs]


def run_cell(out: Path, spec: cells.CellSpec, log=print) -> dict:
  """A finished cell's result, or the cell run now."""
  done = cells.finished(out, spec)
  if done is not None:
    return done
  if spec.distribution == cells.REAL:
    return real.run_real_cell(out, spec, log)
  return cells.run_simulated_cell(out, spec, log)


def collect(out: Path, specs: Sequence[cells.CellSpec]) -> list[dict]:
  return [c for c in (cells.finished(out, s) for s in specs) if c is not None]


def run_protocol(out: str | Path, configs: Sequence[tuple[str, int]], distributions: Sequence[str], size: str,
                 log=print, table_only: bool = False) -> tuple[Path, Path]:
  """Runs (or, with `table_only`, only tabulates) the cells; returns the markdown and JSON paths."""
  check_request(configs, distributions, size)
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  specs = ordered_specs(configs, distributions, size)
  stem = f"robustness_{size}"
  for k, spec in enumerate(specs):
    if table_only or cells.finished(out, spec) is not None:
      continue
    log(f"[robustness] cell {k + 1}/{len(specs)}: {spec.name} ({spec.size})")
    try:
      run_cell(out, spec, log)
    except Exception:  # one failed cell must not stop a night of others; it stays unfinished and is retried
      log(f"[robustness] cell {spec.name} failed:\n{traceback.format_exc()}")
    table.write_tables(out, collect(out, specs), stem)
  if not table_only:  # a real cell finished before its default cell lacks the check against it
    for spec in specs:
      if spec.distribution == cells.REAL:
        real.add_two_sample(out, spec, log)
  paths = table.write_tables(out, collect(out, specs), stem)
  missing = [s.name for s in specs if cells.finished(out, s) is None]
  log(f"[robustness] {len(specs) - len(missing)}/{len(specs)} cells finished; tables {paths[0]}, {paths[1]}"
      + (f"; unfinished: {', '.join(missing)}" if missing else ""))
  return paths
