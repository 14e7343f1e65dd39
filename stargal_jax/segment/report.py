"""The segmentation jobs' markdown reports and printed summaries."""

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from stargal_jax import report


def cell(value) -> str:
  if isinstance(value, str):
    return value
  return report.format_number(value, 3)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[tuple[str, str]]) -> list[str]:
  """Rows of dicts -> markdown lines; `columns` are (key, header) pairs; missing values print n/a."""
  lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
  return lines + ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]


SCORE_COLUMNS = (("name", "segmentation"), ("central_iou", "central IoU"),
                 ("central_found_fraction", "central found"), ("object_iou_pooled", "object IoU (pooled)"),
                 ("object_iou_mean", "object IoU (per image)"), ("neighbour_completeness", "nb completeness"),
                 ("neighbour_purity", "nb purity"), ("n_true_neighbours", "true nb"),
                 ("n_pred_neighbours", "pred nb"),
                 ("false_object_pixels_fraction", "bg pixels called object"),
                 ("missed_object_pixels_fraction", "object pixels missed"))


SWEEP_COLUMNS = (("k", "k"), ("n_object_clusters", "object clusters"),
                 ("object_pixel_fraction_sample", "object pixel fraction"),
                 ("central_found_fraction", "central found"), ("pred_neighbours_per_cutout", "pred nb / cutout"),
                 ("central_iou", "central IoU"), ("object_iou", "object IoU"),
                 ("neighbour_completeness", "nb completeness"), ("neighbour_purity", "nb purity"),
                 ("false_object_pixels_fraction", "bg called object"),
                 ("missed_object_pixels_fraction", "object missed"))


SEP_COLUMNS = (("band", "detection band(s)"), ("thresh_sigma", "threshold (sigma)"),
               ("central_iou", "central IoU"), ("object_iou", "object IoU"),
               ("neighbour_completeness", "nb completeness"), ("neighbour_purity", "nb purity"),
               ("false_object_pixels_fraction", "bg called object"))


def _mag_bin_label(lo, hi) -> str:
  """Bin edges as JSON leaves them (infinite edges become None)."""
  if lo is None or lo == -np.inf:
    return f"< {hi:g}"
  if hi is None or hi == np.inf:
    return f">= {lo:g}"
  return f"[{lo:g}, {hi:g})"


def _by_mag_rows(scores: Mapping[str, Mapping], key: str, rate: str) -> list[dict]:
  rows = []
  for name, s in scores.items():
    for b in s.get(key) or []:
      rows.append({"name": name, "bin": _mag_bin_label(b["mag_lo"], b["mag_hi"]), "n": b["n"], rate: b[rate]})
  return rows


def _detection_note(s: Mapping) -> str:
  share = s.get("detection_share") or 0.0
  return (f", the last a matched-filtered detection S/N (Gaussian sigma {s['detection_sigma_px']:g} px) holding "
          f"{share:g} of the feature variance" if share > 0 else "")


