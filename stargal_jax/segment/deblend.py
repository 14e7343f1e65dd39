"""Deblending of touching sources: each segment (e.g. a connected component of the hypercolumn clusters'
object pixels) whose smoothed S/N profile holds several significant peaks is split, as SExtractor does.

Multi-thresholding (SExtractor, Bertin & Arnouts 1996, its DEBLEND_NTHRESH / DEBLEND_MINCONT): the segment is
re-thresholded at `n_levels` levels spaced exponentially between its lowest level (at least `floor`) and its
peak; at each level, a node whose pixels above the level fall into two or more connected branches, each holding
at least `contrast` of the segment's total (positive) S/N flux and `min_area` pixels, is split into those
branches, and each branch is followed up to the peak in turn. The leaves are the seeds; every pixel of the
segment then goes to a seed by a priority flood (a watershed on the S/N map, confined to the segment), so the
outer shape stays the one the clusters gave. numpy / scipy.ndimage only.
"""

import dataclasses
import heapq

import numpy as np
from scipy import ndimage


EIGHT = np.ones((3, 3), bool)


@dataclasses.dataclass(frozen=True)
class DeblendOptions:
  """Settings of `deblend_segments` (contrast = SExtractor's DEBLEND_MINCONT; 1 = never split)."""
  n_levels: int = 32
  contrast: float = 0.005
  min_area: int = 5
  floor: float = 1.0  # lowest level (sigma of the smoothed S/N map): no split below the noise

  @classmethod
  def from_config(cls, seg_config) -> "DeblendOptions":
    return cls(int(seg_config.deblend_levels), float(seg_config.deblend_contrast),
               int(seg_config.deblend_min_area), float(seg_config.deblend_floor))


def levels(low: float, peak: float, n_levels: int) -> np.ndarray:
  """`n_levels` thresholds strictly between `low` and `peak`, exponentially spaced (linear if low <= 0)."""
  steps = np.arange(1, n_levels + 1) / (n_levels + 1)
  if low > 0:
    return low * (peak / low) ** steps
  return low + (peak - low) * steps


def _seeds(snr: np.ndarray, node: np.ndarray, thresholds: np.ndarray, start: int, total: float,
           options: DeblendOptions) -> list[np.ndarray]:
  """The leaves under `node` (bool image) from level index `start` upwards."""
  for k in range(start, len(thresholds)):
    branches, n = ndimage.label(node & (snr > thresholds[k]), structure=EIGHT)
    if n < 2:
      if n == 0:
        break
      continue
    ids = np.arange(1, n + 1)
    flux = np.asarray(ndimage.sum_labels(np.maximum(snr, 0.0), branches, ids))
    area = np.asarray(ndimage.sum_labels(np.ones(snr.shape), branches, ids))
    keep = ids[(flux >= options.contrast * total) & (area >= options.min_area)]
    if keep.size >= 2:
      return [leaf for j in keep for leaf in _seeds(snr, branches == j, thresholds, k + 1, total, options)]
  return [node]


def priority_flood(snr: np.ndarray, segment: np.ndarray, seeds: np.ndarray, assign_unreached: bool = True) -> np.ndarray:
  """Seed labels (int image, 0 = unassigned) grown over `segment` by a priority flood (Meyer's watershed): the
  unassigned pixel of highest S/N next to a labelled one takes the label of the neighbour that reached it
  first, so every pixel goes down its own slope to the peak it belongs to. Pixels of `segment` that no seed
  reaches through it go to the nearest seed (`assign_unreached`) or stay 0."""
  labels = seeds.copy()
  h, w = snr.shape
  heap: list[tuple[float, int, int, int, int]] = []
  order = 0

  def push_neighbours(r: int, c: int, label: int) -> None:
    nonlocal order
    for dr in (-1, 0, 1):
      for dc in (-1, 0, 1):
        rr, cc = r + dr, c + dc
        if 0 <= rr < h and 0 <= cc < w and segment[rr, cc] and labels[rr, cc] == 0:
          heapq.heappush(heap, (-float(snr[rr, cc]), order, rr, cc, label))
          order += 1

  for r, c in zip(*np.nonzero(labels)):
    push_neighbours(int(r), int(c), int(labels[r, c]))
  while heap:
    _, _, r, c, label = heapq.heappop(heap)
    if labels[r, c]:
      continue
    labels[r, c] = label
    push_neighbours(r, c, label)
  left = segment & (labels == 0)
  if assign_unreached and left.any() and labels.any():  # pixels joined to no seed inside the segment (it is not 8-connected): the nearest seed's
    _, (rows, cols) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    labels[left] = labels[rows[left], cols[left]]
  return labels


def split_segment(snr: np.ndarray, segment: np.ndarray, options: DeblendOptions) -> np.ndarray:
  """One segment (bool image) -> int image: 0 outside, 1..n its deblended parts (1 when not split)."""
  values = snr[segment]
  out = segment.astype(np.int32)
  if values.size < 2 * options.min_area or options.contrast >= 1.0:
    return out
  peak = float(values.max())
  low = max(float(values.min()), options.floor)
  if peak <= low:
    return out
  thresholds = levels(low, peak, options.n_levels)
  total = float(np.maximum(values, 0.0).sum())
  leaves = _seeds(snr, segment, thresholds, 0, total, options)
  if len(leaves) < 2:
    return out
  seeds = np.zeros(snr.shape, np.int32)
  for j, leaf in enumerate(leaves):
    seeds[leaf] = j + 1
  return priority_flood(snr, segment, seeds)


def _local_maxima(snr: np.ndarray, segments: np.ndarray, floor: float) -> np.ndarray:
  """Number of local maxima above `floor` per segment id (index = id)."""
  peak = (snr == ndimage.maximum_filter(snr, footprint=EIGHT, mode="nearest")) & (snr > floor) & (segments > 0)
  return np.bincount(segments[peak], minlength=int(segments.max()) + 1)


def deblend_segments(segments: np.ndarray, snr: np.ndarray, options: DeblendOptions) -> np.ndarray:
  """One image's segments (H, W) int (0 = none) -> segments with every multi-peak one split (new ids
  consecutive from 1). `snr` is the smoothed S/N map (unit noise) of the same image. Segments with a
  single local maximum above the floor are kept whole without building their tree."""
  segments = np.asarray(segments)
  out = np.zeros(segments.shape, np.int32)
  if segments.max() <= 0:
    return out
  maxima = _local_maxima(snr, segments, options.floor)
  next_id = 1
  boxes = ndimage.find_objects(segments)
  for sid, box in enumerate(boxes, start=1):
    if box is None:
      continue
    local = segments[box] == sid
    if maxima[sid] < 2:
      out[box][local] = next_id
      next_id += 1
      continue
    parts = split_segment(snr[box], local, options)
    n_parts = int(parts.max())
    out[box][local] = parts[local] + next_id - 1
    next_id += n_parts
  return out
