"""Tests for stargal_jax.report: the written report holds the numbers passed in and valid plots."""

import math

import numpy as np

from stargal_jax import metrics, plots, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def build_inputs(tmp_path):
  rng = np.random.default_rng(0)
  n = 400
  classes = rng.choice([0, 1, 2], size=n, p=[0.25, 0.7, 0.05])
  is_galaxy = classes == 1
  r_mag = rng.uniform(15, 23, n)
  method_score = rng.normal(size=n) + 2.0 * is_galaxy
  baseline_score = rng.normal(size=n) + 1.0 * is_galaxy
  latents = np.c_[method_score, rng.normal(size=n)]
  method = metrics.classification_metrics(is_galaxy, method_score, 0.3, r_mag)
  method["over_seeds"] = {"auc": metrics.summarize_over_seeds(0.9 + 0.003 * rng.normal(size=10))}
  baseline = metrics.to_json_safe(metrics.classification_metrics(is_galaxy, baseline_score, 0.3, r_mag))
  baseline["kind"] = "baseline"
  # A ceiling row carries only auc and accuracy (the supervised reference): here those of the score itself.
  ceiling = {"auc": metrics.roc_auc(is_galaxy, method_score), "accuracy": 0.9312, "kind": "ceiling"}
  all_metrics = {"supervised": ceiling, "psf_minus_extended": baseline, "cVAE": method}
  plot_paths = {
      "ROC": plots.plot_roc({"cVAE": (is_galaxy, method_score)}, tmp_path / "plots" / "roc.png"),
      "latents": plots.plot_latents(latents, classes, tmp_path / "plots" / "latents.png"),
  }
  relative = {name: str(path.relative_to(tmp_path)) for name, path in plot_paths.items()}
  relative["never written"] = "plots/missing.png"
  return all_metrics, relative


def test_report_holds_the_numbers_plots_and_config(tmp_path):
  all_metrics, plot_paths = build_inputs(tmp_path)
  path = report.write_report(tmp_path, all_metrics, plot_paths, "model: cvae\nseed: 0\n")
  assert path == tmp_path / "report.md"
  text = path.read_text()
  method, baseline = all_metrics["cVAE"], all_metrics["psf_minus_extended"]
  ceiling = all_metrics["supervised"]
  for value in (method["auc"], method["auc_best_sign"], method["accuracy"],
                method["galaxy_purity_at_96_completeness"], baseline["auc"], ceiling["auc"],
                ceiling["accuracy"], method["over_seeds"]["auc"]["mean"],
                method["over_seeds"]["auc"]["ci95_low"]):
    assert f"{value:.4f}" in text
  for b in method["by_mag"]:
    assert b["label"] in text and f"{b['auc']:.4f} / {b['accuracy']:.4f}" in text
  assert "model: cvae\nseed: 0\n```" in text
  # Rows by kind: method, then baseline, then ceiling; a ceiling without purity prints n/a.
  rows = [line for line in text.splitlines() if line.startswith("| ")]
  assert [r.split(" | ")[0] for r in rows[1:4]] == ["| cVAE", "| psf_minus_extended", "| supervised"]
  assert "n/a" in rows[3]
  for name in ("ROC", "latents"):
    relative = plot_paths[name]
    assert f"![{name}]({relative})" in text
    data = (tmp_path / relative).read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
  assert "(missing: `plots/missing.png`" in text and "![never written]" not in text


def test_format_number():
  assert report.format_number(0.123456) == "0.1235"
  assert report.format_number(np.float32(0.5)) == "0.5000"
  assert report.format_number(np.int64(7)) == "7"
  assert report.format_number(None) == "n/a" and report.format_number(math.nan) == "n/a"


def test_training_curves_get_their_own_section(tmp_path):
  (tmp_path / "plots").mkdir()
  (tmp_path / "plots" / "curves_ae.png").write_bytes(b"png")
  path = report.write_report(tmp_path, {}, {}, "cfg", curves={"training curves: ae": "plots/curves_ae.png",
                                                              "training curves: vae": "plots/curves_vae.png"})
  text = path.read_text()
  section = text[text.index("## Training curves"):text.index("## Config")]
  assert "![training curves: ae](plots/curves_ae.png)" in section
  assert "(missing: `plots/curves_vae.png` was not written)" in section
