"""The protocol's tables: finished cells -> one row of numbers each (JSON) -> markdown written from those numbers.

Simulated cells: the label-free AUC overall and per r bin (one seed, or the mean, std and worst seed of a study),
the best classical label-free index of the same run (by overall AUC) with its per-bin AUCs, the best index in
each bin (the bar the Done-when target sets), whether the design beats it in every bin (the mean and the worst
seed), the supervised ceilings (latents, stage-1 codes, the indices with r), and the wall time. Real cells:
agreement with the indices and the two-sample check per bin (`real`). Every number in the markdown is read from
the row it is written from, so the table and the JSON cannot disagree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from stargal_jax import metrics as metrics_lib


def _auc(entry) -> float:
  value = entry.get("auc") if isinstance(entry, dict) else entry
  return math.nan if value is None else float(value)


def _per_seed_bins(metrics: dict) -> np.ndarray:
  """(S, bins) label-free AUC per seed and r bin."""
  per_seed = metrics.get("by_mag_per_seed") or [metrics["by_mag"]]
  return np.array([[_auc(b) for b in seed] for seed in per_seed])


def simulated_row(cell: dict) -> dict:
  """The numbers of one simulated cell (see the module docstring)."""
  spec, m, ceilings = cell["spec"], cell["metrics"], cell.get("ceilings", {})
  aucs = np.array(m.get("auc_per_seed") or [m["auc"]], dtype=np.float64)
  bins = _per_seed_bins(m)
  labels = [b["label"] for b in m["by_mag"]]
  baselines = {name: {"auc": _auc(v), "by_mag": [_auc(b) for b in v["by_mag"]]} for name, v in m["baselines"].items()}
  best = max(baselines, key=lambda name: baselines[name]["auc"])
  per_bin_best = [max(baselines, key=lambda name, i=i: np.nan_to_num(baselines[name]["by_mag"][i], nan=-1))
                  for i in range(len(labels))]
  per_bin_best_auc = [baselines[name]["by_mag"][i] for i, name in enumerate(per_bin_best)]
  mean_bins, worst_bins = np.nanmean(bins, axis=0), np.nanmin(bins, axis=0)
  row = {
      "config": spec["config"], "distribution": spec["distribution"], "size": spec["size"],
      "seeds": int(len(aucs)), "pipeline": cell.get("pipeline"), "bins": labels,
      "auc_mean": float(aucs.mean()), "auc_std": float(aucs.std(ddof=1)) if len(aucs) > 1 else 0.0,
      "auc_worst": float(aucs.min()), "by_mag_mean": mean_bins.tolist(), "by_mag_worst": worst_bins.tolist(),
      "best_index": best, "best_index_auc": baselines[best]["auc"], "best_index_by_mag": baselines[best]["by_mag"],
      "best_index_per_bin": per_bin_best, "best_index_per_bin_auc": per_bin_best_auc,
      "beats_best_index_every_bin_mean": bool(np.all(mean_bins > np.asarray(per_bin_best_auc))),
      "beats_best_index_every_bin_worst_seed": bool(np.all(worst_bins > np.asarray(per_bin_best_auc))),
      "wall_seconds": float(cell.get("wall_seconds", math.nan)),
      "stage1_shared_from": cell.get("stage1_shared_from"),
  }
  latents = ceilings.get("latents", {})
  for model in ("logistic", "boosting"):
    if model in latents:
      row[f"ceiling_latents_{model}"] = latents[model]["auc_mean"]
      row[f"ceiling_latents_{model}_worst"] = latents[model]["auc_min"]
      row[f"ceiling_latents_{model}_by_mag"] = [_auc(b) for b in latents[model]["per_seed"][0].get("by_mag", [])]
    for source, key in (("stage1_codes", "codes"), ("indices", "indices")):
      if model in ceilings.get(source, {}):
        row[f"ceiling_{key}_{model}"] = _auc(ceilings[source][model])
        row[f"ceiling_{key}_{model}_by_mag"] = [_auc(b) for b in ceilings[source][model].get("by_mag", [])]
  if "supervised_cnn" in m:  # the supervised reference on the images, where the run computes one
    row["supervised_cnn"] = _auc(m["supervised_cnn"])
  return row


def real_row(cell: dict) -> dict:
  """The numbers of one real-frame cell: seed 0's agreement per bin (and the seeds' spread of rho), the KS checks."""
  spec = cell["spec"]
  per_seed = cell["agreement_per_seed"]
  first = per_seed[0]
  row = {"config": spec["config"], "distribution": spec["distribution"], "size": spec["size"],
         "seeds": len(per_seed), "n_real": cell["n_real"], "bins": [b["label"] for b in first],
         "wall_seconds": float(cell.get("wall_seconds", math.nan))}
  for key in ("spearman_sdss", "spearman_concentration", "agree_prior", "agree_matched"):
    values = np.array([[b.get(key, math.nan) for b in seed] for seed in per_seed], dtype=np.float64)
    row[key] = np.nanmean(values, axis=0).tolist()
  if "two_sample" in cell:
    row["ks_score"] = [b.get("ks_score", math.nan) for b in cell["two_sample"]]
    row["ks_sdss_index"] = [b.get("ks_sdss_index", math.nan) for b in cell["two_sample"]]
  return row


def fmt(value, digits: int = 3) -> str:
  return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _bins_text(values, digits: int = 3) -> str:
  return " / ".join(fmt(v, digits) for v in values)


SIMULATED_HEADER = ("| config | data | seeds | AUC label-free (mean +- std, worst) | by r bin: mean | by r bin: worst seed | "
                    "best classical index (AUC) | its AUC by r bin | best index in each bin | beats it in every bin "
                    "(mean / worst) | ceiling latents LR / GB | ceiling stage-1 codes LR / GB | ceiling indices+r GB | "
                    "wall s |")
REAL_HEADER = ("| config | seeds | n | Spearman with psf-cModel (all / by r) | Spearman with concentration | "
               "agrees with SDSS cut, prior threshold | agrees, matched fraction | KS score real vs sim | "
               "KS psf-cModel real vs sim | wall s |")


def simulated_line(row: dict) -> str:
  pair = lambda key: f"{fmt(row.get(key + '_logistic'))} / {fmt(row.get(key + '_boosting'))}"
  return (f"| `{row['config']}` | {row['distribution']} | {row['seeds']} | {fmt(row['auc_mean'])} +- "
          f"{fmt(row['auc_std'])} ({fmt(row['auc_worst'])}) | {_bins_text(row['by_mag_mean'])} | "
          f"{_bins_text(row['by_mag_worst'])} | {row['best_index']} ({fmt(row['best_index_auc'])}) | "
          f"{_bins_text(row['best_index_by_mag'])} | {_bins_text(row['best_index_per_bin_auc'])} | "
          f"{'yes' if row['beats_best_index_every_bin_mean'] else 'no'} / "
          f"{'yes' if row['beats_best_index_every_bin_worst_seed'] else 'no'} | {pair('ceiling_latents')} | "
          f"{pair('ceiling_codes')} | {fmt(row.get('ceiling_indices_boosting'))} | {fmt(row['wall_seconds'], 0)} |")


def real_line(row: dict) -> str:
  return (f"| `{row['config']}` | {row['seeds']} | {row['n_real']} | {_bins_text(row['spearman_sdss'], 2)} | "
          f"{_bins_text(row['spearman_concentration'], 2)} | {_bins_text(row['agree_prior'], 2)} | "
          f"{_bins_text(row['agree_matched'], 2)} | {_bins_text(row.get('ks_score', []), 2)} | "
          f"{_bins_text(row.get('ks_sdss_index', []), 2)} | {fmt(row['wall_seconds'], 0)} |")


def markdown(simulated: list[dict], real: list[dict]) -> str:
  parts = []
  if simulated:
    bins = " / ".join(simulated[0]["bins"])
    parts += [f"Label-free AUC on simulated data (r bins: {bins}); galaxies are the positive class.", "",
              SIMULATED_HEADER, "|---" * SIMULATED_HEADER.count(" | ") + "|---|",
              *map(simulated_line, simulated), ""]
  if real:
    bins = " / ".join(real[0]["bins"])
    parts += [f"Real SDSS frames, no labels (bins: {bins}).", "", REAL_HEADER,
              "|---" * REAL_HEADER.count(" | ") + "|---|", *map(real_line, real), ""]
  return "\n".join(parts)


def write_tables(out: Path, cells: list[dict], stem: str) -> tuple[Path, Path]:
  """OUT/<stem>.json (the rows) and OUT/<stem>.md (the tables written from them)."""
  simulated = [simulated_row(c) for c in cells if "metrics" in c]
  real = [real_row(c) for c in cells if "agreement_per_seed" in c]
  out = Path(out)
  json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
  json_path.write_text(json.dumps(metrics_lib.to_json_safe({"simulated": simulated, "real": real}), indent=1))
  md_path.write_text(markdown(simulated, real))
  return md_path, json_path
