"""Latents -> 1-D score -> label-free orientation -> metrics beside the classical baselines and a supervised
ceiling -> `metrics.json`, `predictions.npz`, `latents.npz`, `plots/`, `report.md`.

Labels are read here and only here, after training, to score what the unsupervised method produced.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stargal_jax import manifold, metrics, morphology, plots, report
from stargal_jax.data.formats import CLASS_CODES

EMBEDDING_METHODS = ("isomap", "tsne", "spectral", "pca")
CLUSTER_METHODS = ("gmm", "kmeans")


def score_from_latents(latents: np.ndarray, score_config, seed: int, measurements: dict) -> np.ndarray:
  """The 1-D score: one latent unit's mean (the study's rule), a manifold embedding to 1-D, a 2-cluster
  posterior, or the latent direction uncorrelated with the r magnitude measured on the images (label-free;
  `measurements` from `image_measurements`)."""
  method = score_config.method
  if method == "latent_unit":
    return np.asarray(latents[:, score_config.unit], dtype=np.float64)
  if method == "uncorrelated_with_magnitude":
    return manifold.uncorrelated_with(latents, measurements["r_mag"], seed=seed)
  if method in EMBEDDING_METHODS:
    return manifold.embed_1d(latents, method=method, n_neighbors=score_config.n_neighbors,
                             fit_size=score_config.fit_size, seed=seed)
  if method in CLUSTER_METHODS:
    return manifold.cluster_2(latents, method=method, seed=seed)[1]
  raise ValueError(f"Unknown score method {method!r}; valid: "
                   f"{['latent_unit', 'uncorrelated_with_magnitude', *EMBEDDING_METHODS, *CLUSTER_METHODS]}")


def image_measurements(store, chunk: int = 2048) -> dict[str, np.ndarray]:
  """Label-free measurements on the raw images (r magnitude, extendedness, classical baseline scores), chunked
  so that a full-size store is never read into memory at once."""
  parts: dict[str, list[np.ndarray]] = {}
  for start in range(0, len(store), chunk):
    images = store.read(np.arange(start, min(start + chunk, len(store))))
    values = {"r_mag": morphology.r_magnitude(images), "extendedness": morphology.extendedness(images)}
    values.update({f"baseline_{k}": v for k, v in morphology.classical_baseline_scores(images).items()})
    for k, v in values.items():
      parts.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
  return {k: np.concatenate(v) for k, v in parts.items()}


def evaluate(latents: np.ndarray, raw_score: np.ndarray, labelled_store, measurements: dict, star_fraction: float,
             mag_bins, seed: int, supervised_ceiling: bool = True) -> dict:
  labels = np.asarray(labelled_store.index["label"])
  is_galaxy = labels == CLASS_CODES["GALAXY"]
  score, sign = metrics.orient_score(raw_score, measurements["extendedness"])
  result = {"method": metrics.classification_metrics(is_galaxy, score, star_fraction, measurements["r_mag"],
                                                       mag_bins),
            "orientation_sign": int(sign)}
  result["baselines"] = {
      name[len("baseline_"):]: metrics.classification_metrics(is_galaxy, values, star_fraction,
                                                               measurements["r_mag"], mag_bins)
      for name, values in measurements.items() if name.startswith("baseline_")}
  if supervised_ceiling:
    result["supervised_ceiling"] = manifold.supervised_ceiling(latents, is_galaxy, seed=seed)
  result["score"] = score
  result["pred"] = metrics.prior_threshold_predictions(score, star_fraction)
  result["threshold"] = float(np.quantile(score, star_fraction))
  return result


def write_outputs(workdir: Path, evaluation: dict, latents: np.ndarray, labelled_store, measurements: dict,
                  extra_metrics: dict, config_text: str, make_plots: bool = True) -> dict:
  """Writes metrics.json (headline numbers at top level), predictions.npz, latents.npz, plots/, report.md."""
  workdir = Path(workdir)
  labels = np.asarray(labelled_store.index["label"])
  is_galaxy = labels == CLASS_CODES["GALAXY"]
  method = evaluation["method"]
  headline = {k: method[k] for k in ("auc", "auc_best_sign", "accuracy", "galaxy_purity_at_96_completeness",
                                     "star_completeness_at_97_purity")}
  out = {**headline, "by_mag": method["by_mag"], "orientation_sign": evaluation["orientation_sign"],
         "method": method, "baselines": evaluation["baselines"], **extra_metrics}
  if "supervised_ceiling" in evaluation:
    out["supervised_ceiling"] = evaluation["supervised_ceiling"]
  (workdir / "metrics.json").write_text(json.dumps(metrics.to_json_safe(out), indent=2))
  np.savez(workdir / "predictions.npz", objID=np.asarray(labelled_store.index["objID"]),
           score=evaluation["score"].astype(np.float32), pred=evaluation["pred"].astype(np.int8))
  np.savez(workdir / "latents.npz", objID=np.asarray(labelled_store.index["objID"]), latents=latents,
           label=labels, r_mag=measurements["r_mag"])
  plot_paths: dict[str, str] = {}
  if make_plots:
    plot_dir = workdir / "plots"
    plot_dir.mkdir(exist_ok=True)
    curves = {"unsupervised method": (is_galaxy, evaluation["score"])}
    curves.update({f"baseline: {k}": (is_galaxy, measurements[f"baseline_{k}"]) for k in evaluation["baselines"]})
    plot_paths["roc"] = plots.plot_roc(curves, plot_dir / "roc.png")
    latents2d = latents[:, :2] if latents.shape[1] >= 2 else np.c_[latents[:, 0], measurements["extendedness"]]
    plot_paths["latents"] = plots.plot_latents(latents2d, labels, plot_dir / "latents.png")
    threshold = evaluation["threshold"]
    plot_paths["score_histograms"] = plots.plot_score_histograms(evaluation["score"], labels, threshold,
                                                                 plot_dir / "score_histograms.png")
    by_mag = {"unsupervised method": method["by_mag"]}
    by_mag.update({f"baseline: {k}": v["by_mag"] for k, v in evaluation["baselines"].items()})
    plot_paths["auc_vs_mag"] = plots.plot_auc_vs_mag(by_mag, plot_dir / "auc_vs_mag.png")
    plot_paths = {k: str(Path(v).relative_to(workdir)) for k, v in plot_paths.items()}
  report.write_report(workdir, metrics.to_json_safe(report_rows(out)), plot_paths, config_text,
                      title=f"stargal_jax: {out.get('pipeline', 'evaluation')}")
  return dict(out, plots=plot_paths)


SEED_QUANTITIES = ("auc", "auc_best_sign", "accuracy", "galaxy_purity_at_96_completeness",
                   "star_completeness_at_97_purity")


def consensus_metrics(evaluations: list[dict], is_galaxy, star_fraction: float, r_mag, mag_bins) -> dict:
  """The study's consensus: every seed's label-free oriented score turned into ranks and averaged, then scored
  like one run. Answers "what does the whole study say", beside the per-seed spread."""
  ranks = np.mean([np.argsort(np.argsort(e["score"])) / (len(e["score"]) - 1) for e in evaluations], axis=0)
  return metrics.classification_metrics(is_galaxy, ranks, star_fraction, r_mag, mag_bins)


def write_seed_study(workdir: Path, first: dict, evaluations: list[dict], latents_per_seed: np.ndarray,
                     labelled_store, measurements: dict, star_fraction: float, mag_bins, config_text: str,
                     make_plots: bool = True) -> dict:
  """A stability study's outputs: seed 0's full outputs (already written by write_outputs, `first`) plus every
  seed's numbers and latents, their summary (mean, std, min, max, 95% t-interval), the agreement between seeds'
  labelings (mean pairwise adjusted Rand index), predictions with a seed axis, and the per-seed distribution plot."""
  workdir = Path(workdir)
  study = {k: v for k, v in first.items() if k != "plots"}
  over_seeds = {}
  for q in SEED_QUANTITIES:
    values = [e["method"][q] for e in evaluations]
    summary = metrics.summarize_over_seeds(values)
    over_seeds[q] = summary
    study[f"{q}_per_seed"] = values
    study.update({f"{q}_{k}": summary[k] for k in ("mean", "std", "min", "max")})
    study[f"{q}_ci95"] = [summary["ci95_low"], summary["ci95_high"]]
  study.update({q: over_seeds[q]["mean"] for q in ("auc", "auc_best_sign", "accuracy")})
  study["num_seeds"] = len(evaluations)
  study["seed_agreement_ari"] = metrics.seed_agreement([e["pred"] for e in evaluations])
  study["by_mag_per_seed"] = [e["method"]["by_mag"] for e in evaluations]
  is_galaxy = np.asarray(labelled_store.index["label"]) == CLASS_CODES["GALAXY"]
  study["consensus"] = consensus_metrics(evaluations, is_galaxy, star_fraction, measurements["r_mag"], mag_bins)
  (workdir / "metrics.json").write_text(json.dumps(metrics.to_json_safe(study), indent=2))
  np.savez(workdir / "predictions.npz", objID=np.asarray(labelled_store.index["objID"]),
           score=np.stack([e["score"] for e in evaluations]).astype(np.float32),
           pred=np.stack([e["pred"] for e in evaluations]).astype(np.int8))
  # Every seed's latents, so a new scoring rule can be studied without retraining.
  np.savez(workdir / "latents.npz", objID=np.asarray(labelled_store.index["objID"]), latents=latents_per_seed[0],
           latents_per_seed=np.asarray(latents_per_seed, dtype=np.float32), label=labelled_store.index["label"],
           r_mag=measurements["r_mag"])
  plot_paths = dict(first.get("plots", {}))
  if make_plots:
    plots.plot_seed_distribution({"AUC (label-free)": study["auc_per_seed"],
                                  "AUC best sign": study["auc_best_sign_per_seed"]},
                                 workdir / "plots" / "seed_distribution.png")
    plot_paths["per-seed AUC"] = "plots/seed_distribution.png"
  rows = report_rows(first)
  rows["unsupervised method"] = dict(rows["unsupervised method"], over_seeds=over_seeds)
  rows[f"consensus of {len(evaluations)} seeds (mean rank)"] = dict(study["consensus"], kind="method")
  report.write_report(workdir, metrics.to_json_safe(rows), plot_paths, config_text,
                      title=f"stargal_jax: {first.get('pipeline', 'evaluation')}, {len(evaluations)} seeds "
                            f"(plots and per-magnitude tables: seed 0)")
  return study


def report_rows(out: dict) -> dict:
  """The report's rows: the method, each classical baseline, and the supervised ceiling."""
  rows = {"unsupervised method": dict(out["method"], kind="method")}
  rows.update({f"baseline: {k}": dict(v, kind="baseline") for k, v in out["baselines"].items()})
  if "supervised_ceiling" in out:
    rows["supervised ceiling (logistic regression on latents, CV)"] = dict(out["supervised_ceiling"], kind="ceiling")
  return rows
