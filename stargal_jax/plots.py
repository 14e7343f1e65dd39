"""Figures for the evaluation report (matplotlib, Agg; no pyplot, no global state).

Every function takes numpy arrays and an output path, writes one PNG, and returns the path.
Figures are built on `matplotlib.figure.Figure` directly, which renders through Agg without
touching pyplot's global backend, so the module is safe to import anywhere (notebooks included).
Class colours are fixed across figures: STAR orange, GALAXY blue, QSO purple, unlabelled grey.
"""

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from astropy.visualization import make_lupton_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from stargal_jax import metrics

CLASS_NAMES = {0: "STAR", 1: "GALAXY", 2: "QSO", -1: "unlabelled"}
CLASS_COLOURS = {0: "tab:orange", 1: "tab:blue", 2: "tab:purple", -1: "0.6"}
DPI = 120
GRI_BANDS = (3, 2, 1)  # red = i, green = r, blue = g


def save_figure(figure: Figure, path) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=DPI, bbox_inches="tight")
  return path


def plot_roc(curves: Mapping[str, tuple], path, title: str = "ROC: galaxies positive") -> Path:
  """ROC curves, one per name -> (is_galaxy, oriented score); the legend gives each AUC."""
  figure = Figure(figsize=(5.5, 5))
  axes = figure.subplots()
  for name, (is_galaxy, score) in curves.items():
    fpr, tpr, _ = metrics.roc_curve(is_galaxy, score)
    axes.plot(fpr, tpr, lw=1.6, label=f"{name} (AUC {metrics.roc_auc(is_galaxy, score):.3f})")
  axes.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1, label="chance")
  axes.set(xlim=(0, 1), ylim=(0, 1.005), xlabel="false positive rate (point-like called galaxy)",
           ylabel="true positive rate (galaxy completeness)", title=title, aspect="equal")
  axes.legend(loc="lower right", fontsize=8)
  axes.grid(alpha=0.3)
  return save_figure(figure, path)


def plot_latents(latents2d, labels, path, max_points: int = 20000, seed: int = 0,
                 axis_names: Sequence[str] = ("latent 1", "latent 2")) -> Path:
  """Scatter of a 2-D latent space coloured by class (STAR/GALAXY/QSO; -1 unlabelled).

  At most `max_points` are drawn (a fixed random subset) so large sets stay readable.
  """
  points = np.asarray(latents2d, dtype=np.float64)
  classes = np.asarray(labels).astype(np.int64).ravel()
  if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(classes):
    raise ValueError(f"need (N, 2) latents and N labels, got {points.shape} and {classes.shape}")
  shown = np.arange(len(points))
  if len(points) > max_points:
    shown = np.sort(np.random.default_rng(seed).choice(len(points), max_points, replace=False))
  figure = Figure(figsize=(6, 5.5))
  axes = figure.subplots()
  for code in (-1, 1, 0, 2):  # galaxies under the rarer point-like classes
    members = shown[classes[shown] == code]
    if members.size:
      axes.scatter(points[members, 0], points[members, 1], s=4, alpha=0.5, lw=0,
                   color=CLASS_COLOURS[code], label=f"{CLASS_NAMES[code]} ({members.size})",
                   rasterized=True)
  axes.set(xlabel=axis_names[0], ylabel=axis_names[1], title="latent space by class")
  axes.legend(markerscale=3, fontsize=8)
  return save_figure(figure, path)


def plot_score_histograms(score, labels, threshold: float | None, path, bins: int = 60) -> Path:
  """Histograms of the score per class with the prior threshold marked."""
  values = np.asarray(score, dtype=np.float64).ravel()
  classes = np.asarray(labels).astype(np.int64).ravel()
  edges = np.histogram_bin_edges(values[np.isfinite(values)], bins=bins)
  figure = Figure(figsize=(6.5, 4))
  axes = figure.subplots()
  for code in (1, 0, 2, -1):
    members = values[classes == code]
    if members.size:
      axes.hist(members, bins=edges, histtype="step", lw=1.6, color=CLASS_COLOURS[code],
                label=f"{CLASS_NAMES[code]} ({members.size})")
  if threshold is not None and np.isfinite(threshold):
    axes.axvline(threshold, color="k", ls="--", lw=1, label=f"prior threshold {threshold:.3g}")
  axes.set(xlabel="score (larger = galaxy)", ylabel="objects", title="score by class")
  axes.legend(fontsize=8)
  return save_figure(figure, path)


