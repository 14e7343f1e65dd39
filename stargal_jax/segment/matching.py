"""Object-level segmentation metrics as the field uses them (LSST DESC BlendingToolKit style), one
implementation for every method: true and predicted objects matched one-to-one by mask overlap; detection
precision, recall and F1 by S/N bin; mask IoU of matched objects and central-object IoU by true r magnitude;
blend-aware numbers (neighbours, touching footprints).

Matching rule (`match_objects`): in each cutout, every true object (a label of the truth mask: 1 central,
2, 3, ... neighbours; objects of the truth table without a truth pixel are below the truth's own isophote and
are not counted) and every predicted segment (a label of the predicted mask) form a pair when their IoU is at
least `min_iou`; the one-to-one assignment maximising the summed IoU over such pairs is taken (Hungarian,
`scipy.optimize.linear_sum_assignment`). A matched true object is detected; an unmatched prediction is false.

S/N of an object (`footprint_snr`): the isophotal S/N in its own footprint (true mask for true objects, the
segment for predictions) on the gri detection S/N image (`pixels.snr_image`: unit noise per pixel), i.e.
sum(S/N) / sqrt(area), as SExtractor's FLUX_ISO / FLUXERR_ISO. Per S/N bin, a true positive counts in its true
object's bin, a miss in its own (true) bin, a false detection in the bin of its measured S/N:
precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN).
"""

import dataclasses
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage, optimize

from stargal_jax.segment import pixels


MIN_IOU = 0.1  # headline rule: any real overlap (one-to-one); `STRICT_IOU` is also reported
STRICT_IOU = 0.5  # COCO's rule: at IoU > 0.5 the match is unique without any assignment
SNR_BINS = (5.0, 10.0, 20.0, 50.0)  # bins (-inf, 5), [5, 10), [10, 20), [20, 50), [50, inf)
MAG_BINS = (19.0, 21.0)  # true r magnitude bins (-inf, 19), [19, 21), [21, inf)


