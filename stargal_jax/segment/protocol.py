"""The segmentation half of the robustness protocol: on one data set, every method is scored by the same
`matching.evaluate` on a scored split; the settings of each method are chosen on a separate tuning split
(`matching.selection_score`), never on the scored one.

Methods: the study's pure hypercolumn k-means (`detection_share = 0`), each addition alone and together
(deblending, the crowded-field rule, the faint sources the clusters miss, mask edges at an isophote, the detection
channel), and two kept baselines, SEP and photutils
(`detect_sources` + `deblend_sources`), each at its best setting of a grid on the tuning split.
`benchmarks/segmentation_protocol.py` runs it over the default data, every shifted simulation and the real frames.
"""

import dataclasses
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from stargal_jax.segment import deblend, edges, faint, labelling, matching, photutils_baseline, pipeline, sep_baseline


# Each baseline's grid reaches past the settings it chose on every distribution so far (a best at the grid's edge
# is not its best): SEP's deblend contrast to 1e-4, photutils' threshold to 10 sigma and its filter to a FWHM
# near the seeing (4 px = 1.6"). Ours too: it had chosen its smallest contrast, 0.001, so it reaches 1e-4 like SEP's.
SEP_GRID = tuple({"band": "gri", "thresh_sigma": t, "deblend_cont": c}
                 for t in (0.8, 1.0, 1.5, 2.0, 3.0) for c in (0.0001, 0.001, 0.005, 0.05))
PHOTUTILS_GRID = tuple({"nsigma": s, "contrast": c, "fwhm_px": f}
                       for s in (1.5, 2.0, 3.0, 5.0, 7.0, 10.0) for c in (0.001, 0.01, 0.1) for f in (2.5, 4.0))
DEBLEND_CONTRASTS = (0.0001, 0.0003, 0.001, 0.005, 0.02, 0.1)
FAINT_PEAKS = (None, 4.0, 5.0, 6.0)  # sigma of the smoothed S/N map (its own robust noise); None = no faint sources
EDGE_LEVELS = (None, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0)  # the same map's sigma; None = the clusters' own
EDGE_PEAK_FRACTIONS = (None, 0.3, 0.5, 0.7)  # None = one level for every segment
EDGE_MIN_PEAKS = (None, 6.0, 7.0, 8.0, 9.0, 10.0)  # the same map's sigma; None = every segment kept


@dataclasses.dataclass(frozen=True)
class OurMethod:
  """One row of ours: which segmenter (by detection share) and which additions."""
  detection_share: float
  deblend: bool
  crowding: bool
  faint: bool = False
  edges: bool = False


def our_methods(share: float = 0.5) -> dict[str, OurMethod]:
  """Our rows: the study's pure hypercolumns (share 0), each addition alone and together, and the detection
  channel holding `share` of the feature variance with and without the other two."""
  return {"pure (the study's)": OurMethod(0.0, False, False),
          "pure + deblend": OurMethod(0.0, True, False),
          "pure + crowding": OurMethod(0.0, False, True),
          "pure + deblend + crowding": OurMethod(0.0, True, True),
          "pure + deblend + crowding + faint": OurMethod(0.0, True, True, True),
          "pure + deblend + crowding + edges": OurMethod(0.0, True, True, False, True),
          "detection channel": OurMethod(share, False, False),
          "detection + deblend + crowding": OurMethod(share, True, True),
          FULL: OurMethod(share, True, True, True, True)}


# The method the targets are checked for; its faint sources and isophote edges are on only where the
# tuning chose them.
FULL = "full (detection + deblend + crowding + faint and edges as chosen)"


@dataclasses.dataclass(frozen=True)
class Split:
  """Raw images, truth masks, truth (rows renumbered) and the gri S/N map every method is scored on."""
  rows: np.ndarray
  images: np.ndarray
  truth: dict
  snr: np.ndarray

  @property
  def true_masks(self) -> np.ndarray:
    return np.asarray(self.truth["mask"])