def _bin_values(bins: Sequence[dict], key: str) -> np.ndarray:
  """One number per bin; None (NaN after to_json_safe) stays NaN, a gap in the line."""
  return np.array([np.nan if b.get(key) is None else b[key] for b in bins], dtype=np.float64)


def plot_auc_vs_mag(by_mag: Mapping[str, Sequence[dict]], path) -> Path:
  """AUC (label-free) and accuracy per r-magnitude bin, one line per name -> list of bin dicts."""
  figure = Figure(figsize=(7, 4))
  auc_axes, accuracy_axes = figure.subplots(1, 2)
  tick_labels, lowest = [], 0.4
  for name, bins in by_mag.items():
    x = np.arange(len(bins))
    for axes, key in ((auc_axes, "auc"), (accuracy_axes, "accuracy")):
      values = _bin_values(bins, key)
      axes.plot(x, values, marker="o", label=name)
      if np.isfinite(values).any():  # a wrongly oriented score (AUC < 0.5) must stay in view
        lowest = min(lowest, float(np.nanmin(values)) - 0.05)
    tick_labels = tick_labels or [f"{b['label']}\nn={b.get('n', '?')}" for b in bins]
  for axes, quantity in ((auc_axes, "AUC (label-free)"), (accuracy_axes, "accuracy")):
    axes.set_xticks(np.arange(len(tick_labels)), tick_labels, fontsize=8)
    axes.set(ylabel=quantity, xlabel="r magnitude bin", ylim=(max(lowest, 0.0), 1.01))
    axes.grid(alpha=0.3)
  auc_axes.legend(fontsize=7)
  figure.suptitle("by r magnitude")
  figure.tight_layout()
  return save_figure(figure, path)


