"""segment.faint: a significant peak outside the object pixels is added with its low-isophote footprint (less a
one-pixel gap to the existing objects); peaks below the threshold, or inside an object, add nothing. The
expected footprints come from a brute-force flood fill, independent of scipy's labelling."""

from collections import deque

import numpy as np

from stargal_jax.segment import faint


def _flood(above: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
  """8-connected region of `above` holding `seed`, by breadth-first search."""
  region = np.zeros_like(above)
  queue = deque([seed])
  region[seed] = True
  while queue:
    y, x = queue.popleft()
    for dy in (-1, 0, 1):
      for dx in (-1, 0, 1):
        v, u = y + dy, x + dx
        if 0 <= v < above.shape[0] and 0 <= u < above.shape[1] and above[v, u] and not region[v, u]:
          region[v, u] = True
          queue.append((v, u))
  return region


def _gaussian(peak: float, y0: float, x0: float, sigma: float = 1.5) -> np.ndarray:
  yy, xx = np.mgrid[0:32, 0:32]
  return peak * np.exp(-0.5 * ((yy - y0) ** 2 + (xx - x0) ** 2) / sigma ** 2)


def test_missed_peak_is_added_with_its_footprint_and_weak_ones_are_not():
  options = faint.FaintOptions(peak=5.0, low=2.0)
  # A bright object the clusters found, a missed 7-sigma source, a 4-sigma bump (below the peak threshold), and a
  # 6-sigma source whose footprint holds a small object patch off its peak (added, but kept one pixel off it).
  snr = _gaussian(30.0, 8, 8) + _gaussian(7.0, 24, 24) + _gaussian(4.0, 8, 24) + _gaussian(6.0, 15, 12)
  object_pixels = snr > 12.0
  object_pixels[15, 14] = True
  out = faint.add_missed_sources(object_pixels[None], snr[None], options)[0]
  above = snr > options.low
  expected = object_pixels.copy()
  gap = np.zeros_like(object_pixels)
  for y, x in zip(*np.nonzero(object_pixels)):
    gap[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = True
  for seed in ((24, 24), (15, 12)):
    expected |= _flood(above, seed) & ~gap
  np.testing.assert_array_equal(out, expected)
  assert out[24, 24] and out[15, 12] and not out[8, 24]
  assert not out[15, 13] and above[15, 13]  # the gap: above the isophote, but next to the object patch
  assert not object_pixels[24, 24]  # the source really was missed before


def test_nothing_is_added_when_every_peak_is_found_or_weak():
  options = faint.FaintOptions(peak=5.0, low=2.0)
  snr = np.stack([_gaussian(20.0, 16, 16), _gaussian(4.5, 16, 16), np.zeros((32, 32))])
  object_pixels = np.zeros(snr.shape, bool)
  object_pixels[0] = snr[0] > 3.0  # the peak is inside the object: its region is the object's own
  out = faint.add_missed_sources(object_pixels, snr, options)
  np.testing.assert_array_equal(out, object_pixels)
  assert out is not object_pixels  # a copy: the caller's array is not changed
