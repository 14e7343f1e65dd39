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


def row(run_dir: Path) -> str:
  m = json.loads((run_dir / "metrics.json").read_text())
  config = json.loads((run_dir / "config.json").read_text())
  if m.get("num_seeds", 1) > 1:
    auc = (f"{fmt(m['auc_mean'])} +- {fmt(m['auc_std'])} ({m['num_seeds']} seeds, "
           f"{fmt(m['auc_min'])}-{fmt(m['auc_max'])})")
    best = f"{fmt(m['auc_best_sign_mean'])} +- {fmt(m['auc_best_sign_std'])}"
    accuracy = f"{fmt(m['accuracy_mean'])} +- {fmt(m['accuracy_std'])}"
    per_seed = np.array([[np.nan if b["auc"] is None else b["auc"] for b in seed] for seed in m["by_mag_per_seed"]])
    bins = "mean: " + " / ".join(fmt(float(v)) for v in np.nanmean(per_seed, axis=0))
  else:
    auc, best, accuracy = fmt(m["auc"]), fmt(m["auc_best_sign"]), fmt(m["accuracy"])
    bins = " / ".join(fmt(b["auc"]) for b in m["by_mag"])
  base = m["baselines"]
  base_bins = " / ".join(fmt(b["auc"]) for b in base["concentration"]["by_mag"])
  return (f"| {run_dir.name} | {config['pipeline']} | {auc} | {best} | {accuracy} | {bins} | "
          f"{fmt(base['concentration']['auc'])} ({base_bins}) | {fmt(base['psf_minus_extended']['auc'])} | "
          f"{fmt(m.get('supervised_ceiling', {}).get('auc'))} | {m['wall_seconds']:.0f} |")


def seed_row(run_dir: Path) -> str:
  m = json.loads((run_dir / "metrics.json").read_text())
  per_seed = np.array([[np.nan if b["auc"] is None else b["auc"] for b in seed] for seed in m["by_mag_per_seed"]])
  bins = " / ".join(fmt(float(v)) for v in np.nanmean(per_seed, axis=0))
  return (f"| {run_dir.name} | {m['num_seeds']} | {fmt(m['auc_mean'])} +- {fmt(m['auc_std'])} "
          f"({fmt(m['auc_min'])}-{fmt(m['auc_max'])}) | {fmt(m['auc_best_sign_mean'])} +- "
          f"{fmt(m['auc_best_sign_std'])} | {fmt(m['accuracy_mean'])} +- {fmt(m['accuracy_std'])} | {bins} | "
          f"{fmt(m['seed_agreement_ari'], 2)} | {fmt(m['consensus']['auc'])} | "
          f"{fmt(m.get('supervised_ceiling', {}).get('auc'))} |")


def main(argv):
  if argv[1:2] == ["--seeds"]:
    print("| run | seeds | AUC label-free: mean +- std (min-max) | AUC best sign | accuracy | AUC by r: <19 / 19-21 / "
          ">=21 (mean over seeds) | seed agreement (ARI) | consensus AUC | supervised ceiling (seed 0) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in argv[2:]:
      if (Path(d) / "metrics.json").is_file():
        print(seed_row(Path(d)))
    return
  print("| run | pipeline | AUC label-free | AUC best sign | accuracy | AUC by r: <19 / 19-21 / >=21 | "
        "baseline concentration AUC (by r) | baseline PSF-vs-extended AUC | supervised ceiling AUC | wall s |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for d in argv[1:]:
    if (Path(d) / "metrics.json").is_file():
      print(row(Path(d)))


if __name__ == "__main__":
  main(sys.argv)