def split_rows(n: int, n_tune: int, n_score: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Disjoint (tuning rows, scored rows), sorted, from one permutation of range(n)."""
  if n_tune + n_score > n or n_tune < 1 or n_score < 1:
    raise ValueError(f"cannot take {n_tune} tuning + {n_score} scored rows from {n} labelled cutouts")
  order = np.random.default_rng([seed, 16]).permutation(n)
  return np.sort(order[:n_tune]), np.sort(order[n_tune:n_tune + n_score])


def make_split(read: Callable[[np.ndarray], np.ndarray], truth: Mapping, rows: np.ndarray) -> Split:
  images = np.asarray(read(rows), np.float32)
  return Split(rows, images, matching.truth_rows(truth, rows), matching.gri_snr_map(images))


def baseline_masks(name: str, images: np.ndarray, settings: Mapping, options: labelling.LabelOptions,
                   snr: np.ndarray | None = None) -> np.ndarray:
  """SEP or photutils masks of `images` with `settings` (a grid row), labelled by the common rule."""
  common = dict(min_area=options.min_area, centre_radius=options.centre_radius)
  if name == "SEP":
    return sep_baseline.sep_segment(images, settings["band"], settings["thresh_sigma"], minarea=options.min_area,
                                    deblend_cont=settings["deblend_cont"], **common)
  if name == "photutils":
    return photutils_baseline.photutils_segment(images, "gri", settings["nsigma"], options.min_area,
                                                settings["fwhm_px"], contrast=settings["contrast"],
                                                snr=snr, **common)
  raise ValueError(f"unknown baseline {name!r}; valid: ['SEP', 'photutils']")


def evaluate_split(masks: np.ndarray, split: Split) -> dict:
  return matching.evaluate(masks, split.true_masks, split.snr, split.truth)


def as_splits(splits: "Split | Sequence[Split]") -> list[Split]:
  return [splits] if isinstance(splits, Split) else list(splits)


def _tuning_metrics(m: Mapping) -> dict:
  return {"selection_score": matching.selection_score(m), "central_iou": m["central_iou"],
          "f1": m["detection"]["f1"], "neighbour_completeness": m["neighbour_completeness"],
          "neighbour_purity": m["neighbour_purity"]}


def _mean_of_defined(values) -> float:
  """The mean of the finite values (a neighbour metric is NaN on a split without neighbours); NaN if none is."""
  defined = [float(v) for v in values if v is not None and np.isfinite(v)]
  return float(np.mean(defined)) if defined else float("nan")


def grid_search(masks_for: Callable[[Mapping, int], np.ndarray], grid: Sequence[Mapping],
                splits: Split | Sequence[Split], least_neighbour_purity: float | None = None
                ) -> tuple[dict, list[dict]]:
  """(best setting, one row per setting) by `matching.selection_score` on one tuning split, or on several (one
  per data distribution: the mean of their scores, so one setting serves them all). `masks_for(setting, i)`
  segments split i. A row holds the mean of each metric over the splits (and, with several, each split's score).
  With `least_neighbour_purity` the best is taken among the settings whose mean neighbour purity reaches it (the
  issue's target is completeness at a purity of at least SEP's, which the score does not see); when none does,
  among all. A setting that predicts no neighbours has no purity and does not reach it."""
  splits = as_splits(splits)
  rows = []
  for setting in grid:
    per_split = [_tuning_metrics(evaluate_split(masks_for(setting, i), split)) for i, split in enumerate(splits)]
    row = {**setting, **{key: _mean_of_defined(m[key] for m in per_split) for key in per_split[0]}}
    if len(splits) > 1:
      row["selection_score_by_split"] = [float(m["selection_score"]) for m in per_split]
    rows.append(row)
  eligible = rows
  if least_neighbour_purity is not None:
    eligible = [r for r in rows if r["neighbour_purity"] >= least_neighbour_purity] or rows  # NaN >= x is False
  best = max(eligible, key=lambda r: np.nan_to_num(r["selection_score"], nan=-1.0))
  return {k: best[k] for k in grid[0]}, rows


def tune_baseline(name: str, grid: Sequence[Mapping], split: Split, options: labelling.LabelOptions,
                  snr_gri: np.ndarray | None = None) -> tuple[dict, list[dict]]:
  """The best grid setting of baseline `name` on a tuning split. `snr_gri` is that split's gri S/N map
  (photutils' detection image before filtering; the scoring map itself)."""
  return grid_search(lambda s, _: baseline_masks(name, split.images, s, options, snr_gri), grid, split)


def tuned_purity(name: str, grid: Sequence[Mapping], splits: Split | Sequence[Split],
                 options: labelling.LabelOptions) -> tuple[float, list[dict]]:
  """Baseline `name` tuned on each split in turn (as the scored runs tune it): the mean neighbour purity of its
  best settings (the floor of `grid_search`'s `least_neighbour_purity`), and those settings."""
  purities, settings = [], []
  for split in as_splits(splits):
    best, rows = tune_baseline(name, grid, split, options, split.snr)
    purities.append(next(r for r in rows if all(r[k] == v for k, v in best.items()))["neighbour_purity"])
    settings.append(best)
  return _mean_of_defined(purities), settings


def our_masks(fitted_by_share: Mapping[float, object], k: int, split: Split, options: labelling.LabelOptions,
              deblending: deblend.DeblendOptions, methods: Mapping[str, OurMethod],
              snr_sigma_px: float = 1.2, chunk: int = 64,
              foregrounds: dict | None = None,
              faint_options: faint.FaintOptions | None = faint.FaintOptions(),
              edge_options: edges.EdgeOptions | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """name -> (masks, flooded) of our methods on a split: one hypercolumn pass per segmenter (cached in
  `foregrounds` by share when given), then each method's refinements (`faint_options` / `edge_options` None: the
  tuning chose no faint sources / the clusters' own edges, so methods with `faint` / `edges` have none)."""
  foregrounds = {} if foregrounds is None else foregrounds
  snr = pipeline.smoothed_snr(split.images, snr_sigma_px)  # shared by every method (the slow part of refining)
  out = {}
  for name, method in methods.items():
    share = float(method.detection_share)
    fitted = fitted_by_share[share]
    if share not in foregrounds:
      foregrounds[share] = pipeline.foreground(fitted, k, split.images, chunk)
    refinements = pipeline.Refinements(deblending if method.deblend else None, method.crowding,
                                       faint_options if method.faint else None, snr_sigma_px=snr_sigma_px,
                                       edge_options=edge_options if method.edges else None)
    out[name] = pipeline.refine(fitted, k, foregrounds[share], split.images, options, refinements, chunk, snr)
  return out


def tune_refinements(fitted, k: int, splits: Split | Sequence[Split], options: labelling.LabelOptions,
                     base: deblend.DeblendOptions,
                     contrasts: Sequence[float] = DEBLEND_CONTRASTS,
                     faint_peaks: Sequence[float | None] = FAINT_PEAKS,
                     faint_low: float = faint.FaintOptions().low, snr_sigma_px: float = 1.2,
                     chunk: int = 64, edge_levels: Sequence[float | None] = EDGE_LEVELS,
                     edge_peak_fractions: Sequence[float | None] = EDGE_PEAK_FRACTIONS,
                     edge_min_peaks: Sequence[float | None] = EDGE_MIN_PEAKS,
                     least_neighbour_purity: float | None = None) -> tuple[dict, list[dict]]:
  """Our deblending contrast and faint-source peak (None: no faint sources) chosen together on a tuning split,
  with the segmenter `fitted` and the crowded-field rule on (the full method), then the isophote of the mask
  edges (None: the clusters' own) with those two fixed, then (when a level was chosen) its peak fraction and the
  least peak of a kept neighbour segment (None: all kept) together; one hypercolumn pass, then each setting's
  refinements.
  Whether the faint sources are added and the edges moved at all is thus the data's choice. With several tuning
  splits (one per data distribution) each setting is scored by their mean (`grid_search`); each step prefers the
  settings whose neighbour purity reaches `least_neighbour_purity` (`grid_search`)."""
  splits = as_splits(splits)
  object_pixels = [pipeline.foreground(fitted, k, split.images, chunk) for split in splits]
  snr = [pipeline.smoothed_snr(split.images, snr_sigma_px) for split in splits]

  def masks_for(setting, i):
    refinements = pipeline.Refinements(dataclasses.replace(base, contrast=setting["deblend_contrast"]), True,
                                       None if setting["faint_peak"] is None else
                                       faint.FaintOptions(setting["faint_peak"], faint_low),
                                       snr_sigma_px=snr_sigma_px, edge_options=edge_options_of(setting))
    return pipeline.refine(fitted, k, object_pixels[i], splits[i].images, options, refinements, chunk,
                           snr[i])[0]

  grid = [{"deblend_contrast": float(c), "faint_peak": None if p is None else float(p)}
          for c in contrasts for p in faint_peaks]
  best, rows = grid_search(masks_for, grid, splits, least_neighbour_purity)
  edge_grid = [{**best, "edge_level": None if e is None else float(e)} for e in edge_levels]
  best, edge_rows = grid_search(masks_for, edge_grid, splits, least_neighbour_purity)
  fraction_rows = []
  if best["edge_level"] is not None:  # the two act on the same faint segments: chosen together
    fraction_grid = [{**best, "edge_peak_fraction": None if f is None else float(f),
                      "edge_min_peak": None if p is None else float(p)}
                     for f in edge_peak_fractions for p in edge_min_peaks]
    best, fraction_rows = grid_search(masks_for, fraction_grid, splits, least_neighbour_purity)
  return {"edge_peak_fraction": None, "edge_min_peak": None, **best}, rows + edge_rows + fraction_rows


def edge_options_of(setting: dict) -> edges.EdgeOptions | None:
  """The mask-edge options of a tuning setting (None: the clusters' own edges)."""
  if setting.get("edge_level") is None:
    return None
  return edges.EdgeOptions(float(setting["edge_level"]), setting.get("edge_peak_fraction"),
                           setting.get("edge_min_peak"))


def score_all(masks_by_method: Mapping[str, np.ndarray], split: Split) -> dict[str, dict]:
  out = {}
  for name, masks in masks_by_method.items():
    t0 = time.perf_counter()
    out[name] = evaluate_split(masks, split)
    out[name]["scoring_seconds"] = time.perf_counter() - t0
  return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)


def _margins(counts: Mapping[str, Mapping[str, np.ndarray]], ours: str, sep: str, phot: str,
             rows: np.ndarray, mag_bins: Sequence[float]) -> dict[str, np.ndarray]:
  """The targets' margins (ours minus the best baseline; the neighbour check's smaller of the two) on the cutouts
  `rows` (B, N) of each resample at once."""
  def summed(name, key):
    return counts[name][key][rows].sum(axis=-1)

  def f1(name):
    return _ratio(2 * summed(name, "tp"), 2 * summed(name, "tp") + summed(name, "fp") + summed(name, "fn"))

  def mean_central(name, lo, hi):
    c, mag = counts[name]["central_iou"][rows], counts[name]["central_mag"][rows]
    keep = np.isfinite(c) & (mag >= lo) & (mag < hi)
    return _ratio(np.where(keep, c, 0.0).sum(axis=-1), keep.sum(axis=-1))

  out = {}
  mag_edges = matching.bin_edges(mag_bins)
  for lo, hi in zip(mag_edges[:-1], mag_edges[1:]):
    out[f"central IoU r {matching.bin_label(lo, hi)}"] = (
      mean_central(ours, lo, hi) - np.fmax(mean_central(sep, lo, hi), mean_central(phot, lo, hi)))
  out["F1 (S/N bin)"] = f1(ours) - np.fmax(f1(sep), f1(phot))
  completeness = {n: _ratio(summed(n, "nb_found"), summed(n, "nb_true")) for n in (ours, sep)}
  purity = {n: _ratio(summed(n, "nb_real"), summed(n, "nb_pred")) for n in (ours, sep)}
  # Undefined (NaN) when either is: a set without true neighbours has no completeness.
  out["neighbours"] = np.minimum(completeness[ours] - completeness[sep], purity[ours] - purity[sep])
  return out


def check_margins(counts: Mapping[str, Mapping[str, np.ndarray]], ours: str, n_resamples: int = 1000,
                  seed: int = 0, mag_bins: Sequence[float] = matching.MAG_BINS) -> dict[str, dict]:
  """How far each of the issue's targets is met, with its scatter: `counts` are each method's
  `matching.per_cutout_counts` on the same cutouts (SEP's and photutils' under names starting so). Per target
  the margin of ours over the best baseline on the scored cutouts (central IoU per r bin, F1 in the S/N bin; the
  neighbour check: the smaller of the completeness and purity margins over SEP), and its 5th and 95th percentiles
  over a paired bootstrap of the cutouts (every method on the same resampled cutouts; a cutout's objects move
  together). `verdict`: met / missed when the whole 90% interval is above / below 0 (>= 0 meets the neighbour
  check), otherwise within noise."""
  sep = next(n for n in counts if n.startswith("SEP"))
  phot = next(n for n in counts if n.startswith("photutils"))
  n = len(counts[ours]["central_iou"])
  observed = _margins(counts, ours, sep, phot, np.arange(n)[None], mag_bins)
  rows = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
  resampled = _margins(counts, ours, sep, phot, rows, mag_bins)
  out = {}
  for key, value in observed.items():
    lo, hi = np.nanpercentile(resampled[key], [5, 95]) if np.isfinite(resampled[key]).any() else (np.nan, np.nan)
    meets_at = (lambda v: v >= 0) if key == "neighbours" else (lambda v: v > 0)
    verdict = ("met" if meets_at(lo) else "missed" if not meets_at(hi) else "within noise") \
      if np.isfinite(lo) else "undefined"
    out[key] = {"margin": float(value[0]), "p5": float(lo), "p95": float(hi), "verdict": verdict}
  return out


def _by_bin(metrics: Mapping, key: str, value: str) -> dict[str, float]:
  return {row["bin"]: row[value] for row in metrics[key]}


def done_checks(scores: Mapping[str, Mapping], ours: str, snr_bin: str = "5-10") -> dict:
  """The issue's targets for method `ours` against the best of SEP and photutils (any name starting so):
  central IoU above both in every r bin, detection F1 above both at S/N 5-10, neighbour completeness at least
  SEP's at purity at least SEP's."""
  sep = next(v for n, v in scores.items() if n.startswith("SEP"))
  phot = next(v for n, v in scores.items() if n.startswith("photutils"))
  mine = scores[ours]
  by_mag = {b: (v, max(_by_bin(sep, "central_iou_by_mag", "central_iou")[b],
                       _by_bin(phot, "central_iou_by_mag", "central_iou")[b]))
            for b, v in _by_bin(mine, "central_iou_by_mag", "central_iou").items()}
  f1 = {n: _by_bin(v, "detection_by_snr", "f1")[snr_bin] for n, v in (("ours", mine), ("SEP", sep), ("photutils", phot))}
  checks = {
    "central_iou_above_baselines_every_r_bin": bool(all(a > b for a, b in by_mag.values() if np.isfinite(b))),
    "central_iou_by_r_bin_ours_vs_best_baseline": {b: [float(a), float(c)] for b, (a, c) in by_mag.items()},
    f"f1_snr_{snr_bin}_above_baselines": bool(f1["ours"] > max(f1["SEP"], f1["photutils"])),
    f"f1_snr_{snr_bin}": {n: float(v) for n, v in f1.items()},
    "neighbour_completeness_and_purity_at_least_sep": bool(
      mine["neighbour_completeness"] >= sep["neighbour_completeness"]
      and mine["neighbour_purity"] >= sep["neighbour_purity"]),
  }
  return checks