def segmentation_report_lines(out: Mapping) -> list[str]:
  lines = ["# stargal_jax: pixel-wise segmentation", ""]
  rec = out["reconstruction"]
  if rec:
    lines += ["## Reconstruction (held-back unlabelled images, normalised units)", ""]
    rows = [{"name": name, **r, **{f"mse_{b}": v for b, v in r["mse_per_band"].items()}}
            for name, r in rec["models"].items()]
    lines += markdown_table(rows, (("name", "model"), ("steps", "steps"), ("mse", "MSE per pixel"),
                                   ("unexplained_fraction", "unexplained fraction"),
                                   *((f"mse_{b}", f"MSE {b}") for b in "ugriz"), ("n_images", "images")))
    if rec.get("residual_over_plain_mse") is not None:
      lines += ["", f"Residual / plain MSE: {cell(rec['residual_over_plain_mse'])}.", ""]
  s = out["segmentation"]
  lines += ["## Segmentation", "",
            f"Model `{s['model']}`, hypercolumn layers {s['hypercolumn_layers']} ({s['hypercolumn_channels']} "
            f"channels{_detection_note(s)}), k = {s['k']}, k-means on {s['sample_pixels']} pixels of "
            f"{s['fit_images']} unlabelled "
            f"images; clusters with mean {s['snr_bands']} S/N > {s['snr_threshold']} are objects "
            f"(rule `{s['rule']}`). {s['n_objects']} labelled cutouts segmented.", ""]
  scores = out.get("scores") or {}
  if scores:
    lines += ["### Against the simulator's truth masks", ""]
    lines += markdown_table([{"name": n, **v} for n, v in scores.items()], SCORE_COLUMNS)
    sep_best = out["sep"]["best"]
    lines += ["", f"SEP: detection on the {sep_best['band']} S/N image, threshold {sep_best['thresh_sigma']:g} "
              "sigma (after its 3x3 filter), the best central IoU of the grid below, tuned on these very "
              "cutouts and their truth (an optimistic baseline).", ""]
    lines += ["### Central-object IoU by true r magnitude of the central object", ""]
    lines += markdown_table(_by_mag_rows(scores, "central_iou_by_mag", "central_iou"),
                            (("name", "segmentation"), ("bin", "r mag"), ("n", "n"), ("central_iou", "central IoU")))
    lines += ["", "### Neighbour completeness by true r magnitude", ""]
    lines += markdown_table(_by_mag_rows(scores, "completeness_by_mag", "completeness"),
                            (("name", "segmentation"), ("bin", "r mag"), ("n", "n"), ("completeness", "completeness")))
    lines += ["", "### Neighbour purity by measured r magnitude of the predicted component", ""]
    lines += markdown_table(_by_mag_rows(scores, "purity_by_mag", "purity"),
                            (("name", "segmentation"), ("bin", "r mag"), ("n", "n"), ("purity", "purity")))
    lines += ["", "### SEP tuning grid", ""] + markdown_table(out["sep"]["grid"], SEP_COLUMNS)
  lines += ["", "## k sweep", ""] + markdown_table(out["k_sweep"], SWEEP_COLUMNS)
  targets = out.get("targets") or {}
  if targets:
    lines += ["", "## Targets", ""] + [f"- {k}: {v}" for k, v in targets.items()]
  lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in out.get("plots", [])]
  return lines + [""]


def seg_cvae_report_lines(out: Mapping) -> list[str]:
  lines = ["# stargal_jax: neighbours masked before the cvae classification", "",
           f"Classifier: `{out['classifier_pipeline']}` (configs/cvae.py settings), run twice: on copies of both "
           "sets with the segmentation's neighbours replaced by noise, and on the original sets. "
           f"'with neighbours' = {out['neighbours_from']}.", ""]
  rows = []
  for subset in out["subsets"]["masked"]:
    rows.append({"subset": subset, "n": out["subsets"]["masked"][subset]["n"],
                 "masked": out["subsets"]["masked"][subset]["auc"],
                 "unmasked": out["subsets"]["unmasked"][subset]["auc"],
                 "masked_bs": out["subsets"]["masked"][subset]["auc_best_sign"],
                 "unmasked_bs": out["subsets"]["unmasked"][subset]["auc_best_sign"]})
  lines += markdown_table(rows, (("subset", "objects"), ("n", "n"), ("masked", "AUC masked"),
                                 ("unmasked", "AUC unmasked"), ("masked_bs", "best-sign AUC masked"),
                                 ("unmasked_bs", "best-sign AUC unmasked")))
  seeds = out.get("num_seeds", 1)
  lines += ["", f"AUC change from masking ({seeds} seed{'s' if seeds > 1 else ''}; masked minus unmasked, seed by "
            "seed; 'with minus without' removes what changed for every object):", ""]
  lines += markdown_table([{"objects": k, **v} for k, v in out["gain"].items()],
                          (("objects", "objects"), ("mean", "mean change"), ("std", "std over seeds"),
                           ("seeds_positive", "seeds > 0")))
  s = out["segmentation"]
  lines += ["", f"Segmentation: `{s['model']}`, k = {s['k']}, layers {s['hypercolumn_layers']}; central object "
            f"found in {cell(s['central_found_fraction'])} of the labelled cutouts; predicted neighbours in "
            f"{s['labelled_with_predicted_neighbours']} labelled and {s['unlabelled_with_predicted_neighbours']} "
            "unlabelled cutouts.", ""]
  if "scores" in s:
    lines += markdown_table([{"name": "ours", **s["scores"]}], SCORE_COLUMNS) + [""]
  lines += ["## Targets", ""] + [f"- {k}: {v}" for k, v in out["targets"].items()]
  lines += ["", "## Plots", "", "![examples](plots/segmentation_examples.png)",
            "![masked](plots/masked_examples.png)", "",
            "Per-run details (ROC, by magnitude, baselines): `masked/report.md`, `unmasked/report.md`.", ""]
  return lines


