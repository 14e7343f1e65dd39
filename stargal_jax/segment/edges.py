"""Mask edges at an isophote: each segment's outline is moved to a level of the smoothed S/N map, the
segments themselves (which objects there are, which pixel belongs to which) staying the clusters' choice.

Why: the hypercolumn clusters find objects and separate them, but where an object's light sinks into the sky
they cut by the feature space's boundary, which follows no surface brightness: on simulator v2.0 the central
masks of the full method were 0.05-0.12 below SEP's and photutils' in IoU in every magnitude bin, while its
detections were as good or better. A mask truth (and an astronomer) defines an object's footprint by an
isophote; SExtractor's is its detection threshold. Here the level is a setting chosen on held-back data
(`segment.protocol.tune_refinements`), like SEP's threshold.

Per cutout: the pixels of each segment above `level` are its seeds; every pixel above `level` reachable from
them through pixels above `level` joins the segment whose seed reaches it first in a priority flood
(`deblend.priority_flood`: down the S/N slope, so touching objects split where their light meets); pixels
below `level` leave their segment. Pixels above `level` that no segment reaches stay background (no new
detections: the faint-source addition is `segment.faint`). A segment with no pixel above `level` (a faint
detection) keeps its pixels.

After the edges, `keep_significant` (with `min_peak`) drops every neighbour segment whose peak in the same map is
below `min_peak` sigma, as SExtractor keeps a detection only above its threshold on the filtered image. Why: on the
default data's tuning split most false detections at isophotal S/N 5-10 lie on no true or catalogued object (22 of
25 before the edges, 22 of 30 after them at 8 sigma and peak fraction 0.5; 13 of the 30 touch the cutout border),
with peaks of 6-10 sigma; the peak fraction's low isophote grows such segments (median 10 -> 30 px), lifting 8 of
them from an S/N < 5 into 5-10. Few are true objects shrunk or split by the edges (2 and 6 of the 30).
"""

import dataclasses

import numpy as np
from scipy import ndimage

from stargal_jax.segment import deblend


@dataclasses.dataclass(frozen=True)
class EdgeOptions:
  """`follow_isophote`'s level (sigma of the smoothed S/N map) and peak fraction (None: one level for all), and
  `keep_significant`'s least peak of a neighbour segment after the edges (None: every segment kept)."""
  level: float = 8.0
  peak_fraction: float | None = None
  min_peak: float | None = None

  @classmethod
  def from_config(cls, seg_config) -> "EdgeOptions":
    fraction, min_peak = float(seg_config.edge_peak_fraction), float(seg_config.edge_min_peak)
    return cls(float(seg_config.edge_level), fraction if fraction > 0 else None, min_peak if min_peak > 0 else None)


def follow_isophote(masks: np.ndarray, snr: np.ndarray, level: float,
                    peak_fraction: float | None = None) -> np.ndarray:
  """Masks (N, H, W) int (0 background, 1 central, 2+ neighbours) with every segment's edge moved to `level`
  sigma of the smoothed S/N map `snr` (N, H, W); labels keep their numbers. With `peak_fraction`, a segment
  whose peak is below level / peak_fraction takes the isophote peak_fraction x its peak instead (a faint
  object keeps a footprint in proportion to its light, not only the few pixels above a bright level)."""
  masks = np.asarray(masks)
  out = np.zeros(masks.shape, masks.dtype)
  for i, (mask, image_snr) in enumerate(zip(masks, np.asarray(snr, np.float32))):
    if not mask.any():
      continue
    labels = np.unique(mask[mask > 0])
    own_level = np.full(int(labels.max()) + 1, float(level))
    if peak_fraction is not None:
      peaks = np.asarray([image_snr[mask == j].max() for j in labels])
      own_level[labels] = np.minimum(level, peak_fraction * peaks)
    lowest = float(own_level[labels].min())
    seeds = np.where(image_snr > own_level[mask], mask, 0).astype(np.int32)
    kept_whole = np.setdiff1d(labels, np.unique(seeds[seeds > 0]))
    whole = np.isin(mask, kept_whole)
    seeds[whole] = mask[whole]
    grown = deblend.priority_flood(image_snr, (image_snr > lowest) | whole, seeds, assign_unreached=False)
    # A pixel stays only above its own segment's level (the flood went as low as the lowest of them).
    out[i] = np.where(whole | (image_snr > own_level[grown]), grown, 0)
  return out


def keep_significant(masks: np.ndarray, snr: np.ndarray, min_peak: float) -> np.ndarray:
  """Masks (N, H, W) without the neighbour segments (labels 2+) whose peak in the smoothed S/N map `snr` is below
  `min_peak` sigma; the central (label 1) always stays (the cutout is centred on a catalogued object, and it is
  scored by its mask); labels keep their numbers."""
  masks = np.asarray(masks)
  out = masks.copy()
  for i, (mask, image_snr) in enumerate(zip(masks, np.asarray(snr, np.float32))):
    labels = np.unique(mask[mask > 1])
    if labels.size == 0:
      continue
    peaks = np.full(int(labels.max()) + 1, np.inf)
    peaks[labels] = ndimage.maximum(image_snr, mask, labels)
    out[i][(mask > 1) & (peaks[mask] < min_peak)] = 0
  return out