def iou_matrix(true_mask: np.ndarray, pred_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(true labels (T,), predicted labels (P,), IoU (T, P)) of one cutout's two label images (0 = none)."""
  t = np.asarray(true_mask, np.int64).ravel()
  p = np.asarray(pred_mask, np.int64).ravel()
  t_labels, p_labels = np.unique(t[t > 0]), np.unique(p[p > 0])
  if t_labels.size == 0 or p_labels.size == 0:
    return t_labels, p_labels, np.zeros((t_labels.size, p_labels.size))
  t_index = np.zeros(t.max() + 1, np.int64)
  t_index[t_labels] = np.arange(1, t_labels.size + 1)  # 0 stays background
  p_index = np.zeros(p.max() + 1, np.int64)
  p_index[p_labels] = np.arange(1, p_labels.size + 1)
  ti, pi = t_index[t], p_index[p]
  joint = np.bincount(ti * (p_labels.size + 1) + pi, minlength=(t_labels.size + 1) * (p_labels.size + 1))
  joint = joint.reshape(t_labels.size + 1, p_labels.size + 1)
  inter = joint[1:, 1:].astype(np.float64)
  area_t, area_p = joint[1:, :].sum(axis=1), joint[:, 1:].sum(axis=0)
  return t_labels, p_labels, inter / (area_t[:, None] + area_p[None, :] - inter)


def match_objects(iou: np.ndarray, min_iou: float = MIN_IOU) -> list[tuple[int, int]]:
  """One-to-one (row, column) pairs of an IoU matrix: the assignment maximising the summed IoU over pairs with
  IoU >= min_iou (pairs below it cannot be chosen)."""
  if iou.size == 0:
    return []
  allowed = iou >= min_iou
  if not allowed.any():
    return []
  # Square with a "no match" column per row and row per column (weight 0), so the optimum may leave objects
  # unmatched; a forbidden pair weighs far below zero and is never taken.
  t, p = iou.shape
  weight = np.zeros((t + p, t + p))
  weight[:t, :p] = np.where(allowed, iou, -1e6)
  rows, cols = optimize.linear_sum_assignment(weight, maximize=True)
  return [(int(r), int(c)) for r, c in zip(rows, cols) if r < t and c < p and allowed[r, c]]


def footprint_snr(snr_map: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Isophotal S/N of each label's footprint in one cutout: sum of the unit-noise S/N map / sqrt(area)."""
  labels = np.asarray(labels)
  if labels.size == 0:
    return np.zeros(0)
  total = np.asarray(ndimage.sum_labels(snr_map, mask, labels), np.float64)
  area = np.asarray(ndimage.sum_labels(np.ones(mask.shape), mask, labels), np.float64)
  return total / np.sqrt(np.maximum(area, 1.0))


def touching_labels(mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """(len(labels),) bool: whose footprint touches (8-adjacent) or overlaps another label's footprint."""
  out = np.zeros(len(labels), bool)
  structure = np.ones((3, 3), bool)
  for j, lab in enumerate(labels):
    grown = ndimage.binary_dilation(mask == lab, structure=structure)
    out[j] = bool(np.any(grown & (mask > 0) & (mask != lab)))
  return out


@dataclasses.dataclass(frozen=True)
class ObjectTable:
  """Every true object and every predicted segment of a set of cutouts, with the matching."""
  true_image: np.ndarray  # (T,) cutout index
  true_label: np.ndarray  # (T,) label in the truth mask (1 = central)
  true_snr: np.ndarray    # (T,) isophotal S/N in the true footprint
  true_mag: np.ndarray    # (T,) true r magnitude (NaN when unknown)
  true_blended: np.ndarray  # (T,) its footprint touches another true object's
  true_match: np.ndarray  # (T,) matched predicted label, 0 = missed
  true_iou: np.ndarray    # (T,) IoU with the matched prediction (0 = missed)
  pred_image: np.ndarray  # (P,)
  pred_label: np.ndarray  # (P,) label in the predicted mask (1 = central)
  pred_snr: np.ndarray    # (P,) isophotal S/N in the predicted footprint
  pred_match: np.ndarray  # (P,) matched true label, 0 = false


def true_magnitudes(truth: Mapping[str, np.ndarray] | None, n: int) -> dict[tuple[int, int], float]:
  """(cutout, truth label) -> true r magnitude: the central's from `mag`, neighbours' from the table."""
  out: dict[tuple[int, int], float] = {}
  if truth is None:
    return out
  if "mag" in truth:
    for i, m in enumerate(np.asarray(truth["mag"])[:n, 2]):
      out[(i, 1)] = float(m)
  if "nb_object" in truth:
    for i, lab, m in zip(np.asarray(truth["nb_object"]), np.asarray(truth["nb_label"]),
                         np.asarray(truth["nb_mag_r"])):
      if i < n:
        out[(int(i), int(lab))] = float(m)
  return out


def object_table(pred_masks: np.ndarray, true_masks: np.ndarray, snr_map: np.ndarray,
                 magnitudes: Mapping[tuple[int, int], float] | None = None,
                 min_iou: float = MIN_IOU) -> ObjectTable:
  """Matches every cutout (see the module docstring) and tabulates both sides."""
  pred_masks, true_masks = np.asarray(pred_masks), np.asarray(true_masks)
  if pred_masks.shape != true_masks.shape or snr_map.shape != true_masks.shape:
    raise ValueError(f"pred {pred_masks.shape}, true {true_masks.shape} and S/N {snr_map.shape} differ in shape")
  magnitudes = magnitudes or {}
  cols = {k: [] for k in ("ti", "tl", "ts", "tm", "tb", "tmatch", "tiou", "pi", "pl", "ps", "pmatch")}
  for i in range(len(true_masks)):
    t_labels, p_labels, iou = iou_matrix(true_masks[i], pred_masks[i])
    pairs = match_objects(iou, min_iou)
    t_match, t_iou = np.zeros(t_labels.size, np.int64), np.zeros(t_labels.size)
    p_match = np.zeros(p_labels.size, np.int64)
    for r, c in pairs:
      t_match[r], t_iou[r], p_match[c] = p_labels[c], iou[r, c], t_labels[r]
    cols["ti"].append(np.full(t_labels.size, i))
    cols["tl"].append(t_labels)
    cols["ts"].append(footprint_snr(snr_map[i], true_masks[i], t_labels))
    cols["tm"].append(np.array([magnitudes.get((i, int(lab)), np.nan) for lab in t_labels], np.float64))
    cols["tb"].append(touching_labels(true_masks[i], t_labels))
    cols["tmatch"].append(t_match)
    cols["tiou"].append(t_iou)
    cols["pi"].append(np.full(p_labels.size, i))
    cols["pl"].append(p_labels)
    cols["ps"].append(footprint_snr(snr_map[i], pred_masks[i], p_labels))
    cols["pmatch"].append(p_match)
  cat = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}
  return ObjectTable(cat["ti"].astype(np.int64), cat["tl"].astype(np.int64), cat["ts"].astype(np.float64),
                     cat["tm"].astype(np.float64), cat["tb"].astype(bool), cat["tmatch"].astype(np.int64),
                     cat["tiou"].astype(np.float64), cat["pi"].astype(np.int64), cat["pl"].astype(np.int64),
                     cat["ps"].astype(np.float64), cat["pmatch"].astype(np.int64))


def bin_edges(bins: Sequence[float]) -> np.ndarray:
  return np.concatenate([[-np.inf], np.asarray(bins, np.float64), [np.inf]])


def bin_index(values: np.ndarray, bins: Sequence[float]) -> np.ndarray:
  """Bin of each value for edges (-inf, b0), [b0, b1), ..., [bn, inf); NaN -> -1 (in no bin)."""
  values = np.asarray(values, np.float64)
  idx = np.searchsorted(np.asarray(bins, np.float64), values, side="right")
  return np.where(np.isfinite(values) | np.isinf(values), idx, -1)


def bin_label(lo: float, hi: float) -> str:
  if lo == -np.inf:
    return f"< {hi:g}"
  if hi == np.inf:
    return f">= {lo:g}"
  return f"{lo:g}-{hi:g}"


def _rate(num: float, den: float) -> float:
  return float(num / den) if den else float("nan")


def detection_counts(tp: int, fp: int, fn: int) -> dict:
  return {"tp": int(tp), "fp": int(fp), "fn": int(fn), "precision": _rate(tp, tp + fp),
          "recall": _rate(tp, tp + fn), "f1": _rate(2 * tp, 2 * tp + fp + fn)}


def detection_by_snr(table: ObjectTable, snr_bins: Sequence[float] = SNR_BINS) -> list[dict]:
  """Precision, recall, F1 per S/N bin (TP and FN by the true S/N, FP by the measured S/N)."""
  t_bin, p_bin = bin_index(table.true_snr, snr_bins), bin_index(table.pred_snr, snr_bins)
  edges = bin_edges(snr_bins)
  rows = []
  for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
    found = table.true_match[t_bin == b] > 0
    fp = int(np.sum((table.pred_match == 0) & (p_bin == b)))
    rows.append({"bin": bin_label(lo, hi), "lo": float(lo), "hi": float(hi), "n_true": int(found.size),
                 **detection_counts(int(found.sum()), fp, int((~found).sum()))})
  return rows


def _mean(values: np.ndarray) -> float:
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  return float(values.mean()) if values.size else float("nan")


def mean_by_bin(values: np.ndarray, keys: np.ndarray, bins: Sequence[float], name: str) -> list[dict]:
  """Mean of `values` per bin of `keys`."""
  idx = bin_index(keys, bins)
  edges = bin_edges(bins)
  return [{"bin": bin_label(lo, hi), "lo": float(lo), "hi": float(hi), "n": int(np.sum(idx == b)),
           name: _mean(values[idx == b])} for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]


def central_iou(pred_masks: np.ndarray, true_masks: np.ndarray) -> np.ndarray:
  """(N,) IoU of the predicted central segment (label 1) with the true central (label 1); NaN when both are
  empty. A cutout whose central object was not found scores 0."""
  a, b = np.asarray(pred_masks) == 1, np.asarray(true_masks) == 1
  inter = np.logical_and(a, b).sum(axis=(1, 2))
  union = np.logical_or(a, b).sum(axis=(1, 2))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def evaluate(pred_masks: np.ndarray, true_masks: np.ndarray, snr_map: np.ndarray,
             truth: Mapping[str, np.ndarray] | None = None, snr_bins: Sequence[float] = SNR_BINS,
             mag_bins: Sequence[float] = MAG_BINS, min_iou: float = MIN_IOU) -> dict:
  """Every object-level number of one method on one set (see the module docstring). `truth` gives the true r
  magnitudes (`mag` of the centrals, the neighbour table) and `n_neighbours`; `snr_map` is the gri S/N image."""
  pred_masks, true_masks = np.asarray(pred_masks), np.asarray(true_masks)
  n = len(true_masks)
  table = object_table(pred_masks, true_masks, snr_map, true_magnitudes(truth, n), min_iou)
  strict = table.true_iou >= STRICT_IOU
  fp_all = int(np.sum(table.pred_match == 0))
  matched = table.true_match > 0
  out = {"n_cutouts": int(n), "min_iou": float(min_iou), "n_true": int(table.true_label.size),
         "n_pred": int(table.pred_label.size),
         "detection": detection_counts(int(matched.sum()), fp_all, int((~matched).sum())),
         "detection_strict": detection_counts(int(strict.sum()), int(table.pred_label.size - strict.sum()),
                                              int((~strict).sum())),
         "detection_by_snr": detection_by_snr(table, snr_bins)}
  out["matched_iou"] = _mean(table.true_iou[matched])
  out["matched_iou_by_mag"] = mean_by_bin(table.true_iou[matched], table.true_mag[matched], mag_bins, "iou")
  c_iou = central_iou(pred_masks, true_masks)
  out["central_iou"] = _mean(c_iou)
  out["central_found"] = float(np.mean((pred_masks == 1).any(axis=(1, 2))))
  central_mag = np.asarray(truth["mag"])[:n, 2] if truth is not None and "mag" in truth else np.full(n, np.nan)
  out["central_iou_by_mag"] = mean_by_bin(c_iou, central_mag, mag_bins, "central_iou")
  # Blend-aware: true neighbours (label >= 2) found as neighbours; predicted neighbours that are true ones.
  true_nb, pred_nb = table.true_label >= 2, table.pred_label >= 2
  nb_found = true_nb & (table.true_match >= 2)
  nb_real = pred_nb & (table.pred_match >= 2)
  out["neighbour_completeness"] = _rate(nb_found.sum(), true_nb.sum())
  out["neighbour_purity"] = _rate(nb_real.sum(), pred_nb.sum())
  out["n_true_neighbours"], out["n_pred_neighbours"] = int(true_nb.sum()), int(pred_nb.sum())
  out["neighbour_completeness_by_mag"] = mean_by_bin(nb_found[true_nb].astype(float), table.true_mag[true_nb],
                                                     mag_bins, "completeness")
  # Touching footprints: the objects a deblender must separate.
  out["blended_recall"] = _rate(np.sum(matched & table.true_blended), table.true_blended.sum())
  out["n_blended"] = int(table.true_blended.sum())
  has_nb = (true_masks >= 2).any(axis=(1, 2))
  out["central_iou_with_neighbours"] = _mean(c_iou[has_nb])
  out["central_iou_without_neighbours"] = _mean(c_iou[~has_nb])
  central_blended = np.zeros(n, bool)
  central_blended[table.true_image[(table.true_label == 1) & table.true_blended]] = True
  out["central_iou_blended"] = _mean(c_iou[central_blended])
  # Pixel level: object vs background.
  obj_p, obj_t = pred_masks > 0, true_masks > 0
  out["object_iou_pooled"] = _rate(np.sum(obj_p & obj_t), np.sum(obj_p | obj_t))
  out["background_called_object"] = _rate(np.sum(obj_p & ~obj_t), np.sum(~obj_t))
  return out


def per_cutout_counts(pred_masks: np.ndarray, true_masks: np.ndarray, snr_map: np.ndarray,
                      truth: Mapping[str, np.ndarray] | None = None, snr_bin: tuple[float, float] = (5.0, 10.0),
                      min_iou: float = MIN_IOU) -> dict[str, np.ndarray]:
  """Per cutout (arrays of length N), the numbers the issue's targets are sums or means of, so that cutouts can
  be resampled (`segment.protocol.check_margins`): `central_iou` and the central's true r magnitude
  `central_mag`; `tp`, `fp`, `fn` in the S/N bin [lo, hi) (counted as `evaluate`'s `detection_by_snr`);
  `nb_true`, `nb_found` (true neighbours, found as neighbours), `nb_pred`, `nb_real` (predicted neighbours, true
  ones)."""
  pred_masks, true_masks = np.asarray(pred_masks), np.asarray(true_masks)
  n = len(true_masks)
  table = object_table(pred_masks, true_masks, snr_map, None, min_iou)
  t_in = bin_index(table.true_snr, snr_bin) == 1  # the bin [lo, hi), as `detection_by_snr` bins
  p_in = bin_index(table.pred_snr, snr_bin) == 1
  found = table.true_match > 0
  true_nb, pred_nb = table.true_label >= 2, table.pred_label >= 2

  def per_image(image: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return np.bincount(image, weights=weight.astype(np.float64), minlength=n)[:n]

  central_mag = np.asarray(truth["mag"])[:n, 2] if truth is not None and "mag" in truth else np.full(n, np.nan)
  return {"central_iou": central_iou(pred_masks, true_masks), "central_mag": np.asarray(central_mag, np.float64),
          "tp": per_image(table.true_image, t_in & found), "fn": per_image(table.true_image, t_in & ~found),
          "fp": per_image(table.pred_image, p_in & (table.pred_match == 0)),
          "nb_true": per_image(table.true_image, true_nb),
          "nb_found": per_image(table.true_image, true_nb & (table.true_match >= 2)),
          "nb_pred": per_image(table.pred_image, pred_nb),
          "nb_real": per_image(table.pred_image, pred_nb & (table.pred_match >= 2))}


def gri_snr_map(images: np.ndarray) -> np.ndarray:
  """The S/N image every method is scored on (`pixels.snr_image`, gri, robust per-cutout background)."""
  return pixels.snr_image(np.asarray(images), "gri")


def selection_score(metrics: Mapping) -> float:
  """The one number every method's settings are chosen by, on a tuning split: the mean of the central-object
  IoU and the detection F1 (both in [0, 1]; the first rewards the mask, the second finding and separating)."""
  return 0.5 * (float(metrics["central_iou"]) + float(metrics["detection"]["f1"]))


def truth_rows(truth: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
  """The truth of labelled rows `rows` (in that order): per-object arrays indexed, the neighbour table kept for
  those rows with `nb_object` renumbered to positions in `rows`."""
  rows = np.asarray(rows, np.int64)
  n = len(np.asarray(truth["mask"]))
  position = np.full(n, -1, np.int64)
  position[rows] = np.arange(len(rows))
  out = {k: np.asarray(v)[rows] for k, v in truth.items() if not k.startswith("nb_")}
  if "nb_object" in truth:
    keep = position[np.asarray(truth["nb_object"], np.int64)] >= 0
    out.update({k: np.asarray(v)[keep] for k, v in truth.items() if k.startswith("nb_")})
    out["nb_object"] = position[np.asarray(truth["nb_object"], np.int64)[keep]]
  return out
