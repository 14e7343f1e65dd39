"""Markdown results table from run directories: `python benchmarks/results_table.py [--seeds] RUN_DIR [RUN_DIR ...]`.

One row per run (its `metrics.json`): label-free and best-sign AUC (for a seed study: mean +- std over the
seeds, their number and range), accuracy, per-magnitude label-free AUC (a study: the mean over seeds), the
classical baselines of the same run, and the wall time. `--seeds`: the seed-study table of the README (one row
per study: number of seeds, AUC mean +- std and range, best sign, accuracy, per-magnitude means, the agreement
between seeds, the consensus, seed 0's supervised ceiling).
"""

import json
import sys
from pathlib import Path

import numpy as np


def fmt(x, digits=3):
  return "n/a" if x is None else f"{x:.{digits}f}"


def mean_std(m: dict, key: str) -> str:
  return f"{fmt(m[key + '_mean'])} +- {fmt(m[key + '_std'])}"


def mean_auc_by_mag(m: dict) -> str:
  """Label-free AUC per r-magnitude bin, averaged over a study's seeds (a bin without both classes is skipped)."""
  per_seed = np.array([[np.nan if b["auc"] is None else b["auc"] for b in seed] for seed in m["by_mag_per_seed"]])
  return " / ".join(fmt(float(v)) for v in np.nanmean(per_seed, axis=0))


def row(m: dict, config: dict, name: str) -> str:
  if m.get("num_seeds", 1) > 1:
    auc = f"{mean_std(m, 'auc')} ({m['num_seeds']} seeds, {fmt(m['auc_min'])}-{fmt(m['auc_max'])})"
    best, accuracy = mean_std(m, "auc_best_sign"), mean_std(m, "accuracy")
    bins = "mean: " + mean_auc_by_mag(m)
  else:
    auc, best, accuracy = fmt(m["auc"]), fmt(m["auc_best_sign"]), fmt(m["accuracy"])
    bins = " / ".join(fmt(b["auc"]) for b in m["by_mag"])
  base = m["baselines"]
  base_bins = " / ".join(fmt(b["auc"]) for b in base["concentration"]["by_mag"])
  return (f"| {name} | {config['pipeline']} | {auc} | {best} | {accuracy} | {bins} | "
          f"{fmt(base['concentration']['auc'])} ({base_bins}) | {fmt(base['psf_minus_extended']['auc'])} | "
          f"{fmt(m.get('supervised_ceiling', {}).get('auc'))} | {m['wall_seconds']:.0f} |")


def seed_row(m: dict, config: dict, name: str) -> str:
  return (f"| {name} | {m['num_seeds']} | {mean_std(m, 'auc')} ({fmt(m['auc_min'])}-{fmt(m['auc_max'])}) | "
          f"{mean_std(m, 'auc_best_sign')} | {mean_std(m, 'accuracy')} | {mean_auc_by_mag(m)} | "
          f"{fmt(m['seed_agreement_ari'], 2)} | {fmt(m['consensus']['auc'])} | "
          f"{fmt(m.get('supervised_ceiling', {}).get('auc'))} |")


TABLES = {
    "runs": (row, "| run | pipeline | AUC label-free | AUC best sign | accuracy | AUC by r: <19 / 19-21 / >=21 | "
                  "baseline concentration AUC (by r) | baseline PSF-vs-extended AUC | supervised ceiling AUC | wall s |"),
    "seeds": (seed_row, "| run | seeds | AUC label-free: mean +- std (min-max) | AUC best sign | accuracy | "
                        "AUC by r: <19 / 19-21 / >=21 (mean over seeds) | seed agreement (ARI) | consensus AUC | "
                        "supervised ceiling (seed 0) |"),
}


def main(argv):
  table, run_dirs = ("seeds", argv[2:]) if argv[1:2] == ["--seeds"] else ("runs", argv[1:])
  make_row, header = TABLES[table]
  print(header)
  print("|---" * header.count(" | ") + "|---|")
  for d in map(Path, run_dirs):
    if (d / "metrics.json").is_file():
      print(make_row(json.loads((d / "metrics.json").read_text()), json.loads((d / "config.json").read_text()), d.name))


if __name__ == "__main__":
  main(sys.argv)
