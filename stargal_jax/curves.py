"""Training curves: every stage's per-log-step history as TensorBoard event files and as a figure.

When a stage finishes training (`stages.train_stage`, `stages.train_stage_seeds`), `record_stage` writes
`WORKDIR/tensorboard/<stage>/`:
  history.json                 the trainer's per-log-step history (`train.TrainResult.history`: step, every loss
                               term's unweighted value, `total`, `grad_norm`, `images_per_second`), merged with the
                               entries already there when the stage resumed from a checkpoint
  events.out.tfevents.*        the same numbers as TensorBoard scalars (tags `loss/<term>`, `optim/grad_norm`,
                               `speed/images_per_second`), rewritten from the merged history, so a resumed stage
                               shows one continuous curve
Written with tensorboardX (no TensorFlow): `tensorboard --logdir WORKDIR` shows every stage (and every seed's
stages of a seed_scope='all' study, under `seed_NNN/tensorboard/`). A seed-vmapped stage logs the mean over its
seeds. The files appear when a stage ends, not live; only process 0 writes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from stargal_jax import distributed, plots

TENSORBOARD_DIR = "tensorboard"
HISTORY_FILE = "history.json"
EVENT_FILE_GLOB = "events.out.tfevents.*"
SPEED_KEYS = ("images_per_second",)
OPTIMISER_KEYS = ("grad_norm",)


def stage_dir(workdir: str | Path, stage: str) -> Path:
  return Path(workdir) / TENSORBOARD_DIR / stage


def scalar_tag(key: str) -> str:
  """The TensorBoard tag of one history key: speed, optimiser, or (everything else) a loss value."""
  if key in SPEED_KEYS:
    return f"speed/{key}"
  if key in OPTIMISER_KEYS:
    return f"optim/{key}"
  return f"loss/{key}"


def merge_history(previous: Sequence[Mapping], new: Sequence[Mapping]) -> list[dict]:
  """`previous` entries logged before the first step of `new`, then `new`: a stage resumed from its checkpoint at
  step T logs from T + 1 on, and any entries logged after T by the interrupted run are superseded."""
  new = [dict(entry) for entry in new]
  if not new:
    return [dict(entry) for entry in previous]
  first = min(int(entry["step"]) for entry in new)
  return [dict(entry) for entry in previous if int(entry["step"]) < first] + new


def read_history(workdir: str | Path, stage: str) -> dict | None:
  """{'stage', 'num_seeds', 'history'} as `record_stage` wrote it, or None when the stage has none."""
  path = stage_dir(workdir, stage) / HISTORY_FILE
  return json.loads(path.read_text()) if path.is_file() else None


def write_events(directory: Path, history: Sequence[Mapping]) -> Path:
  """One event file in `directory` holding every history entry (the old event files there are removed)."""
  from tensorboardX import SummaryWriter  # imported here: only stage ends and tests need it

  directory.mkdir(parents=True, exist_ok=True)
  for old in directory.glob(EVENT_FILE_GLOB):
    old.unlink()
  writer = SummaryWriter(logdir=str(directory), flush_secs=3600)
  try:
    for entry in history:
      step = int(entry["step"])
      for key, value in entry.items():
        if key != "step":
          writer.add_scalar(scalar_tag(key), float(value), global_step=step)
  finally:
    writer.close()
  (path,) = directory.glob(EVENT_FILE_GLOB)
  return path


def record_stage(workdir: str | Path, stage: str, history: Sequence[Mapping], num_seeds: int = 1) -> Path | None:
  """Writes the stage's history.json and event file (see the module docstring); returns the folder, or None when
  nothing new was trained (a finished stage restored) or this process is not the writer."""
  if not history or not distributed.is_writer():
    return None
  directory = stage_dir(workdir, stage)
  earlier = read_history(workdir, stage)
  merged = merge_history(earlier["history"] if earlier else [], history)
  directory.mkdir(parents=True, exist_ok=True)
  record = {"stage": stage, "num_seeds": int(num_seeds), "history": merged}
  (directory / HISTORY_FILE).write_text(json.dumps(record, indent=1))
  write_events(directory, merged)
  return directory


def recorded_stages(workdir: str | Path) -> list[str]:
  """Stages with a recorded history under WORKDIR/tensorboard (sorted by name)."""
  root = Path(workdir) / TENSORBOARD_DIR
  return sorted(p.parent.name for p in root.glob(f"*/{HISTORY_FILE}")) if root.is_dir() else []


def write_curve_figures(workdir: str | Path, history_root: str | Path | None = None) -> dict[str, str]:
  """`plots/curves_<stage>.png` for every recorded stage of `history_root` (default `workdir`); caption -> path
  relative to `workdir`, for the report."""
  workdir = Path(workdir)
  history_root = workdir if history_root is None else Path(history_root)
  figures = {}
  for stage in recorded_stages(history_root):
    record = read_history(history_root, stage)
    seeds = int(record.get("num_seeds", 1))
    title = f"stage '{stage}'" + (f", mean of {seeds} seeds" if seeds > 1 else "")
    path = plots.plot_training_curves(record["history"], workdir / "plots" / f"curves_{stage}.png", title=title)
    figures[f"training curves: {stage}"] = str(path.relative_to(workdir))
  return figures
