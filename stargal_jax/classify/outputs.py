"""A classification run's outputs, written once (one seed or a seed study): `metrics.json` (headline numbers at
top level), `predictions.npz`, `latents.npz`, `catalogue.fits`, `plots/`, `report.md`.

`catalogue.fits` is the labelled set's catalogue (`stargal_jax.catalogue`), row for row as predictions.npz: the
score, its rank quantile, the class, per-seed columns of a study, the magnitudes and classical indices, the
non-finite-pixel flag, and the labels as clearly named evaluation columns (`eval_label`, `eval_z`). `predict`
writes the same columns (without the evaluation labels) for new data: `classification_columns` and
`measurement_columns` make them for both.

A seed study (S > 1) writes seed 0's full numbers, figures and per-magnitude tables, plus every seed's numbers
and their summary, predictions with a leading seed axis, every seed's latents (a new scoring rule can be
studied without retraining) and the per-seed distribution figure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stargal_jax import catalogue, curves, metrics, plots, report
from stargal_jax.classify import evaluate, pipelines, scoring
from stargal_jax.data.formats import CLASS_CODES

CATALOGUE_FILE = "catalogue.fits"
# catalogue column <- image measurement (`scoring.image_measurements`): magnitudes and the raw classical indices
MEASUREMENT_COLUMNS = {"r_mag": "r_mag", "mag_u": "mag_u", "mag_g": "mag_g", "mag_i": "mag_i", "mag_z": "mag_z",
                       "concentration": "index_concentration_index", "psf_minus_extended": "index_psf_minus_extended",
                       "psf_minus_cmodel": "index_sdss_psf_minus_cmodel",
                       "psf_minus_cmodel_signif": "index_sdss_psf_minus_cmodel_significance"}

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


def classification_columns(score, pred, star_fraction: float) -> dict[str, np.ndarray]:
  """Catalogue columns of label-free scores `score` and classes `pred`, (N,) for one run or (S, N) for a seed study:
  `score`, `score_quantile` and `class`; a study's are the consensus (mean rank, `scoring.consensus_score`, classed
  at the prior threshold), followed by every seed's own `score_sNNN` and `class_sNNN`."""
  score, pred = np.asarray(score, np.float64), np.asarray(pred)
  if score.ndim == 1:
    return {"score": score, "score_quantile": scoring.rank_quantile(score), "class": pred}
  consensus = scoring.consensus_score(score)
  columns = {"score": consensus, "score_quantile": scoring.rank_quantile(consensus),
             "class": metrics.prior_threshold_predictions(consensus, star_fraction)}
  for s in range(len(score)):
    columns[catalogue.seed_column("score", s)] = score[s]
    columns[catalogue.seed_column("class", s)] = pred[s]
  return columns


def measurement_columns(measurements: dict) -> dict[str, np.ndarray]:
  """Catalogue columns of the label-free image measurements (`MEASUREMENT_COLUMNS`, those present)."""
  return {column: measurements[key] for column, key in MEASUREMENT_COLUMNS.items() if key in measurements}


def write_run_catalogue(workdir: Path, evaluations: list[dict], labelled_store, measurements: dict,
                        config, data_source: str) -> Path:
  """`catalogue.fits` of the labelled set, in predictions.npz's row order, with the evaluation labels."""
  n = len(labelled_store)
  stack = (lambda key: np.stack([e[key] for e in evaluations])) if len(evaluations) > 1 else (
      lambda key: evaluations[0][key])
  names = {code: name for name, code in CLASS_CODES.items()}
  columns = {"id": np.arange(1, n + 1), "objID": np.asarray(labelled_store.index["objID"]),
             **classification_columns(stack("score"), stack("pred"), float(config.data.star_fraction)),
             **measurement_columns(measurements)}
  if labelled_store.files:  # the input files it was packed from hold the non-finite pixels
    nonfinite = catalogue.nonfinite_pixels(labelled_store)
    columns.update(n_nonfinite=nonfinite, flag_nonfinite=nonfinite > 0)
  columns["flags"] = catalogue.flag_mask(columns)
  columns["eval_label"] = [names.get(int(c), "NONE") for c in np.asarray(labelled_store.index["label"])]
  columns["eval_z"] = np.asarray(labelled_store.index["z"])
  header = catalogue.header_cards(workdir, config, data_source, n, extra=[
      ("EVALSET", True, "the run's own labelled set: eval_* are its labels")])
  return catalogue.write_catalogue(catalogue.make_table(columns, header), workdir / CATALOGUE_FILE)


def write_outputs(workdir: Path, evaluations: list[dict], latents_per_seed: np.ndarray, labelled_store,
                  measurements: dict, star_fraction: float, mag_bins, extra_metrics: dict, config_text: str,
                  make_plots: bool = True, config=None) -> dict:
  """Writes every output of a run of S = len(evaluations) seeds once; returns the metrics written. With the run's
  `config`, also `catalogue.fits` (its header records the run)."""
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
  if config is not None:
    write_run_catalogue(workdir, evaluations, labelled_store, measurements, config,
                        str(extra_metrics.get("data_source", "")))
  plot_paths: dict[str, str] = {}
  curve_paths: dict[str, str] = {}
  if make_plots:
    # A seed_scope='all' study trains (and records) every seed in its own folder: the report shows seed 0's.
    history_root = workdir if curves.recorded_stages(workdir) else pipelines.seed_dir(workdir, 0)
    curve_paths = curves.write_curve_figures(workdir, history_root)
    plot_paths = write_plots(workdir, evaluations[0], latents_per_seed[0], labels, measurements)
    if num_seeds > 1:
      plots.plot_seed_distribution({"AUC (label-free)": out["auc_per_seed"],
                                    "AUC best sign": out["auc_best_sign_per_seed"]},
                                   workdir / "plots" / "seed_distribution.png")
      plot_paths["per-seed AUC"] = "plots/seed_distribution.png"
  title = f"stargal_jax: {first.get('pipeline', 'evaluation')}"
  if num_seeds > 1:
    title += f", {num_seeds} seeds (plots and per-magnitude tables: seed 0)"
  report.write_report(workdir, metrics.to_json_safe(rows), plot_paths, config_text, title=title, curves=curve_paths)
  return out
