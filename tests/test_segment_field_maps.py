"""field_maps: the nearest-centre overlap rule against brute force, cutout masks placed back on the frame, SEP
segments claimed by positions, the edge rule; on a real field (skipped without ../shared/data): the map's id at a
known source's pixel is its row, its WCS gives the same sky position as the r frame, saturation is flagged."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from stargal_jax.segment import field_maps


def brute_force_map(shape, claims, x, y):
  out = np.zeros(shape, np.int32)
  best = np.full(shape, np.inf)
  for k, rows, cols in claims:
    for r, c in zip(rows, cols):
      d = np.hypot(c - x[k], r - y[k])
      if d < best[r, c] or (d == best[r, c] and k + 1 < out[r, c]):
        best[r, c], out[r, c] = d, k + 1
  return out


def test_overlapping_claims_go_to_the_nearest_centre():
  rng = np.random.default_rng(0)
  shape = (40, 50)
  x, y = rng.uniform(0, 50, 6), rng.uniform(0, 40, 6)
  claims = []
  for k in range(6):  # discs of random radius, overlapping
    rows, cols = np.nonzero(np.hypot(*np.meshgrid(np.arange(50) - x[k], np.arange(40) - y[k])) < rng.uniform(5, 15))
    claims.append((k, rows, cols))
  result = field_maps.resolve_claims(shape, claims, x, y)
  np.testing.assert_array_equal(result, brute_force_map(shape, claims, x, y))
  assert set(np.unique(result)) == set(range(7))


def test_cutout_masks_land_on_the_frame_pixels_they_came_from():
  shape = (200, 300)
  x, y = np.array([100.3, 150.0, 2.0]), np.array([80.6, 90.0, 199.4])
  masks = np.zeros((3, 64, 64), np.int16)
  masks[0, 30:35, 31:33] = 1  # cutout pixel (i, j) -> frame (round(y) - 32 + i, round(x) - 32 + j)
  masks[0, 0:3, 0:3] = 2
  masks[1, 32, 32] = 1
  masks[1, 40:42, 40:42], masks[1, 50, 50] = 2, 3
  masks[2, 28:36, 28:36] = 1  # partly outside the frame
  seg_map, neighbours = field_maps.map_from_cutout_masks(shape, masks, x, y)
  assert neighbours.tolist() == [1, 2, 0]
  rows, cols = np.nonzero(seg_map == 1)
  assert sorted(zip(rows, cols)) == [(r, c) for r in range(81 - 2, 81 + 3) for c in range(100 - 1, 101)]
  assert np.flatnonzero(seg_map.ravel() == 2).tolist() == [90 * 300 + 150]
  rows, cols = np.nonzero(seg_map == 3)
  assert rows.min() == 195 and rows.max() == 199 and cols.min() == 0 and cols.max() == 5  # clipped at the edges


def test_sep_segments_are_claimed_by_the_positions_on_them():
  segments = np.zeros((60, 80), np.int32)
  segments[10:20, 10:20] = 1  # claimed by objects 0 and 1: split by nearest centre
  segments[40:45, 60:70] = 2  # claimed by object 2 through the 2 px search
  segments[30:33, 30:33] = 3  # nobody's: a neighbour only
  x, y = np.array([11.0, 18.0, 65.0]), np.array([15.0, 15.0, 45.8])  # 1.8 px below segment 2
  seg_map, neighbours = field_maps.map_from_sep(segments, x, y)
  assert np.all(seg_map[10:20, 10:15] == 1) and np.all(seg_map[10:20, 15:20] == 2)  # columns 10-14 are nearer x=11
  assert np.all(seg_map[40:45, 60:70] == 3) and not np.any(seg_map[30:33, 30:33])
  assert field_maps.segment_under(segments, [65.0, 5.0], [46.6, 5.0]).tolist() == [0, 0]  # 2.6 px away: too far
  assert neighbours.tolist() == [1, 1, 0]  # segment 3 lies in the cutouts of objects 0 and 1, segment 1 too


def test_edge_rule():
  # cutout pixel centres x - 32 .. x + 31 must lie within the frame's [-0.5, 2047.5] x [-0.5, 1488.5]
  x = [32.0, 31.4, 2016.4, 2016.6, 500.0, 500.0]
  y = [32.0, 500.0, 500.0, 500.0, 1457.4, 1457.6]
  assert field_maps.reaches_edge((1489, 2048), x, y).tolist() == [False, True, False, True, False, True]


@pytest.fixture(scope="module")
def sparse_segments(sparse):
  return field_maps.sep_frame_segments(sparse.reference)


def test_real_field_map_is_on_the_frame_grid_with_its_wcs(sparse, sparse_segments, tmp_path):
  from stargal_jax import sdss_frames
  sources = sdss_frames.detect_sources(sparse, snr=50.0)[:20]
  seg_map, _ = field_maps.map_from_sep(sparse_segments, sources["x"], sources["y"])
  assert seg_map.shape == sparse.reference.shape
  columns, rows = np.floor(sources["x"] + 0.5).astype(int), np.floor(sources["y"] + 0.5).astype(int)
  assert seg_map[rows, columns].tolist() == list(range(1, 21))  # each bright source's pixel holds its row id
  path = field_maps.write_segmentation_map(tmp_path / "map.fits", seg_map, sparse, [("CATALOG", "c.fits", "x")])
  with fits.open(path) as hdul:
    data, header = hdul[0].data, hdul[0].header
  assert data.dtype == np.dtype(">i4") and np.array_equal(data, seg_map)
  ra_map, dec_map = WCS(header).pixel_to_world_values(sources["x"], sources["y"])
  ra, dec = sdss_frames.r_pixels_to_sky(sparse, sources["x"], sources["y"])
  np.testing.assert_allclose(ra_map, ra, rtol=0, atol=1e-9)
  np.testing.assert_allclose(dec_map, dec, rtol=0, atol=1e-9)
  assert header["CATALOG"] == "c.fits" and header["OVERLAP"] == "nearest centre"


def test_real_field_saturation_flag(sparse):
  from stargal_jax import sdss_frames
  everything = sdss_frames.detect_sources(sparse, snr=10.0, exclude_flagged=False)
  flagged = field_maps.saturated_near(sparse, everything["x"], everything["y"])
  counts = sparse.reference.counts
  # independent: the r band alone, brute force over a 5 px disc
  yy, xx = np.mgrid[0:counts.shape[0], 0:counts.shape[1]]
  bright = everything[np.argsort(-everything["max_counts"])[:3]]
  for source in bright:
    disc = (xx - source["x"]) ** 2 + (yy - source["y"]) ** 2 <= 25
    if counts[disc].max() >= sdss_frames.SATURATION_COUNTS:
      assert field_maps.saturated_near(sparse, [source["x"]], [source["y"]])[0]
  assert flagged.any() and not flagged.all()
