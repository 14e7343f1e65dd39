"""Masks scored against the simulator's truth: central-object IoU, object pixel IoU, neighbour completeness and
purity (by magnitude), and the tables the segmentation job reports (the k sweep)."""

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from stargal_jax import BANDS
from stargal_jax.segment import pixel_kmeans, pixels


NEIGHBOUR_FIELDS = ("nb_object", "nb_label", "nb_mag_r", "nb_x", "nb_y")


def _iou(a: np.ndarray, b: np.ndarray, axis=None) -> np.ndarray:
  inter = np.logical_and(a, b).sum(axis=axis)
  union = np.logical_or(a, b).sum(axis=axis)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def neighbour_table_from_masks(true_masks: np.ndarray) -> dict[str, np.ndarray]:
  """Truth neighbour table from masks alone (labels >= 2; centre = pixel centroid; magnitude NaN)."""
  rows = {f: [] for f in NEIGHBOUR_FIELDS}
  for i, m in enumerate(true_masks):
    labels = np.unique(m[m >= 2])
    if labels.size == 0:
      continue
    centroids = ndimage.center_of_mass(np.ones(m.shape), m, labels)
    for lab, (cy, cx) in zip(labels, centroids):
      for f, v in zip(NEIGHBOUR_FIELDS, (i, lab, np.nan, cx, cy)):
        rows[f].append(v)
  return {"nb_object": np.asarray(rows["nb_object"], dtype=np.int64),
          "nb_label": np.asarray(rows["nb_label"], dtype=np.int64),
          "nb_mag_r": np.asarray(rows["nb_mag_r"], dtype=np.float64),
          "nb_x": np.asarray(rows["nb_x"], dtype=np.float64),
          "nb_y": np.asarray(rows["nb_y"], dtype=np.float64)}


def _mean_or_nan(flags: np.ndarray) -> float:
  return float(flags.mean()) if flags.size else float("nan")


def _centre_pixel(x: float, y: float, shape: tuple[int, int]) -> tuple[int, int] | None:
  """(row, col) of the pixel containing position (x = column, y = row), or None if outside."""
  if not (np.isfinite(x) and np.isfinite(y)):
    return None
  row, col = int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
  return (row, col) if 0 <= row < shape[0] and 0 <= col < shape[1] else None


def _mag_bin_edges(mag_bins: Sequence[float]) -> np.ndarray:
  return np.concatenate([[-np.inf], np.asarray(mag_bins, dtype=np.float64), [np.inf]])


def _by_bin(mags: np.ndarray, hits: np.ndarray, mag_bins: Sequence[float], rate: str) -> list[dict]:
  edges = _mag_bin_edges(mag_bins)
  rows = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    sel = (mags >= lo) & ((mags < hi) | (hi == np.inf))  # the last bin takes +inf (no flux)
    n, k = int(sel.sum()), int(hits[sel].sum())
    rows.append({"mag_lo": float(lo), "mag_hi": float(hi), "n": n, "n_hit": k,
                 rate: k / n if n else float("nan")})
  return rows


