"""The README's results tables.

  python benchmarks/results_table.py --robustness OUT/robustness_full.json [--configs "cvae.py;cvae.py:study;..."]
      the tables of the README's Results section, written from the robustness protocol's JSON
      (`python -m stargal_jax.robustness`): every design on every distribution, the Done-when check of one design,
      where the information is lost (the supervised ceilings), the real frames.
  python benchmarks/results_table.py [--seeds] RUN_DIR [RUN_DIR ...]
      one row per run directory (its metrics.json): label-free and best-sign AUC, accuracy, per-magnitude AUC, the
      classical baselines of the same run, wall time; `--seeds`: one row per seed study.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def fmt(x, digits=3):
  return "-" if x is None else f"{x:.{digits}f}"


def bins_text(values, digits=3):
  return " / ".join(fmt(v, digits) for v in values)


# ---------------------------------------------------------------------------------------- from the protocol

def _by_key(rows):
  return {(r["config"], r["distribution"]): r for r in rows}


def design_matrix(rows, configs, distributions) -> str:
  """Rows: designs; columns: distributions; cell: label-free AUC mean +- std (worst seed), bold where the mean
  beats the best classical index of the same run in every r bin; last row: that best index."""
  table = _by_key(rows)
  lines = ["| config | " + " | ".join(distributions) + " |", "|---" * (len(distributions) + 1) + "|"]
  for config in configs:
    cells = []
    for d in distributions:
      r = table.get((config, d))
      if r is None:
        cells.append("")
        continue
      text = f"{fmt(r['auc_mean'])}" + (f" +- {fmt(r['auc_std'])} ({fmt(r['auc_worst'])})" if r["seeds"] > 1 else "")
      cells.append(f"**{text}**" if r["beats_best_index_every_bin_mean"] else text)
    lines.append(f"| `{config}` | " + " | ".join(cells) + " |")
  best = []
  for d in distributions:
    r = next((table[(c, d)] for c in configs if (c, d) in table), None)
    best.append("" if r is None else f"{fmt(r['best_index_auc'])} ({r['best_index']})")
  lines.append("| best classical index | " + " | ".join(best) + " |")
  return "\n".join(lines)


def done_when(rows, config, distributions) -> str:
  """Per distribution: the design's AUC by r bin (mean; worst seed) against the best index in each bin, and its
  latents' supervised ceiling."""
  table = _by_key(rows)
  lines = ["| data | seeds | AUC by r bin: mean | worst seed | best index in each bin | beats it in every bin "
           "(mean / worst) | ceiling of the latents LR / GB | >= 0.95 |", "|---" * 8 + "|"]
  for d in distributions:
    r = table.get((config, d))
    if r is None:
      continue
    ceiling = max(r.get("ceiling_latents_logistic") or 0, r.get("ceiling_latents_boosting") or 0)
    lines.append(f"| {d} | {r['seeds']} | {bins_text(r['by_mag_mean'])} | {bins_text(r['by_mag_worst'])} | "
                 f"{bins_text(r['best_index_per_bin_auc'])} | {'yes' if r['beats_best_index_every_bin_mean'] else 'no'}"
                 f" / {'yes' if r['beats_best_index_every_bin_worst_seed'] else 'no'} | "
                 f"{fmt(r.get('ceiling_latents_logistic'))} / {fmt(r.get('ceiling_latents_boosting'))} | "
                 f"{'yes' if ceiling >= 0.95 else 'no'} |")
  return "\n".join(lines)


def ceilings(rows, configs, distributions) -> str:
  """Where the morphology is lost: per design and distribution, the supervised ceilings (logistic / boosting) of
  the stage-1 codes and of the latents, beside the classical indices with r."""
  table = _by_key(rows)
  lines = ["| config | data | stage-1 codes LR / GB | latents LR / GB | latents GB by r bin | indices + r GB |",
           "|---" * 6 + "|"]
  for config in configs:
    for d in distributions:
      r = table.get((config, d))
      if r is None:
        continue
      codes = (f"{fmt(r.get('ceiling_codes_logistic'))} / {fmt(r.get('ceiling_codes_boosting'))}"
               if "ceiling_codes_logistic" in r else "")
      lines.append(f"| `{config}` | {d} | {codes} | {fmt(r.get('ceiling_latents_logistic'))} / "
                   f"{fmt(r.get('ceiling_latents_boosting'))} | {bins_text(r.get('ceiling_latents_boosting_by_mag', []))} | "
                   f"{fmt(r.get('ceiling_indices_boosting'))} |")
  return "\n".join(lines)


def real_frames(rows) -> str:
  lines = ["| config | seeds | n | Spearman with psf-cModel: all / by r | agrees with SDSS's cut (matched fraction) | "
           "KS real vs sim: score | KS real vs sim: psf-cModel |", "|---" * 7 + "|"]
  for r in rows:
    lines.append(f"| `{r['config']}` | {r['seeds']} | {r['n_real']} | {bins_text(r['spearman_sdss'], 2)} | "
                 f"{bins_text(r['agree_matched'], 2)} | {bins_text(r.get('ks_score', []), 2)} | "
                 f"{bins_text(r.get('ks_sdss_index', []), 2)} |")
  return "\n".join(lines)


