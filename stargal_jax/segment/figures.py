"""Figures of segmented cutouts: mask overlays on gri composites, example grids, masked examples."""

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from stargal_jax import plots


MASK_COLOURS = np.array([[0, 0, 0], [255, 140, 0], [30, 144, 255], [50, 205, 50], [220, 20, 60],
                         [186, 85, 211], [255, 215, 0], [0, 206, 209]], dtype=np.float64)


def mask_overlay(image: np.ndarray, mask: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
  """(H, W, 3) uint8: the gri composite of one (5, H, W) cutout, tinted by the mask labels
  (central orange; neighbours blue, green, red, ... cycling) with their outlines at full colour."""
  rgb = plots.gri_composite(image).astype(np.float64)
  if mask is None:
    return rgb.astype(np.uint8)
  mask = np.asarray(mask)
  colour_index = np.where(mask > 0, (mask - 1) % (len(MASK_COLOURS) - 1) + 1, 0)
  tint = MASK_COLOURS[colour_index]
  inside = mask > 0
  rgb[inside] = (1 - alpha) * rgb[inside] + alpha * tint[inside]
  boundary = np.zeros_like(inside)
  for axis in (0, 1):  # a pixel whose label differs from its neighbour's along an axis lies on an edge
    diff = np.diff(mask, axis=axis) != 0
    pad = [(0, 0), (0, 0)]
    pad[axis] = (0, 1)
    boundary |= np.pad(diff, pad)
    pad[axis] = (1, 0)
    boundary |= np.pad(diff, pad)
  boundary &= inside
  rgb[boundary] = tint[boundary]
  return np.clip(rgb, 0, 255).astype(np.uint8)


def plot_segmentations(images: np.ndarray, columns: Mapping[str, np.ndarray | None], path,
                       titles: Sequence[str] | None = None, panel_inches: float = 1.35,
                       dpi: int = 100, cutouts_as_columns: bool = False) -> Path:
  """A grid of the gri composite of each cutout and one overlay per mask set (`columns`: name ->
  (N, H, W) masks, or None for an empty panel); one row per cutout, or one column with
  `cutouts_as_columns`."""
  names = ["image", *columns]
  n = len(images)
  shape = (len(names), n) if cutouts_as_columns else (n, len(names))
  figure = Figure(figsize=(panel_inches * shape[1] + 0.3, panel_inches * shape[0] + 0.3))
  axes = figure.subplots(*shape, squeeze=False)
  for i in range(n):
    for j, name in enumerate(names):
      ax = axes[j, i] if cutouts_as_columns else axes[i, j]
      ax.set_xticks([])
      ax.set_yticks([])
      mask = None if name == "image" else columns[name]
      if name != "image" and mask is None:
        ax.set_axis_off()
        continue
      ax.imshow(mask_overlay(images[i], None if mask is None else mask[i]), origin="lower",
                interpolation="nearest")
      if cutouts_as_columns:
        if i == 0:
          ax.set_ylabel(name, fontsize=8)
        if j == 0 and titles is not None:
          ax.set_title(titles[i], fontsize=6)
      else:
        if i == 0:
          ax.set_title(name, fontsize=8)
        if j == 0 and titles is not None:
          ax.set_ylabel(titles[i], fontsize=6)
  figure.subplots_adjust(wspace=0.03, hspace=0.05 if not cutouts_as_columns else 0.12, left=0.04,
                         right=0.99, top=0.95 if cutouts_as_columns else 0.97, bottom=0.01)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=dpi, pil_kwargs={"optimize": True})
  return path


def pick_examples(truth: Mapping[str, np.ndarray] | None, masks: np.ndarray, count: int, seed: int) -> np.ndarray:
  """Cutouts to show: half with neighbours (truth when known, else predicted), half at random."""
  rng = np.random.default_rng([seed, 3])
  has_nb = (np.asarray(truth["n_neighbours"]) > 0) if truth is not None else (masks >= 2).any(axis=(1, 2))
  crowded = np.flatnonzero(has_nb)
  first = rng.choice(crowded, size=min(count // 2, len(crowded)), replace=False)
  rest = np.setdiff1d(np.arange(len(masks)), first)
  second = rng.choice(rest, size=min(count - len(first), len(rest)), replace=False)
  return np.sort(np.concatenate([first, second]))


def write_overlay_plots(workdir: Path, labelled, columns: Mapping[str, np.ndarray | None],
                        truth: Mapping | None, count: int, seed: int) -> list[str]:
  """plots/segmentation_examples.png: cutouts with neighbours and at random, every mask set beside."""
  if count <= 0:
    return []
  first = next(iter(columns.values()))
  picked = pick_examples(truth, first, count, seed)
  images = labelled.read(picked)
  objids = np.asarray(labelled.index["objID"])[picked]
  path = plot_segmentations(images, {k: (None if v is None else v[picked]) for k, v in columns.items()},
                            workdir / "plots" / "segmentation_examples.png", titles=[str(o) for o in objids])
  return [str(path.relative_to(workdir))]


def plot_masked_examples(images: np.ndarray, masked: np.ndarray, masks: np.ndarray, path) -> Path:
  """Rows: cutouts; columns: image, segmentation overlay, the masked image the classifier sees."""
  n = len(images)
  figure = Figure(figsize=(1.35 * 3, 1.35 * n + 0.3))
  axes = figure.subplots(n, 3, squeeze=False)
  for i in range(n):
    for j, (title, panel) in enumerate((("image", mask_overlay(images[i], None)),
                                        ("segmentation", mask_overlay(images[i], masks[i])),
                                        ("neighbours masked", mask_overlay(masked[i], None)))):
      axes[i, j].imshow(panel, origin="lower", interpolation="nearest")
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
      if i == 0:
        axes[i, j].set_title(title, fontsize=8)
  figure.subplots_adjust(wspace=0.03, hspace=0.05, left=0.02, right=0.99, top=0.97, bottom=0.01)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=100, pil_kwargs={"optimize": True})
  return path


VERDICT_COLOURS = {"met": "tab:green", "missed": "tab:red", "within noise": "tab:orange", "undefined": "0.6"}


def plot_check_margins(margins: Mapping[str, Mapping[str, Mapping]], path) -> Path:
  """One panel per target of the issue: per distribution (rows), the margin of ours over the best baseline
  (`segment.protocol.check_margins`) with its 5-95% bootstrap interval, coloured by the verdict; 0 is the bar."""
  names = list(margins)
  targets = list(dict.fromkeys(t for m in margins.values() for t in m))
  figure = Figure(figsize=(2.3 * len(targets), 0.35 * len(names) + 1.0), layout="constrained")
  axes = figure.subplots(1, len(targets), sharey=True, squeeze=False)[0]
  y = np.arange(len(names))[::-1]
  for ax, target in zip(axes, targets):
    for yi, name in zip(y, names):
      m = margins[name].get(target)
      if m is None or not np.isfinite(m["margin"]):
        continue
      lo, hi = m["margin"] - m["p5"], m["p95"] - m["margin"]
      ax.errorbar(m["margin"], yi, xerr=[[max(lo, 0.0)], [max(hi, 0.0)]], fmt="o", ms=4, capsize=2,
                  color=VERDICT_COLOURS.get(m["verdict"], "k"))
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_title(target, fontsize=8)
    ax.tick_params(labelsize=7)
  axes[0].set_yticks(y)
  axes[0].set_yticklabels(names, fontsize=7)
  figure.supxlabel("ours minus the best baseline (5-95% paired bootstrap)", fontsize=8)
  return plots.save_figure(figure, path)
