"""segment.figures: the mask overlay's colours by hand; the figures are written as PNGs."""

import numpy as np

from stargal_jax import plots
from stargal_jax.segment import figures


def test_mask_overlay_tints_objects_and_draws_their_outlines_by_hand():
  image = np.random.default_rng(0).normal(1.0, 0.2, (5, 16, 16)).astype(np.float32)
  mask = np.zeros((16, 16), int)
  mask[4:9, 4:9] = 1  # central (orange), a 5 x 5 block
  mask[12:15, 2:5] = 2  # first neighbour (blue)
  rgb = plots.gri_composite(image).astype(np.float64)
  out = figures.mask_overlay(image, mask, alpha=0.5).astype(np.float64)
  np.testing.assert_array_equal(out[mask == 0], rgb[mask == 0].astype(np.uint8))  # background untouched
  orange, blue = figures.MASK_COLOURS[1], figures.MASK_COLOURS[2]
  np.testing.assert_allclose(out[6, 6], np.floor(0.5 * rgb[6, 6] + 0.5 * orange), atol=1)  # inside: blended
  np.testing.assert_array_equal(out[4, 6], orange)  # on the block's edge: full colour
  np.testing.assert_array_equal(out[13, 3], np.floor(0.5 * rgb[13, 3] + 0.5 * blue).clip(0, 255))
  np.testing.assert_array_equal(out[12, 3], blue)
  np.testing.assert_array_equal(figures.mask_overlay(image, None), rgb.astype(np.uint8))


def test_segmentation_figures_are_written(tmp_path):
  images = np.random.default_rng(1).normal(1.0, 0.2, (3, 5, 16, 16)).astype(np.float32)
  masks = np.zeros((3, 16, 16), int)
  masks[:, 6:10, 6:10] = 1
  path = figures.plot_segmentations(images, {"ours": masks, "none": None}, tmp_path / "a.png", titles=list("abc"))
  other = figures.plot_masked_examples(images, images, masks, tmp_path / "b.png")
  for p in (path, other):
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  picked = figures.pick_examples(None, masks, 2, seed=0)
  assert len(picked) == 2 and np.all(np.diff(picked) > 0)


def test_check_margins_figure_is_written(tmp_path):
  margins = {"default": {"f1": {"margin": 0.02, "p5": 0.01, "p95": 0.03, "verdict": "met"},
                         "nb": {"margin": float("nan"), "p5": float("nan"), "p95": float("nan"),
                                "verdict": "undefined"}},
             "shifted": {"f1": {"margin": -0.01, "p5": -0.03, "p95": 0.01, "verdict": "within noise"}}}
  path = figures.plot_check_margins(margins, tmp_path / "m.png")
  assert path.is_file() and path.stat().st_size > 1000
