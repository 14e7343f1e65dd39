"""The SEP baseline: Source Extractor's detection and segmentation of each cutout, tuned against truth."""

from typing import Mapping, Sequence

import numpy as np
import sep

from stargal_jax.segment import labelling, pixels, scoring


def _sep_snr_image(images_one: np.ndarray, idx: list[int], box: int, filter_size: int) -> np.ndarray:
  """One image's detection S/N map from SEP backgrounds: sum_b (x_b - back_b) / rms_b / sqrt(n),
  over the n bands of `idx` that hold any finite pixel."""
  total = np.zeros(images_one.shape[1:], dtype=np.float64)
  n_used = 0
  for b in idx:
    x = np.ascontiguousarray(images_one[b], dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.all():
      continue  # a band without data must not dilute the others
    n_used += 1
    x[bad] = 0.0
    bkg = sep.Background(x, mask=bad, bw=box, bh=box, fw=filter_size, fh=filter_size)
    rms = bkg.rms()
    with np.errstate(all="ignore"):
      chi = (x - bkg.back()) / rms
    chi[bad | ~np.isfinite(chi)] = 0.0
    total += chi
  return np.ascontiguousarray(total / np.sqrt(max(n_used, 1)))


def sep_segment(images: np.ndarray, band: str = "r", thresh_sigma: float = 1.5, minarea: int = 5,
                deblend_nthresh: int = 32, deblend_cont: float = 0.005, box: int = 32,
                filter_size: int = 1, min_area: int = 5, centre_radius: float = 5.0) -> np.ndarray:
  """SExtractor's algorithm (via SEP) on each cutout -> masks (N, H, W), same labelling rule.

  band: one letter or several ('gri'); the detection image is the S/N map summed over the bands
  (each band's `sep.Background` back and rms) over sqrt(n), i.e. unit per-pixel noise.
  `thresh_sigma` is SExtractor's DETECT_THRESH: in units of the per-pixel sigma, applied to the
  image after SEP's default 3 x 3 filter (normalised to unit sum, so the filtered noise is 0.375
  sigma: pure noise passes 1.0 sigma in 0.4% of pixels, 2.0 in none).
  Background: `box` x `box` meshes (32 on a 64 x 64 cutout = a 2 x 2 mesh; smaller boxes get
  biased high by the central object; the frames are already sky-subtracted), median filter of
  `filter_size` meshes. Detection: `minarea`, multi-threshold deblending (`deblend_nthresh`,
  `deblend_cont`), cleaning on. Each SEP object is one segment; `labelling.order_segments` then picks the
  central one and numbers the neighbours.
  """
  idx = pixels.band_indices(band)
  masks = np.zeros((images.shape[0],) + images.shape[2:], dtype=np.int32)
  for i in range(images.shape[0]):
    snr = _sep_snr_image(np.asarray(images[i]), idx, box, filter_size)
    _, segmap = sep.extract(snr, thresh_sigma, err=1.0, minarea=minarea,
                            deblend_nthresh=deblend_nthresh, deblend_cont=deblend_cont,
                            segmentation_map=True)
    masks[i] = labelling.order_segments(segmap, min_area, centre_radius)
  return masks


def tune_sep(images: np.ndarray, true_masks: np.ndarray, bands: Sequence[str] = ("r", "gri", "ugriz"),
             thresholds: Sequence[float] = (0.8, 1.0, 1.5, 2, 3, 5),
             nb_table: Mapping[str, np.ndarray] | None = None, **sep_kwargs) -> tuple[dict, list[dict]]:
  """Grid over detection band x threshold; best = highest central-object IoU.

  Tuned on the very truth it is scored on: an optimistic (upper-bound) baseline.
  Returns (best row, all rows); rows hold band, thresh_sigma and the main scores.
  """
  table = []
  for band in bands:
    for thresh in thresholds:
      s = scoring.score_masks(sep_segment(images, band, thresh, **sep_kwargs), true_masks, nb_table)
      table.append({"band": band, "thresh_sigma": float(thresh), "central_iou": s["central_iou"],
                    "object_iou": s["object_iou_pooled"],
                    "neighbour_completeness": s["neighbour_completeness"],
                    "neighbour_purity": s["neighbour_purity"],
                    "false_object_pixels_fraction": s["false_object_pixels_fraction"]})
  best = max(table, key=lambda r: np.nan_to_num(r["central_iou"], nan=-1.0))
  return best, table


def sep_kwargs(seg_config) -> dict:
  return dict(minarea=int(seg_config.sep_minarea), min_area=int(seg_config.min_area),
              centre_radius=float(seg_config.centre_radius))