def score_neighbours(pred_masks: np.ndarray, true_masks: np.ndarray,
                     nb_table: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
  """Per-true-neighbour detection flags and per-predicted-neighbour reality flags.

  A true neighbour (a table row) is detected when some predicted neighbour component (pred label
  >= 2) overlaps its true pixels (true == nb_label in its image) or contains its centre pixel
  (nb_x, nb_y). A predicted neighbour component is real when it overlaps any true neighbour's
  pixels (true label >= 2) or contains a true neighbour's centre pixel; components that touch only
  the central object (shreds of it) or only background (noise) are false.
  Returns detected (n_true,), true_mag (n_true,), real (n_pred,), pred_image, pred_label (n_pred,).
  """
  table = neighbour_table_from_masks(true_masks) if nb_table is None else nb_table
  nb_obj = np.asarray(table["nb_object"], dtype=np.int64)
  nb_lab = np.asarray(table["nb_label"], dtype=np.int64)
  nb_x, nb_y = np.asarray(table["nb_x"], np.float64), np.asarray(table["nb_y"], np.float64)
  shape = pred_masks.shape[1:]
  detected = np.zeros(nb_obj.size, dtype=bool)
  for j, (i, lab) in enumerate(zip(nb_obj, nb_lab)):
    pred_nb = pred_masks[i] >= 2
    overlaps = lab >= 2 and bool(np.any(pred_nb & (true_masks[i] == lab)))
    centre = _centre_pixel(nb_x[j], nb_y[j], shape)
    detected[j] = overlaps or (centre is not None and bool(pred_nb[centre]))
  real, pred_image, pred_label = [], [], []
  for i in range(pred_masks.shape[0]):
    centres = [c for j in np.flatnonzero(nb_obj == i)
               if (c := _centre_pixel(nb_x[j], nb_y[j], shape)) is not None]
    true_nb = true_masks[i] >= 2
    for lab in np.unique(pred_masks[i][pred_masks[i] >= 2]):
      comp = pred_masks[i] == lab
      real.append(bool(np.any(comp & true_nb)) or any(comp[c] for c in centres))
      pred_image.append(i)
      pred_label.append(int(lab))
  true_mag = np.asarray(table.get("nb_mag_r", np.full(nb_obj.size, np.nan)), dtype=np.float64)
  return {"detected": detected, "true_mag": true_mag, "real": np.asarray(real, dtype=bool),
          "pred_image": np.asarray(pred_image, dtype=np.int64),
          "pred_label": np.asarray(pred_label, dtype=np.int64)}


def component_magnitudes(images: np.ndarray, masks: np.ndarray, image_index: np.ndarray,
                         labels: np.ndarray, band: str = "r") -> np.ndarray:
  """Measured magnitude of mask components: 22.5 - 2.5 log10(sum of background-subtracted flux).

  The background level is the robust level of the image's label-0 pixels; non-positive flux -> +inf.
  """
  b = pixels.band_indices(band)[0]
  level, _ = pixels.robust_background(images[:, b:b + 1], exclude=masks > 0)
  mags = np.full(len(labels), np.inf)
  for j, (i, lab) in enumerate(zip(image_index, labels)):
    flux = np.nansum(images[i, b][masks[i] == lab] - np.nan_to_num(level[i, 0]))
    if flux > 0:
      mags[j] = pixels.ZERO_POINT_NMGY - 2.5 * np.log10(flux)
  return mags


def score_masks(pred_masks: np.ndarray, true_masks: np.ndarray,
                nb_table: Mapping[str, np.ndarray] | None = None,
                mag_bins: Sequence[float] = (18, 20, 22), images: np.ndarray | None = None,
                central_mag: np.ndarray | None = None) -> dict:
  """Scores predicted masks against truth masks (both (N, H, W) int, 0 / 1 central / >= 2 neighbours).

  central_iou: mean over images of IoU(pred == 1, true == 1) (images where both are empty skipped).
  object_iou_pooled / object_iou_mean: IoU of pred > 0 vs true > 0 over all pixels / per image.
  false_object_pixels_fraction: fraction of true background pixels called object;
  missed_object_pixels_fraction: fraction of true object pixels called background.
  Neighbour completeness and purity as in `score_neighbours`; completeness per bin of the true
  neighbour r magnitude (`nb_table['nb_mag_r']`; bins (-inf, b0), [b0, b1), ..., [bn, inf));
  purity per bin of the component's measured r magnitude when `images` is given (a false component
  has no true magnitude). Without `nb_table`, neighbours come from the truth masks (no magnitudes).
  With `central_mag` (N,) (the central objects' true r magnitudes), central_iou_by_mag gives the mean
  central IoU per magnitude bin: where a method wins or loses (bright extended objects vs faint ones).
  """
  pred_masks, true_masks = np.asarray(pred_masks), np.asarray(true_masks)
  if pred_masks.shape != true_masks.shape:
    raise ValueError(f"pred {pred_masks.shape} and true {true_masks.shape} masks differ in shape")
  central = _iou(pred_masks == 1, true_masks == 1, axis=(1, 2))
  obj_pred, obj_true = pred_masks > 0, true_masks > 0
  nb = score_neighbours(pred_masks, true_masks, nb_table)
  n_true, n_pred = nb["detected"].size, nb["real"].size
  with pixels.quiet_nan_warnings():
    result = {
      "n_images": int(pred_masks.shape[0]),
      "central_iou": float(np.nanmean(central)),
      "central_iou_per_image": central,
      "object_iou_pooled": float(_iou(obj_pred, obj_true)),
      "object_iou_mean": float(np.nanmean(_iou(obj_pred, obj_true, axis=(1, 2)))),
      "false_object_pixels_fraction": _mean_or_nan(obj_pred[~obj_true]),
      "missed_object_pixels_fraction": _mean_or_nan(~obj_pred[obj_true]),
      "n_true_neighbours": n_true,
      "n_pred_neighbours": n_pred,
      "neighbour_completeness": _mean_or_nan(nb["detected"]),
      "neighbour_purity": _mean_or_nan(nb["real"]),
      "completeness_by_mag": _by_bin(nb["true_mag"], nb["detected"], mag_bins, "completeness"),
    }
  if central_mag is not None:
    edges = _mag_bin_edges(mag_bins)
    mags = np.asarray(central_mag, dtype=np.float64)
    result["central_iou_by_mag"] = []
    for lo, hi in zip(edges[:-1], edges[1:]):
      sel = (mags >= lo) & ((mags < hi) | (hi == np.inf)) & np.isfinite(central)
      result["central_iou_by_mag"].append({"mag_lo": float(lo), "mag_hi": float(hi), "n": int(sel.sum()),
                                           "central_iou": float(central[sel].mean()) if sel.any() else float("nan")})
  if images is not None:
    mags = component_magnitudes(images, pred_masks, nb["pred_image"], nb["pred_label"])
    result["purity_by_mag"] = _by_bin(mags, nb["real"], mag_bins, "purity")
  return result


def truth_neighbour_table(truth: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {f: np.asarray(truth[f]) for f in NEIGHBOUR_FIELDS}


def subset_truth(truth: Mapping[str, np.ndarray], n: int) -> dict:
  """The truth of the first n labelled objects (per-object arrays and the neighbour table)."""
  keep = np.asarray(truth["nb_object"]) < n
  return {k: (np.asarray(v)[keep] if k.startswith("nb_") else np.asarray(v)[:n]) for k, v in truth.items()}


def central_found_fraction(masks: np.ndarray) -> float:
  """Fraction of cutouts with a central object (mask label 1), cf. the study's '38 of 40'."""
  return float((masks == 1).any(axis=(1, 2)).mean())


def summarize_scores(scores: Mapping, masks: np.ndarray) -> dict:
  """`score_masks` output without its per-image arrays, plus the central-found fraction."""
  out = {k: v for k, v in scores.items() if not isinstance(v, np.ndarray)}
  out["central_found_fraction"] = central_found_fraction(masks)
  return out


def score_against_truth(masks: np.ndarray, truth: Mapping[str, np.ndarray], images: np.ndarray,
                        mag_bins: Sequence[float]) -> dict:
  central_mag = np.asarray(truth["mag"])[:, BANDS.index("r")] if "mag" in truth else None
  scores = score_masks(masks, np.asarray(truth["mask"]), truth_neighbour_table(truth), mag_bins,
                           images=images, central_mag=central_mag)
  return summarize_scores(scores, masks)


def k_sweep_rows(masks_by_k: Mapping[int, np.ndarray], segmenters: Mapping[int, pixel_kmeans.Segmenter],
                 truth: Mapping[str, np.ndarray] | None) -> list[dict]:
  """One row per k: object clusters, the fraction of sampled pixels they hold, and (with truth) scores."""
  rows = []
  for k in sorted(masks_by_k):
    s = segmenters[k]
    row = {"k": k, "n_object_clusters": int(s.is_object.sum()),
           "object_pixel_fraction_sample": float(s.cluster_fraction[s.is_object].sum()),
           "central_found_fraction": central_found_fraction(masks_by_k[k]),
           "pred_neighbours_per_cutout": float(masks_by_k[k].max(axis=(1, 2)).clip(1).mean() - 1)}
    if truth is not None:
      sc = score_masks(masks_by_k[k], np.asarray(truth["mask"]), truth_neighbour_table(truth))
      row.update({"central_iou": sc["central_iou"], "object_iou": sc["object_iou_pooled"],
                  "neighbour_completeness": sc["neighbour_completeness"],
                  "neighbour_purity": sc["neighbour_purity"],
                  "false_object_pixels_fraction": sc["false_object_pixels_fraction"],
                  "missed_object_pixels_fraction": sc["missed_object_pixels_fraction"]})
    rows.append(row)
  return rows
