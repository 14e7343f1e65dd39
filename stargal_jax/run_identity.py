"""What a workdir's trained state is, and who is using the workdir: `WORKDIR/run_identity.json` and `run.lock`.

A run's identity is everything that determines its trained state: the config minus its scoring and bookkeeping
settings (`training_part`), the data (`inputs.Stores.identity`: the packed stores' fingerprints, or the default
set's manifest digest) and the package version. Its `fingerprint` is the sha256 of the three, each part also
hashed alone (`config_fingerprint`, `data_fingerprint`). `check_config_part` (before any data is read) and
`check_data_part` (once the stores are open, before training) compare a rerun with what trained the
workdir's checkpoints and raise `RunIdentityError`, one line naming the differing settings, when they differ.
Scoring settings (each run registry entry lists its own) may change: the trained state is restored and scored
again, and the run says so. Bookkeeping settings (`BOOKKEEPING_KEYS`) change nothing that is computed.

Seeds: `seed_layout(config)` (from the run registry entry) stands for `num_seeds` and `seed_scope` in the
training part. Seeds trained one by one, each in its own checkpoint directory, may grow or shrink in number (the
seeds trained before are restored); a study whose stage 2 trains all its seeds as one program records their
number, so it may not change.

`workdir_lock` holds `WORKDIR/run.lock` (`data.store.exclusive_lock`) for the life of a run: a second run stops
at once naming the holder; the lock of a killed run is free (the kernel drops it) and is taken over.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import stargal_jax
from stargal_jax.data import store as stores

IDENTITY_FILE = "run_identity.json"
LOCK_FILE = "run.lock"
# Settings that change nothing computed: where things are cached, how often progress is printed or checkpoints
# are written (a resume is bitwise identical at any checkpoint), whether plots are drawn, simulator processes.
BOOKKEEPING_KEYS = ("data.cache_dir", "data.workers", "*.train.log_every", "*.train.checkpoint_every",
                    "eval.plots", "seg.n_plot")
SEED_KEYS = ("num_seeds", "seed_scope")  # stood for by the seed layout
MAX_LISTED = 8  # differing settings named in one message


class RunIdentityError(ValueError):
  """A rerun whose config or data differ from what trained the workdir's checkpoints (one line)."""


class WorkdirBusy(RuntimeError):
  """Another live process holds the workdir's lock (the message names it)."""


def canonical(value: Any) -> str:
  """JSON with sorted keys, tuples as lists: equal settings give equal text."""
  return json.dumps(value, sort_keys=True, separators=(",", ":"), default=list)


def sha256(value: Any) -> str:
  return hashlib.sha256(canonical(value).encode()).hexdigest()


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  """{'a.b.c': value} of a nested mapping (a ConfigDict's to_dict(), or config.json), values as JSON has them."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = json.loads(canonical(value))
  return flat


def _matches(key: str, patterns: Sequence[str]) -> bool:
  return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def split_settings(settings: Mapping[str, Any], scoring_keys: Sequence[str], seed_layout: str | None) -> dict:
  """{'training', 'scoring', 'seeds'} parts of flattened settings (the bookkeeping ones dropped)."""
  parts: dict[str, dict] = {"training": {}, "scoring": {}, "seeds": {}}
  for key, value in settings.items():
    if _matches(key, BOOKKEEPING_KEYS):
      continue
    if key in SEED_KEYS:
      if seed_layout is not None:  # None: the run reads neither
        parts["seeds"][key] = value
    elif _matches(key, scoring_keys):
      parts["scoring"][key] = value
    else:
      parts["training"][key] = value
  if seed_layout is not None:
    parts["training"]["(seed layout)"] = seed_layout
  return parts


def identity(config_settings: Mapping, scoring_keys: Sequence[str], seed_layout: str | None,
             data: Mapping | None) -> dict:
  """The record `run_identity.json` holds for flattened config settings and a data identity."""
  parts = split_settings(config_settings, scoring_keys, seed_layout)
  config_fp, data_fp = sha256(parts["training"]), sha256(data)
  return {"fingerprint": sha256({"config": config_fp, "data": data_fp, "package_version": stargal_jax.__version__}),
          "config_fingerprint": config_fp, "data_fingerprint": data_fp,
          "scoring_fingerprint": sha256({"scoring": parts["scoring"], "seeds": parts["seeds"]}),
          "package_version": stargal_jax.__version__, "training": parts["training"], "scoring": parts["scoring"],
          "seeds": parts["seeds"], "data": data, "scoring_keys": list(scoring_keys),
          "bookkeeping_keys": list(BOOKKEEPING_KEYS)}


_ABSENT = object()


def _shown(value: Any) -> str:
  return "(absent)" if value is _ABSENT else repr(value) if isinstance(value, str) else canonical(value)


def differences(before: Mapping, after: Mapping) -> list[str]:
  """'key old -> new' for every key whose value differs (absent on one side included), sorted by key."""
  changed = []
  for key in sorted(set(before) | set(after)):
    old, new = before.get(key, _ABSENT), after.get(key, _ABSENT)
    if (old is _ABSENT) != (new is _ABSENT) or (old is not _ABSENT and canonical(old) != canonical(new)):
      changed.append(f"{key} {_shown(old)} -> {_shown(new)}")
  return changed


def _listed(changes: Sequence[str]) -> str:
  shown = ", ".join(changes[:MAX_LISTED])
  return shown + (f" and {len(changes) - MAX_LISTED} more" if len(changes) > MAX_LISTED else "")


def trained_state(workdir: Path) -> list[Path]:
  """The checkpoint steps under a workdir (every stage, seed and arm): what an identity guards."""
  return sorted(p for p in Path(workdir).glob("**/checkpoints/*/*") if p.name.isdigit() and p.is_dir())


def read(workdir: Path) -> dict | None:
  """The workdir's recorded identity, or None when there is none."""
  path = Path(workdir) / IDENTITY_FILE
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as error:
    raise RunIdentityError(f"{path} is unreadable ({error}); remove it only if {Path(workdir)} holds no run you "
                           f"want to keep") from None


