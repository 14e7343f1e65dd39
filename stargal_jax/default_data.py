"""The project's default data: a simulated SDSS-like set, generated once per (sizes, seed, version).

`ensure_default_data` returns the cached set under `cache_dir/sim/<name>/` if a complete one is
there (its manifest is the completion marker, written last and renamed into place atomically),
and otherwise simulates it with `stargal_jax.simulate.simulate_dataset`.
"""

import dataclasses
import json
import os
import sys
from pathlib import Path

from stargal_jax.simulate import SIM_VERSION, simulate_dataset


@dataclasses.dataclass(frozen=True)
class DefaultData:
  root: Path
  labelled_dir: Path
  unlabelled_dir: Path
  truth_path: Path  # labelled truth; unlabelled_truth.npz sits beside it


def dataset_name(n_labelled: int, n_unlabelled: int, seed: int) -> str:
  return f"sim-v{SIM_VERSION}-L{n_labelled}-U{n_unlabelled}-seed{seed}"


def _as_default_data(root: Path) -> DefaultData:
  return DefaultData(root=root, labelled_dir=root / "labelled", unlabelled_dir=root / "unlabelled",
                     truth_path=root / "truth" / "labelled_truth.npz")


def _is_complete(root: Path, n_labelled: int, n_unlabelled: int, seed: int) -> bool:
  manifest = root / "manifest.json"
  if not manifest.is_file():
    return False
  info = json.loads(manifest.read_text())
  return (info.get("version") == SIM_VERSION and info.get("seed") == seed and
          info.get("n_labelled") == n_labelled and info.get("n_unlabelled") == n_unlabelled)


def ensure_default_data(cache_dir: Path, n_labelled: int, n_unlabelled: int, seed: int = 2017,
                        workers: int | None = None) -> DefaultData:
  """The simulated default data set of these sizes and seed, generating it on first use."""
  root = Path(cache_dir).expanduser() / "sim" / dataset_name(n_labelled, n_unlabelled, seed)
  if _is_complete(root, n_labelled, n_unlabelled, seed):
    print(f"default data: reusing {root}", file=sys.stderr)
    return _as_default_data(root)
  if root.exists() and not any(root.iterdir()):
    root.rmdir()
  if root.exists():
    raise RuntimeError(f"{root} exists but holds no complete data set (no matching manifest.json); "
                       "remove it to regenerate")
  workers = workers or max(1, min(8, os.cpu_count() or 1))
  print(f"default data: simulating {n_labelled} labelled + {n_unlabelled} unlabelled cutouts "
        f"(seed {seed}, {workers} workers) into {root}", file=sys.stderr)
  try:
    simulate_dataset(root, n_labelled, n_unlabelled, seed, workers=workers)
  except OSError:
    # Another process may have finished the same set first; accept it if complete.
    if not _is_complete(root, n_labelled, n_unlabelled, seed):
      raise
  return _as_default_data(root)