def print_summary(out: Mapping, workdir: Path) -> None:
  rec = out["reconstruction"]
  parts = [f"{name} MSE {r['mse']:.4f}" for name, r in rec["models"].items()]
  for name, s in (out.get("scores") or {}).items():
    parts.append(f"{name}: central IoU {s['central_iou']:.3f}, nb completeness {s['neighbour_completeness']:.3f}, "
                 f"purity {s['neighbour_purity']:.3f}")
  print(f"[result] {' | '.join(parts)} | {out['wall_seconds']:.0f}s | {workdir}", flush=True)


def _bins(metrics: Mapping, key: str, value: str) -> dict:
  return {row["bin"]: row[value] for row in metrics.get(key) or []}


def protocol_row(name: str, m: Mapping, flooded: int | None = None) -> dict:
  """One method's condensed numbers (`matching.evaluate` output) for the protocol table."""
  by_mag = _bins(m, "central_iou_by_mag", "central_iou")
  snr = {row["bin"]: row for row in m["detection_by_snr"]}
  mid = snr.get("5-10", {})
  row = {"name": name, "central_iou": m["central_iou"], "f1": m["detection"]["f1"],
         "f1_strict": m["detection_strict"]["f1"], "f1_5_10": mid.get("f1"),
         "pr_5_10": f"{cell(mid.get('precision'))} / {cell(mid.get('recall'))}",
         "matched_iou": m["matched_iou"], "nb_c": m["neighbour_completeness"], "nb_p": m["neighbour_purity"],
         "blended": m["blended_recall"], "bg": m["background_called_object"],
         "flooded": "" if flooded is None else str(flooded)}
  row.update({f"mag_{i}": v for i, v in enumerate(by_mag.values())})
  return row


def protocol_columns(mag_bins: Sequence[str]) -> tuple:
  return (("name", "method"), ("central_iou", "central IoU"),
          *((f"mag_{i}", f"r {b}") for i, b in enumerate(mag_bins)),
          ("f1", "F1"), ("f1_strict", "F1 (IoU>0.5)"), ("f1_5_10", "F1 S/N 5-10"), ("pr_5_10", "P / R S/N 5-10"),
          ("matched_iou", "matched IoU"), ("nb_c", "nb completeness"), ("nb_p", "nb purity"),
          ("blended", "blended recall"), ("bg", "bg called object"), ("flooded", "flooded cutouts"))


