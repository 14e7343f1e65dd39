"""Tests for stargal_jax.plots: every figure is written as a valid PNG; the composite's colours."""

import numpy as np
import pytest
from matplotlib.image import imread

from stargal_jax import metrics, plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_width=200):
  data = path.read_bytes()
  assert data[:8] == PNG_MAGIC and len(data) > 1000
  height, width = imread(path).shape[:2]
  assert width >= min_width and height >= 100


def synthetic_scores(n=500, seed=0):
  rng = np.random.default_rng(seed)
  classes = rng.choice([0, 1, 2], size=n, p=[0.25, 0.7, 0.05])
  score = rng.normal(size=n) + 1.5 * (classes == 1)
  return classes, score


def test_plot_roc(tmp_path):
  classes, score = synthetic_scores()
  is_galaxy = classes == 1
  noisier = score + np.random.default_rng(1).normal(size=500)
  curves = {"method": (is_galaxy, score), "baseline": (is_galaxy, noisier)}
  path = plots.plot_roc(curves, tmp_path / "roc.png")
  assert path == tmp_path / "roc.png"
  assert_png(path)


def test_plot_latents_and_its_shape_check(tmp_path):
  classes, score = synthetic_scores()
  classes[:20] = -1  # unlabelled objects are drawn too
  latents = np.c_[score, np.random.default_rng(2).normal(size=score.size)]
  assert_png(plots.plot_latents(latents, classes, tmp_path / "sub" / "latents.png", max_points=300))
  with pytest.raises(ValueError):
    plots.plot_latents(latents[:, :1], classes, tmp_path / "bad.png")


def test_plot_score_histograms(tmp_path):
  classes, score = synthetic_scores()
  threshold = metrics.prior_threshold(score, 0.3)
  assert_png(plots.plot_score_histograms(score, classes, threshold, tmp_path / "hist.png"))
  assert_png(plots.plot_score_histograms(score, classes, None, tmp_path / "hist_none.png"))


def test_plot_auc_vs_mag_accepts_metrics_and_json_safe_bins(tmp_path):
  classes, score = synthetic_scores()
  r_mag = np.random.default_rng(3).uniform(15, 23, score.size)
  result = metrics.classification_metrics(classes == 1, score, 0.3, r_mag)
  by_mag = {"method": result["by_mag"], "json": metrics.to_json_safe(result["by_mag"])}
  by_mag["json"][0]["auc"] = None  # a one-class bin after to_json_safe
  assert_png(plots.plot_auc_vs_mag(by_mag, tmp_path / "mag.png"))


def test_plot_seed_distribution_single_and_grouped(tmp_path):
  rng = np.random.default_rng(4)
  aucs = 0.9 + 0.01 * rng.normal(size=30)
  assert_png(plots.plot_seed_distribution(aucs, tmp_path / "seeds.png"), min_width=150)
  grouped = {"V+M": 0.75 + 0.08 * rng.normal(size=30), "cVAE": aucs, "failed": [np.nan, 0.8]}
  assert_png(plots.plot_seed_distribution(grouped, tmp_path / "seeds_grouped.png"))


def test_gri_composite_maps_i_r_g_to_red_green_blue():
  image = np.zeros((5, 64, 64))
  image[3, 30:34, 30:34] = 5.0  # light only in i
  image[1, 10:14, 10:14] = 5.0  # light only in g
  image[2, 0, 0] = np.nan
  rgb = plots.gri_composite(image)
  assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
  assert rgb[31, 31, 0] > 100 and rgb[31, 31, 1] == rgb[31, 31, 2] == 0
  assert rgb[11, 11, 2] > 100 and rgb[11, 11, 0] == rgb[11, 11, 1] == 0
  assert np.all(rgb[0, 0] == 0)


def test_plot_image_grid(tmp_path):
  rng = np.random.default_rng(5)
  y, x = np.indices((64, 64))
  blob = np.exp(-0.5 * ((y - 31.5) ** 2 + (x - 31.5) ** 2) / 2.0 ** 2)
  images = blob[None, None] * rng.uniform(1, 50, (10, 5, 1, 1)) + rng.normal(0, 0.01, (10, 5, 64, 64))
  titles = [f"GALAXY {i}" for i in range(10)]
  assert_png(plots.plot_image_grid(images.astype(np.float32), titles, tmp_path / "grid.png", columns=5))
  with pytest.raises(ValueError):
    plots.plot_image_grid(images, titles[:3], tmp_path / "bad.png")


def test_plot_training_curves_one_panel_per_quantity(tmp_path):
  history = [{"step": s, "total": 100.0 / s, "kl": 0.1 * s, "grad_norm": 1.0, "images_per_second": 900.0}
             for s in range(10, 110, 10)]
  path = plots.plot_training_curves(history, tmp_path / "c.png", title="stage 'vae'")
  assert path.stat().st_size > 5000