def plot_seed_distribution(aucs, path, quantity: str = "AUC") -> Path:
  """Per-seed values (one array, or name -> array) as jittered points over a box plot."""
  groups = dict(aucs) if isinstance(aucs, Mapping) else {"": aucs}
  figure = Figure(figsize=(max(3.5, 1.6 * len(groups) + 1.5), 4))
  axes = figure.subplots()
  rng = np.random.default_rng(0)
  for position, (name, values) in enumerate(groups.items()):
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    axes.boxplot([values], positions=[position], widths=0.5, showfliers=False)
    axes.scatter(position + rng.uniform(-0.15, 0.15, values.size), values, s=10, alpha=0.6,
                 color="tab:blue", lw=0)
    summary = metrics.summarize_over_seeds(values)
    axes.annotate(f"{summary['mean']:.3f} +- {summary['std']:.3f}\nn={summary['n']}",
                  (position, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                  fontsize=8)
  axes.set_xticks(range(len(groups)), list(groups), fontsize=8)
  axes.set(ylabel=f"{quantity} per seed", xlim=(-0.7, len(groups) - 0.3))
  axes.set_title(f"{quantity} over seeds", pad=28)
  axes.grid(alpha=0.3, axis="y")
  return save_figure(figure, path)


def gri_composite(image, Q: float = 8.0) -> np.ndarray:
  """(H, W, 3) uint8 Lupton asinh composite of one (5, H, W) cutout: i, r, g as red, green, blue.

  The linear stretch is set per image from its brightest pixels (the 99.5th percentile of the
  band mean), so that faint and bright objects are both visible; NaN pixels show black.
  """
  red, green, blue = (np.nan_to_num(np.asarray(image[b], dtype=np.float64)) for b in GRI_BANDS)
  peak = np.percentile((red + green + blue) / 3.0, 99.5)
  stretch = max(float(peak), 1e-3)
  with np.errstate(divide="ignore", invalid="ignore"):  # astropy divides by zero intensity
    return make_lupton_rgb(red, green, blue, stretch=stretch, Q=Q)


def plot_image_grid(images, titles: Sequence[str] | None, path, columns: int = 8) -> Path:
  """A grid of gri composites of (N, 5, H, W) cutouts, optionally titled (e.g. class and score)."""
  cutouts = np.asarray(images)
  if cutouts.ndim != 4 or cutouts.shape[1] != 5:
    raise ValueError(f"images must be (N, 5, H, W), got {cutouts.shape}")
  if titles is not None and len(titles) != len(cutouts):
    raise ValueError(f"{len(cutouts)} images but {len(titles)} titles")
  columns = max(1, min(columns, len(cutouts)))
  rows = max(1, -(-len(cutouts) // columns))
  figure = Figure(figsize=(1.6 * columns, 1.75 * rows))
  grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
  for index, axes in enumerate(grid):
    axes.set_axis_off()
    if index < len(cutouts):
      axes.imshow(gri_composite(cutouts[index]), origin="lower", interpolation="nearest")
      if titles is not None:
        axes.set_title(str(titles[index]), fontsize=7)
  return save_figure(figure, path)


def plot_training_curves(history: Sequence[Mapping[str, float]], path, title: str = "training") -> Path:
  """One small panel per logged quantity of a trainer history (`train.TrainResult.history`: dicts with `step`
  and one number per key) against the step: `total` first, then the loss terms, `grad_norm`, `images_per_second`.
  Positive quantities spanning more than a decade are drawn on a log axis."""
  if not history:
    raise ValueError("an empty history has no curves")
  steps = np.array([entry["step"] for entry in history], dtype=np.float64)
  keys = list(dict.fromkeys(k for entry in history for k in entry if k != "step"))
  last = ("grad_norm", "images_per_second")
  keys = sorted(keys, key=lambda k: (k != "total", k in last, last.index(k) if k in last else 0))
  columns = min(3, len(keys))
  rows = -(-len(keys) // columns)
  figure = Figure(figsize=(3.4 * columns, 2.5 * rows))
  grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
  for axes, key in zip(grid, keys):
    values = np.array([entry.get(key, np.nan) for entry in history], dtype=np.float64)
    axes.plot(steps, values, color="k" if key == "total" else "tab:blue", lw=1.4, marker="." if len(steps) < 30 else None)
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0 and finite.max() > 10 * finite.min():
      axes.set_yscale("log")
    axes.set(title=key.replace("_", " "), xlabel="step")
    axes.grid(alpha=0.3)
  for axes in grid[len(keys):]:
    axes.set_axis_off()
  figure.suptitle(title)
  figure.tight_layout()
  return save_figure(figure, path)


def plot_segmentation_overlay(image, seg_map, is_galaxy, x, y, path, sky_sigma: float,
                              zoom: tuple[int, int, int, int] | None = None, title: str = "") -> Path:
  """A frame (asinh stretch of `image / sky_sigma`, grey) with the outlines of a segmentation map's objects
  (ids 1..N; `is_galaxy[k]` colours id k + 1: galaxies blue, point-like orange) and their centres (x, y, 0-based
  pixels); with `zoom` = (x0, x1, y0, y1) a second panel shows that region with the objects' ids."""
  image = np.nan_to_num(np.asarray(image, np.float64))
  seg_map = np.asarray(seg_map)
  is_galaxy = np.asarray(is_galaxy, bool)
  classes = np.r_[False, is_galaxy]  # index = id; 0 background
  panels = [(0, image.shape[1], 0, image.shape[0])] + ([zoom] if zoom else [])
  figure = Figure(figsize=(7.5 * len(panels), 5.6))
  for axes, (x0, x1, y0, y1) in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels):
    block = seg_map[y0:y1, x0:x1]
    axes.imshow(np.arcsinh(image[y0:y1, x0:x1] / (3 * sky_sigma)), origin="lower", cmap="gray_r", vmin=-0.5,
                vmax=5, extent=(x0 - 0.5, x1 - 0.5, y0 - 0.5, y1 - 0.5), interpolation="nearest")
    for galaxy, colour in ((True, "tab:blue"), (False, "tab:orange")):
      members = (block > 0) & (classes[np.clip(block, 0, len(classes) - 1)] == galaxy)
      if members.any():
        axes.contour(np.arange(x0, x1), np.arange(y0, y1), members.astype(float), levels=[0.5], colors=colour,
                     linewidths=0.6 if len(panels) == 1 or (x0, y0) == (0, 0) else 1.0)
    inside = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    axes.scatter(np.asarray(x)[inside], np.asarray(y)[inside], s=4, color="red", lw=0)
    if (x0, x1, y0, y1) != panels[0]:
      for k in np.flatnonzero(inside):
        axes.annotate(str(k + 1), (x[k], y[k]), xytext=(4, 4), textcoords="offset points", fontsize=7, color="k")
    else:
      for zx0, zx1, zy0, zy1 in panels[1:]:
        axes.add_patch(Rectangle((zx0, zy0), zx1 - zx0, zy1 - zy0, fill=False, color="magenta", lw=1.2))
    axes.set(xlim=(x0 - 0.5, x1 - 0.5), ylim=(y0 - 0.5, y1 - 0.5), xlabel="x (r-band pixel, 0-based)",
             ylabel="y (r-band pixel, 0-based)")
  figure.suptitle(title or "segmentation map: galaxies blue, point-like orange")
  figure.tight_layout()
  return save_figure(figure, path)