def protocol_lines(out: Mapping) -> list[str]:
  """segmentation_protocol.md: per distribution the condensed table, the targets, the chosen settings; the
  real frames."""
  lines = ["# Segmentation: the robustness protocol", "", f"Command: `{out.get('command', '')}`", "",
           f"Matching: {out.get('matching', '')}", "", f"Settings chosen by: {out.get('selection', '')}.", ""]
  if "refinements" in out:
    r = out["refinements"]
    grid = (sorted({row["deblend_contrast"] for row in r["grid"]}),
            [p for p in dict.fromkeys(row["faint_peak"] for row in r["grid"])])
    peak, edge = r["best"]["faint_peak"], r["best"].get("edge_level")
    edge_grid = [e for e in dict.fromkeys(row["edge_level"] for row in r["grid"] if "edge_level" in row)]
    lines += [f"Our deblending contrast {r['best']['deblend_contrast']:g} and faint-source peak "
              f"{'none (no faint sources)' if peak is None else f'{peak:g} sigma'} (chosen together on the {r['chosen_on']}; contrasts {grid[0]}, "
              f"peaks {grid[1]})"
              + (f", then the mask-edge isophote {'none (the clusters own edges)' if edge is None else f'{edge:g} sigma'}"
                 f" (levels {edge_grid})" if edge_grid else "")
              + (f", then its peak fraction {r['best'].get('edge_peak_fraction')} and the least peak of a kept "
                 f"neighbour {r['best'].get('edge_min_peak')}" if edge is not None else "") + ".", ""]
    if "least_neighbour_purity" in r:
      floor = r["least_neighbour_purity"]
      lines += [f"Neighbour purity floor of the choice: SEP's mean on the same tuning splits, {floor['SEP']:.3f} "
                f"(SEP at {floor['sep_settings']}).", ""]
  checks = []
  for name, d in (out.get("distributions") or {}).items():
    first = next(iter(d["scores"].values()))
    mag_bins = [row["bin"] for row in first["central_iou_by_mag"]]
    lines += [f"## {name} ({d['n_score']} scored, {d['n_tune']} tuning cutouts; overrides {d['overrides']})", ""]
    rows = [protocol_row(n, m, d.get("flooded_cutouts", {}).get(n)) for n, m in d["scores"].items()]
    lines += markdown_table(rows, protocol_columns(mag_bins))
    lines += ["", "Baselines at their best on this tuning split: " + "; ".join(
      f"{b} {s}" for b, s in d["baseline_settings"].items()) + ".", ""]
    c = d["checks"]
    f1_key = next(key for key in c if key.startswith("f1_snr_") and key.endswith("_above_baselines"))
    checks.append({"distribution": name, "iou": str(c["central_iou_above_baselines_every_r_bin"]),
                   "f1": str(c[f1_key]), "nb": str(c["neighbour_completeness_and_purity_at_least_sep"])})
    if "check_margins" in d:
      lines += ["Margins of the full method over the best baseline, with the 5th-95th percentiles of a paired "
                "bootstrap of the scored cutouts:", ""]
      lines += markdown_table([{"target": t, **m} for t, m in d["check_margins"].items()],
                              (("target", "target"), ("margin", "margin"), ("p5", "p5"), ("p95", "p95"),
                               ("verdict", "verdict")))
      lines += [""]
  if checks:
    lines += ["## Targets (the full method against the best of SEP and photutils)", ""]
    lines += markdown_table(checks, (("distribution", "distribution"), ("iou", "central IoU above both, every r bin"),
                                     ("f1", "F1 at S/N 5-10 above both"),
                                     ("nb", "nb completeness >= SEP's at purity >= SEP's")))
    lines += [""]
  real = out.get("real")
  if real:
    lines += ["## Real frames (no truth)", "", real.get("rule", ""), ""]
    lines += markdown_table(real["rows"], REAL_COLUMNS) + [""]
    lines += [f"![{p}]({p})" for p in real.get("figures", [])] + [""]
  return lines


REAL_COLUMNS = (("set", "cutouts"), ("method", "method"), ("n", "n"), ("detections_per_cutout", "detections / cutout"),
                ("object_fraction_mean", "object fraction (mean)"), ("object_fraction_max", "object fraction (max)"),
                ("largest_component_px", "largest component (px)"), ("flooded", "flooded cutouts"),
                ("central_found", "central found"))