def _fresh_start(workdir: Path, scoring_keys: Sequence[str]) -> str:
  return (f"start fresh with another --workdir (or remove {workdir}); to re-score the trained run instead, change "
          f"only its scoring settings ({', '.join(scoring_keys)})")


def check_config_part(workdir: Path, config_settings: Mapping, scoring_keys: Sequence[str],
                      seed_layout: str | None, say=print) -> dict | None:
  """Compares a rerun's config with what trained the workdir, before any data is read.

  Returns the recorded identity to compare the data with (None: nothing to compare: a new workdir, one without
  checkpoints, or one from before run identities whose config.json matches). Raises RunIdentityError when the
  training settings differ and the workdir holds checkpoints; says what a changed scoring setting or seed count
  means."""
  workdir = Path(workdir)
  new = identity(config_settings, scoring_keys, seed_layout, None)
  recorded = read(workdir)
  checkpoints = trained_state(workdir)
  if recorded is None:
    if not checkpoints:
      return None
    try:  # a workdir of a run from before run identities: its config.json is the only record
      legacy = flatten(json.loads((workdir / "config.json").read_text()))
    except (OSError, ValueError):
      raise RunIdentityError(f"{workdir} holds checkpoints ({checkpoints[0].parent}) of a run that recorded no "
                             f"{IDENTITY_FILE} or config.json; {_fresh_start(workdir, scoring_keys)}") from None
    recorded = identity(legacy, scoring_keys, seed_layout, None)
    note = f"made before run identities: its config.json matches, its data could not be checked"
  else:
    note = None
  changed = differences(recorded["training"], new["training"])
  if changed and not checkpoints:
    say(f"[run] {workdir}: no checkpoints yet, so this config replaces the one recorded ({_listed(changed)})")
    return None
  if changed:
    raise RunIdentityError(f"{workdir} holds a run trained with other settings ({_listed(changed)}): its "
                           f"checkpoints would be reused for a config they were not trained with; "
                           f"{_fresh_start(workdir, scoring_keys)}")
  if note:
    say(f"[run] {workdir}: {note}; adopted")
    return None
  rescored = differences(recorded["scoring"], new["scoring"])
  if rescored:
    say(f"[run] {workdir}: re-scoring the trained run with changed scoring settings ({_listed(rescored)}); "
        f"nothing is retrained")
  seeds = differences(recorded.get("seeds", {}), new["seeds"])
  if seeds:
    say(f"[run] {workdir}: {_listed(seeds)}: the seeds trained before are restored from their checkpoints, "
        f"the others trained")
  return recorded


def check_data_part(workdir: Path, recorded: dict | None, data: Mapping, scoring_keys: Sequence[str]) -> None:
  """Once the stores are open: the data must be those the workdir's checkpoints were trained on."""
  if recorded is None or recorded.get("data") is None:
    return
  changed = differences(flatten({"data": recorded["data"]}), flatten({"data": data}))
  if changed:
    raise RunIdentityError(f"{workdir} was trained on other data ({_listed(changed)}): data.labelled / "
                           f"data.unlabelled changed since; {_fresh_start(workdir, scoring_keys)}")


def record(workdir: Path, config_settings: Mapping, scoring_keys: Sequence[str], seed_layout: str | None,
           data: Mapping, pipeline: str) -> dict:
  """Writes `run_identity.json` (atomically) for this run and returns it."""
  workdir = Path(workdir)
  previous = read(workdir) or {}
  now = time.strftime("%Y-%m-%dT%H:%M:%S")
  entry = dict(identity(config_settings, scoring_keys, seed_layout, data), pipeline=pipeline, last_started=now)
  entry["created"] = previous.get("created", now) if previous.get("fingerprint") == entry["fingerprint"] else now
  partial = workdir / f".{IDENTITY_FILE}.partial"
  partial.write_text(json.dumps(entry, indent=1, sort_keys=True))
  os.replace(partial, workdir / IDENTITY_FILE)
  return entry


def _holder_of(path: Path) -> str | None:
  """Who last wrote the lock file (pid, host, start), or None when there is no readable one."""
  try:
    info = json.loads(path.read_text() or "{}")
    return f"pid {info['pid']} on host {info['host']}, started {info['since']}"
  except (OSError, ValueError, KeyError, TypeError):
    return None


@contextlib.contextmanager
def workdir_lock(workdir: Path, purpose: str, say=print) -> Iterator[None]:
  """Holds `WORKDIR/run.lock` for the block. WorkdirBusy at once when a live process holds it; a lock left by a
  killed run (its file remains, its flock is gone) is taken over, with a note."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / LOCK_FILE
  left = _holder_of(path)
  try:
    with stores.exclusive_lock(path, purpose, notify=lambda message: say(f"[run] {message}"), wait=False):
      if left is not None:
        say(f"[run] {workdir}: taking over the lock left by a run that is gone ({left})")
      yield
  except stores.LockHeldError as error:
    holder = str(error).split(" is held by ", 1)[-1].rsplit("; not ", 1)[0]
    raise WorkdirBusy(f"another run is using {workdir}: {holder}; wait for it to finish or use another "
                      f"--workdir") from None