def robustness_tables(path: Path, configs=None, done_config="cvae.py") -> str:
  rows = json.loads(Path(path).read_text())
  simulated = rows["simulated"]
  configs = configs or list(dict.fromkeys(r["config"] for r in simulated))
  distributions = list(dict.fromkeys(r["distribution"] for r in simulated))
  parts = ["Label-free AUC, every design on every distribution:", "", design_matrix(simulated, configs, distributions),
           "", f"`{done_config}` against the Done-when target:", "", done_when(simulated, done_config, distributions),
           "", "Where the information is lost (supervised ceilings):", "", ceilings(simulated, configs, distributions)]
  if rows["real"]:
    parts += ["", "Real SDSS frames (no labels):", "", real_frames(rows["real"])]
  return "\n".join(parts)


# ---------------------------------------------------------------------------------------- from run directories

def mean_std(m: dict, key: str) -> str:
  return f"{fmt(m[key + '_mean'])} +- {fmt(m[key + '_std'])}"


def mean_auc_by_mag(m: dict) -> str:
  """Label-free AUC per r-magnitude bin, averaged over a study's seeds (a bin without both classes is skipped)."""
  per_seed = np.array([[np.nan if b["auc"] is None else b["auc"] for b in seed] for seed in m["by_mag_per_seed"]])
  return " / ".join(fmt(float(v)) for v in np.nanmean(per_seed, axis=0))


def best_baseline(m: dict) -> str:
  name, best = max(m["baselines"].items(), key=lambda item: item[1]["auc"])
  return f"{name} {fmt(best['auc'])} ({' / '.join(fmt(b['auc']) for b in best['by_mag'])})"


def row(m: dict, config: dict, name: str) -> str:
  if m.get("num_seeds", 1) > 1:
    auc = f"{mean_std(m, 'auc')} ({m['num_seeds']} seeds, {fmt(m['auc_min'])}-{fmt(m['auc_max'])})"
    best, accuracy = mean_std(m, "auc_best_sign"), mean_std(m, "accuracy")
    bins = "mean: " + mean_auc_by_mag(m)
  else:
    auc, best, accuracy = fmt(m["auc"]), fmt(m["auc_best_sign"]), fmt(m["accuracy"])
    bins = " / ".join(fmt(b["auc"]) for b in m["by_mag"])
  return (f"| {name} | {config['pipeline']} | {auc} | {best} | {accuracy} | {bins} | {best_baseline(m)} | "
          f"{fmt(m.get('supervised_ceiling', {}).get('auc'))} | {m['wall_seconds']:.0f} |")


def seed_row(m: dict, config: dict, name: str) -> str:
  return (f"| {name} | {m['num_seeds']} | {mean_std(m, 'auc')} ({fmt(m['auc_min'])}-{fmt(m['auc_max'])}) | "
          f"{mean_std(m, 'auc_best_sign')} | {mean_std(m, 'accuracy')} | {mean_auc_by_mag(m)} | "
          f"{fmt(m['seed_agreement_ari'], 2)} | {fmt(m['consensus']['auc'])} | "
          f"{fmt(m.get('supervised_ceiling', {}).get('auc'))} |")


TABLES = {
    "runs": (row, "| run | pipeline | AUC label-free | AUC best sign | accuracy | AUC by r: <19 / 19-21 / >=21 | "
                  "best classical index AUC (by r) | supervised ceiling AUC | wall s |"),
    "seeds": (seed_row, "| run | seeds | AUC label-free: mean +- std (min-max) | AUC best sign | accuracy | "
                        "AUC by r: <19 / 19-21 / >=21 (mean over seeds) | seed agreement (ARI) | consensus AUC | "
                        "supervised ceiling (seed 0) |"),
}


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--robustness", help="the protocol's robustness_<size>.json")
  parser.add_argument("--configs", help="semicolon-separated configs, in this order (default: as in the JSON)")
  parser.add_argument("--done-config", default="cvae.py")
  parser.add_argument("--seeds", action="store_true")
  parser.add_argument("run_dirs", nargs="*")
  args = parser.parse_args(argv[1:])
  if args.robustness:
    configs = args.configs.split(";") if args.configs else None
    print(robustness_tables(Path(args.robustness), configs, args.done_config))
    return
  make_row, header = TABLES["seeds" if args.seeds else "runs"]
  print(header)
  print("|---" * header.count(" | ") + "|---|")
  for d in map(Path, args.run_dirs):
    if (d / "metrics.json").is_file():
      print(make_row(json.loads((d / "metrics.json").read_text()), json.loads((d / "config.json").read_text()), d.name))


if __name__ == "__main__":
  main(sys.argv)
