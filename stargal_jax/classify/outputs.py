"""A classification run's outputs, written once (one seed or a seed study): `metrics.json` (headline numbers at
top level), `predictions.npz`, `latents.npz`, `plots/`, `report.md`.

A seed study (S > 1) writes seed 0's full numbers, figures and per-magnitude tables, plus every seed's numbers
and their summary, predictions with a leading seed axis, every seed's latents (a new scoring rule can be
studied without retraining) and the per-seed distribution figure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stargal_jax import metrics, plots, report
from stargal_jax.classify import evaluate
from stargal_jax.data.formats import CLASS_CODES

HEADLINE = ("auc", "auc_best_sign", "accuracy", "galaxy_purity_at_96_completeness", "star_completeness_at_97_purity")


def run_metrics(evaluation: dict, extra_metrics: dict) -> dict:
  """One seed's metrics.json content: the headline numbers, then every table."""
  method = evaluation["method"]
  out = {**{k: method[k] for k in HEADLINE}, "by_mag": method["by_mag"],
         "orientation_sign": evaluation["orientation_sign"], "method": method,
         "baselines": evaluation["baselines"], **extra_metrics}
  if "supervised_ceiling" in evaluation:
    out["supervised_ceiling"] = evaluation["supervised_ceiling"]
  return out


def report_rows(out: dict) -> dict:
  """The report's rows: the method, each classical baseline, the supervised ceiling and CNN reference."""
  rows = {"unsupervised method": dict(out["method"], kind="method")}
  rows.update({f"baseline: {k}": dict(v, kind="baseline") for k, v in out["baselines"].items()})
  if "supervised_ceiling" in out:
    rows["supervised ceiling (logistic regression on latents, CV)"] = dict(out["supervised_ceiling"], kind="ceiling")
  if "supervised_cnn" in out:
    rows["supervised CNN reference (trained on the labels, k-fold CV)"] = dict(out["supervised_cnn"], kind="ceiling")
  return rows


def write_plots(workdir: Path, evaluation: dict, latents: np.ndarray, labels: np.ndarray,
                measurements: dict) -> dict[str, str]:
  """ROC, latents, score histograms and AUC by magnitude of one seed; caption -> path relative to workdir."""
  plot_dir = workdir / "plots"
  plot_dir.mkdir(exist_ok=True)
  is_galaxy = labels == CLASS_CODES["GALAXY"]
  curves = {"unsupervised method": (is_galaxy, evaluation["score"])}
  curves.update({f"baseline: {k}": (is_galaxy, measurements[f"baseline_{k}"]) for k in evaluation["baselines"]})
  paths = {"roc": plots.plot_roc(curves, plot_dir / "roc.png")}
  latents2d = latents[:, :2] if latents.shape[1] >= 2 else np.c_[latents[:, 0], measurements["extendedness"]]
  paths["latents"] = plots.plot_latents(latents2d, labels, plot_dir / "latents.png")
  paths["score_histograms"] = plots.plot_score_histograms(evaluation["score"], labels, evaluation["threshold"],
                                                          plot_dir / "score_histograms.png")
  by_mag = {"unsupervised method": evaluation["method"]["by_mag"]}
  by_mag.update({f"baseline: {k}": v["by_mag"] for k, v in evaluation["baselines"].items()})
  paths["auc_vs_mag"] = plots.plot_auc_vs_mag(by_mag, plot_dir / "auc_vs_mag.png")
  return {k: str(Path(v).relative_to(workdir)) for k, v in paths.items()}


def write_outputs(workdir: Path, evaluations: list[dict], latents_per_seed: np.ndarray, labelled_store,
                  measurements: dict, star_fraction: float, mag_bins, extra_metrics: dict, config_text: str,
                  make_plots: bool = True) -> dict:
  """Writes every output of a run of S = len(evaluations) seeds once; returns the metrics written."""
  workdir = Path(workdir)
  labels = np.asarray(labelled_store.index["label"])
  object_ids = np.asarray(labelled_store.index["objID"])
  num_seeds = len(evaluations)
  first = run_metrics(evaluations[0], extra_metrics)
  out, rows = dict(first), report_rows(first)
  latent_arrays = {"latents": latents_per_seed[0]}
  if num_seeds > 1:
    study, over_seeds = evaluate.seed_study(evaluations, labelled_store, measurements, star_fraction, mag_bins)
    out.update(study)
    rows["unsupervised method"] = dict(rows["unsupervised method"], over_seeds=over_seeds)
    rows[f"consensus of {num_seeds} seeds (mean rank)"] = dict(study["consensus"], kind="method")
    latent_arrays["latents_per_seed"] = np.asarray(latents_per_seed, dtype=np.float32)
  (workdir / "metrics.json").write_text(json.dumps(metrics.to_json_safe(out), indent=2))
  stack = (lambda key: np.stack([e[key] for e in evaluations])) if num_seeds > 1 else (lambda key: evaluations[0][key])
  np.savez(workdir / "predictions.npz", objID=object_ids, score=stack("score").astype(np.float32),
           pred=stack("pred").astype(np.int8))
  np.savez(workdir / "latents.npz", objID=object_ids, **latent_arrays, label=labels, r_mag=measurements["r_mag"])
  plot_paths: dict[str, str] = {}
  if make_plots:
    plot_paths = write_plots(workdir, evaluations[0], latents_per_seed[0], labels, measurements)
    if num_seeds > 1:
      plots.plot_seed_distribution({"AUC (label-free)": out["auc_per_seed"],
                                    "AUC best sign": out["auc_best_sign_per_seed"]},
                                   workdir / "plots" / "seed_distribution.png")
      plot_paths["per-seed AUC"] = "plots/seed_distribution.png"
  title = f"stargal_jax: {first.get('pipeline', 'evaluation')}"
  if num_seeds > 1:
    title += f", {num_seeds} seeds (plots and per-magnitude tables: seed 0)"
  report.write_report(workdir, metrics.to_json_safe(rows), plot_paths, config_text, title=title)
  return out
