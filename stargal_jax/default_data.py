"""The project's default data: a simulated SDSS-like set, generated once per (sizes, seed, version).

`ensure_default_data` returns the cached set under `cache_dir/sim/<name>/` if a complete one is
there, and otherwise simulates it with `stargal_jax.simulate.simulate_dataset`. The writer of a set
holds an exclusive lock (`lock_path`) from the check to the end of the simulation and simulates into
`cache_dir/sim/.building-<name>/`, renamed into place only when complete. So a second process
asking for the same set waits and reuses it, and whatever a killed writer left (its building folder,
or a temporary folder of `simulate_dataset` called by older code) is removed on the next start: a
folder whose lock no live process holds is abandoned (the kernel drops a killed process's lock).
A set found incomplete (no or unreadable manifest, files missing) is regenerated, with a message.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from stargal_jax.data import store
from stargal_jax.simulate import SIM_VERSION, SimParams, simulate_dataset

_BUILDING = ".building-"  # + name + "@" + random: the folder a writer simulates into, holding the set's lock
_SIMULATE_TEMP = re.compile(r"\.(?P<name>.+)\.tmp-[^/]*")  # simulate_dataset's own temporary sibling


@dataclasses.dataclass(frozen=True)
class DefaultData:
  root: Path
  labelled_dir: Path
  unlabelled_dir: Path
  truth_path: Path  # labelled truth; unlabelled_truth.npz sits beside it


def params_tag(params: SimParams) -> str:
  """'' for the simulator's defaults, else '-p' + a short hash of the parameters: a shifted simulation
  (other seeing, depth, sizes, ...) is cached under its own name."""
  if params == SimParams():
    return ""
  return "-p" + hashlib.sha256(params.to_json().encode()).hexdigest()[:10]


def dataset_name(n_labelled: int, n_unlabelled: int, seed: int, params: SimParams = SimParams()) -> str:
  return f"sim-v{SIM_VERSION}-L{n_labelled}-U{n_unlabelled}-seed{seed}{params_tag(params)}"


def lock_path(cache_dir: str | os.PathLike, name: str) -> Path:
  """The lock a writer of data set `name` holds while it checks, cleans and simulates."""
  return Path(cache_dir).expanduser() / "sim" / f".{name}.lock"


def _say(message: str) -> None:
  print(f"default data: {message}", file=sys.stderr)


def _as_default_data(root: Path) -> DefaultData:
  return DefaultData(root=root, labelled_dir=root / "labelled", unlabelled_dir=root / "unlabelled",
                     truth_path=root / "truth" / "labelled_truth.npz")


def _count_npy(folder: Path) -> int:
  try:
    with os.scandir(folder) as entries:
      return sum(1 for e in entries if e.name.endswith(".npy") and e.is_file())
  except OSError:
    return -1


def _incomplete(root: Path, n_labelled: int, n_unlabelled: int, seed: int, params: SimParams) -> str | None:
  """Why `root` is not the complete set of these sizes and seed, or None when it is."""
  try:
    info = json.loads((root / "manifest.json").read_text())
  except FileNotFoundError:
    return "no manifest.json"
  except (OSError, ValueError) as e:
    return f"unreadable manifest.json ({e})"
  if not isinstance(info, dict):
    return "unreadable manifest.json (not an object)"
  wanted = {"version": SIM_VERSION, "seed": seed, "n_labelled": n_labelled, "n_unlabelled": n_unlabelled}
  differs = [f"{k} {info.get(k)!r} (expected {v!r})" for k, v in wanted.items() if info.get(k) != v]
  if json.loads(params.to_json()) != info.get("params"):
    differs.append("params differ")
  if differs:
    return "manifest.json is of another set: " + ", ".join(differs)
  found = {"labelled": _count_npy(root / "labelled"), "unlabelled": _count_npy(root / "unlabelled")}
  # simulate_dataset writes one file per unlabelled object and states the labelled file count.
  expected = {"labelled": info.get("n_labelled_files", found["labelled"]),
              "unlabelled": info.get("n_unlabelled_files", n_unlabelled)}
  missing = [f"{kind}/ holds {found[kind]} of {expected[kind]} files"
             for kind in found if found[kind] != expected[kind]]
  missing += [f"truth/{name} missing" for name in ("labelled_truth.npz", "unlabelled_truth.npz")
              if not (root / "truth" / name).is_file()]
  return "; ".join(missing) or None


def _writer_of(folder: Path) -> str | None:
  """The data set whose writer made this temporary folder, or None when it is not one."""
  if folder.name.startswith(_BUILDING):
    return folder.name[len(_BUILDING):].rsplit("@", 1)[0]
  match = _SIMULATE_TEMP.fullmatch(folder.name)
  return match["name"] if match else None


def _remove_abandoned(sim: Path, own: str) -> None:
  """Removes temporary folders of dead writers (called holding `own`'s lock: its folders are all abandoned)."""
  for folder in sorted(p for p in sim.iterdir() if p.is_dir()):
    name = _writer_of(folder)
    if name is None:
      continue
    if name == own:
      shutil.rmtree(folder, ignore_errors=True)
      removed = not folder.exists()
    else:
      removed = store.remove_if_abandoned(folder, lock_path(sim.parent, name))
    if removed:
      _say(f"removed {folder}, left by a killed simulation of {name}")


def ensure_default_data(cache_dir: Path, n_labelled: int, n_unlabelled: int, seed: int = 2017,
                        workers: int | None = None, params: SimParams = SimParams()) -> DefaultData:
  """The simulated data set of these sizes, seed and simulator parameters (the simulator's defaults: the
  project's default data), generating it on first use."""
  name = dataset_name(n_labelled, n_unlabelled, seed, params)
  sim = Path(cache_dir).expanduser() / "sim"
  root = sim / name
  if _incomplete(root, n_labelled, n_unlabelled, seed, params) is None:
    _say(f"reusing {root}")
    return _as_default_data(root)
  with store.exclusive_lock(lock_path(cache_dir, name), f"simulating {root}", notify=_say) as locked:
    if locked:
      _remove_abandoned(sim, name)
    problem = _incomplete(root, n_labelled, n_unlabelled, seed, params)
    if problem is None:  # simulated by the writer we waited for
      _say(f"reusing {root}")
      return _as_default_data(root)
    if root.exists():
      if any(root.iterdir()):
        _say(f"{root} is incomplete ({problem}); regenerating it")
      shutil.rmtree(root)
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    _say(f"simulating {n_labelled} labelled + {n_unlabelled} unlabelled cutouts "
         f"(seed {seed}, {workers} workers) into {root}")
    # A unique folder, so that even unlocked (a filesystem without locks) two writers cannot clash.
    building = Path(tempfile.mkdtemp(prefix=f"{_BUILDING}{name}@", dir=sim))
    try:
      simulate_dataset(building / name, n_labelled, n_unlabelled, seed, workers=workers, params=params)
      try:
        os.rename(building / name, root)
      except OSError:  # unlocked, another writer finished the same set first: accept it if complete
        if _incomplete(root, n_labelled, n_unlabelled, seed, params) is not None:
          raise
    finally:
      shutil.rmtree(building, ignore_errors=True)
    problem = _incomplete(root, n_labelled, n_unlabelled, seed, params)
    if problem is not None:  # fail once, loudly, rather than regenerate on every start
      raise RuntimeError(f"{root}: the simulator wrote a set that fails the completeness check ({problem})")
  return _as_default_data(root)
