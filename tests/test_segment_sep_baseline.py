"""segment.sep_baseline: SEP finds the synthetic blobs; the tuning grid picks its best row."""

import pytest

from stargal_jax.segment import scoring, sep_baseline
from synthetic_scenes import make_scenes


@pytest.fixture(scope="module")
def scenes():
  return make_scenes(8, seed=1)


def test_sep_baseline_finds_the_blobs(scenes):
  images, truth, table = scenes
  s = scoring.score_masks(sep_baseline.sep_segment(images, band="gri", thresh_sigma=2.0), truth, table)
  assert s["central_iou"] > 0.8 and s["neighbour_completeness"] == 1.0
  best, grid = sep_baseline.tune_sep(images[:3], truth[:3], bands=("r", "gri"), thresholds=(1.0, 3.0))
  assert len(grid) == 4 and best["central_iou"] == max(r["central_iou"] for r in grid)
