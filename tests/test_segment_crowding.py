"""segment.crowding: the local background of a known sky, the cap on object pixels, the limit from the training
fractions, and the no-flood rule on a constructed crowded cutout."""

import numpy as np
import pytest

from stargal_jax.segment import crowding, labelling, real_data


def test_local_background_recovers_a_smooth_sky_under_stars():
  yy, xx = np.mgrid[0:64, 0:64]
  plane = 0.5 + 0.01 * xx - 0.004 * yy  # a linear sky: bilinear interpolation of mesh values is exact for it
  rng = np.random.default_rng(0)
  image = np.repeat(plane[None, None], 2, axis=1) + rng.normal(0, 0.01, (1, 2, 64, 64))
  for x, y in rng.uniform(4, 60, (12, 2)):  # stars: the clipped median must ignore them
    image[0, :, int(y), int(x)] += 5.0
  expected = np.broadcast_to(plane, image.shape)
  unfiltered = crowding.local_background(image, box=16, filter_size=1)
  inner = np.s_[..., 8:56, 8:56]  # between the outer mesh centres (beyond them the map is constant)
  np.testing.assert_allclose(unfiltered[inner], expected[inner], atol=0.01)
  # The 3 x 3 median filter keeps a linear mesh where the window is whole: between the two interior centres.
  filtered = crowding.local_background(image, box=16)
  centre = np.s_[..., 24:40, 24:40]
  np.testing.assert_allclose(filtered[centre], expected[centre], atol=0.01)
  with pytest.raises(ValueError, match="16 px meshes"):
    crowding.local_background(np.zeros((1, 1, 60, 60)), box=16)


def test_cap_keeps_the_highest_snr_object_pixels():
  rng = np.random.default_rng(1)
  snr = rng.normal(size=(2, 10, 10))
  foreground = np.ones((2, 10, 10), bool)
  foreground[1] = False
  foreground[1, :2] = True  # 20% object: under the limit, untouched
  capped = crowding.cap_foreground(foreground, snr, 0.25)
  assert capped[0].sum() == 25
  assert snr[0][capped[0]].min() >= np.sort(snr[0].ravel())[-25]
  np.testing.assert_array_equal(capped[1], foreground[1])


def test_flood_limit_is_the_quantile_of_training_fractions():
  fractions = np.linspace(0.0, 0.3, 101)
  assert crowding.flood_limit(fractions, 0.99) == pytest.approx(np.quantile(fractions, 0.99))
  np.testing.assert_allclose(crowding.object_fraction(np.eye(4, dtype=bool)[None]), [0.25])
  with pytest.raises(ValueError, match="flood_quantile"):
    crowding.flood_limit(fractions, 0.0)


def test_no_flood_rule_on_a_constructed_crowded_cutout():
  """A crowded cutout: 40 faint stars on a sky raised by unresolved light. A per-cutout threshold at the global
  level floods it; the local background plus the cap keeps the object fraction at the limit, and the
  summary's stated rule sees the difference."""
  rng = np.random.default_rng(2)
  yy, xx = np.mgrid[0:64, 0:64]
  glow = 3.0 * np.exp(-0.5 * ((xx - 20) ** 2 + (yy - 40) ** 2) / 25.0 ** 2)  # unresolved light, in sigma
  image = glow + rng.normal(0, 1.0, (64, 64))
  for x, y in rng.uniform(2, 62, (40, 2)):
    image += 20.0 * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / 1.5 ** 2)
  flooded = (image > 1.0)[None]
  summary = real_data.flood_summary(flooded.astype(int))
  assert summary["flooded"] == 1 and summary["object_fraction_max"] > 0.5
  local = image - crowding.local_background(image[None, None], 16)[0, 0]
  capped = crowding.cap_foreground(local[None] > 1.0, local[None], 0.3)
  assert crowding.object_fraction(capped)[0] <= 0.3
  labelled = real_data.flood_summary(labelling.label_objects(capped))
  assert labelled["flooded"] == 0 and labelled["detections_per_cutout"] >= 10
