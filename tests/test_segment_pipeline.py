"""segment.pipeline: without refinements it is the plain cluster segmentation; deblending and the crowded-field
rule give what their own functions give on the same object pixels, and leave ordinary cutouts alone."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from stargal_jax.segment import crowding, deblend, edges, fitted_model, labelling, pipeline, pixel_kmeans, pixels
from synthetic_scenes import NOISE

NORMALIZER = {"method": "zscore", "center": [0.0] * 5, "scale": NOISE.tolist(), "version": 1, "bands": list("ugriz")}


def _features(x: np.ndarray) -> np.ndarray:
  """A stand-in for the AE's hypercolumns: asinh of the lightly smoothed per-band S/N (inputs are in sigma)."""
  return np.arcsinh(ndimage.gaussian_filter(x, (0, 1.0, 1.0, 0))).astype(np.float32)


def _scenes(n: int, seed: int, pedestal: float = 0.0):
  """A central Gaussian touching a neighbour 7 px away (and noise), optionally on a sky pedestal (in sigma)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:64, 0:64]
  images = NOISE[None, :, None, None] * rng.standard_normal((n, 5, 64, 64))
  for i in range(n):
    profile = 25 * np.exp(-0.5 * ((xx - 31.5) ** 2 + (yy - 31.5) ** 2) / 2.0 ** 2)
    profile += 15 * np.exp(-0.5 * ((xx - 38.5) ** 2 + (yy - 31.5) ** 2) / 2.0 ** 2)
    images[i] += NOISE[:, None, None] * (profile + pedestal)[None]
  return images.astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
  images = _scenes(6, 0)
  x = pixels.model_inputs(images, NORMALIZER)
  features = _features(x)
  sample = pixel_kmeans.PixelSample(features.reshape(-1, 5), pixels.snr_image(images).reshape(-1),
                                    np.arange(features[..., 0].size))
  segmenter = pixel_kmeans.fit_segmenter(sample, 3, 0)
  # The training cutouts are ~4% object; 20% stands for the limit the fit would measure on a varied set.
  segmenter = dataclasses.replace(segmenter, flood_limit=0.2)
  return fitted_model.FittedSegmentation(None, (), NORMALIZER, {3: segmenter}, _features)


def test_without_refinements_it_is_the_cluster_segmentation(fitted):
  images = _scenes(3, 1)
  masks, flooded = pipeline.segment_images(fitted, 3, images)
  s = fitted.segmenters[3]
  ids = pixel_kmeans.assign_pixels(s.kmeans, _features(pixels.model_inputs(images, NORMALIZER)))
  np.testing.assert_array_equal(masks, labelling.label_objects(s.is_object[ids]))
  assert not flooded.any()


def test_deblending_splits_the_touching_pair_as_the_deblender_does(fitted):
  images = _scenes(3, 2)
  options = deblend.DeblendOptions(contrast=0.005)
  plain = pipeline.segment_images(fitted, 3, images)[0]
  split = pipeline.segment_images(fitted, 3, images, refinements=pipeline.Refinements(options))[0]
  object_pixels = pipeline.foreground(fitted, 3, images)
  expected = labelling.label_objects(object_pixels, snr=pipeline.smoothed_snr(images, 1.2), deblending=options)
  np.testing.assert_array_equal(split, expected)
  assert (plain.max(axis=(1, 2)) == 1).all()  # the clusters alone merge the pair
  assert (split.max(axis=(1, 2)) == 2).all()
  np.testing.assert_array_equal(split > 0, plain > 0)
  # The central part holds the central source: the pixel at the centre is 1, the neighbour's peak 2.
  assert (split[:, 31, 31] == 1).all() and (split[:, 31, 38] == 2).all()


def test_crowding_rule_switches_on_only_for_flooded_cutouts(fitted):
  ordinary = _scenes(2, 3)
  raised = _scenes(2, 4, pedestal=3.0)  # a sky 3 sigma high everywhere: the clusters call all of it object
  images = np.concatenate([ordinary, raised])
  limit = fitted.segmenters[3].flood_limit
  off = pipeline.segment_images(fitted, 3, images)[0]
  on, flooded = pipeline.segment_images(fitted, 3, images, refinements=pipeline.Refinements(crowding=True))
  assert crowding.object_fraction(off[2:] > 0).min() > limit
  np.testing.assert_array_equal(flooded, [False, False, True, True])
  np.testing.assert_array_equal(on[:2], off[:2])
  assert crowding.object_fraction(on[2:] > 0).max() <= limit
  assert (on[2:, 31, 31] == 1).all()  # the central object survives the local background


def test_edges_move_the_deblended_outlines_to_the_isophote(fitted):
  images = _scenes(3, 5)
  options = deblend.DeblendOptions(contrast=0.005)
  split = pipeline.segment_images(fitted, 3, images, refinements=pipeline.Refinements(options))[0]
  moved = pipeline.segment_images(fitted, 3, images, refinements=pipeline.Refinements(options, edge_options=edges.EdgeOptions(3.0)))[0]
  snr = pipeline.smoothed_snr(images, 1.2)
  np.testing.assert_array_equal(moved, edges.follow_isophote(split, snr, 3.0))
  # Every object pixel is above the level, and every pixel above it next to the pair belongs to the pair.
  assert (snr[moved > 0] > 3.0).all()
  for i in range(3):
    pair = ndimage.label(snr[i] > 3.0, structure=np.ones((3, 3)))[0]
    np.testing.assert_array_equal(moved[i] > 0, pair == pair[31, 31])


def test_refinements_from_config_read_the_edge_setting():
  from configs import segmentation
  sc = segmentation.seg_config()
  assert pipeline.Refinements.from_config(sc).edge_options == edges.EdgeOptions(8.0, 0.5, 8.0)
  sc.edges = False
  assert pipeline.Refinements.from_config(sc).edge_options is None
  sc.edges, sc.edge_level, sc.edge_peak_fraction, sc.edge_min_peak = True, 2.5, 0.0, 0.0
  assert pipeline.Refinements.from_config(sc).edge_options == edges.EdgeOptions(2.5, None)
  sc.edge_peak_fraction = 0.3
  assert pipeline.Refinements.from_config(sc).edge_options == edges.EdgeOptions(2.5, 0.3)


def test_edges_leave_the_crowded_field_cap_alone(fitted):
  images = np.concatenate([_scenes(2, 6), _scenes(2, 7, pedestal=3.0)])
  capped, flooded = pipeline.segment_images(fitted, 3, images, refinements=pipeline.Refinements(crowding=True))
  both, flooded_too = pipeline.segment_images(
    fitted, 3, images, refinements=pipeline.Refinements(crowding=True, edge_options=edges.EdgeOptions(1.0)))
  np.testing.assert_array_equal(flooded, [False, False, True, True])
  np.testing.assert_array_equal(flooded_too, flooded)
  np.testing.assert_array_equal(both[2:], capped[2:])  # the capped cutouts keep their masks
  snr = pipeline.smoothed_snr(images[:2], 1.2)
  np.testing.assert_array_equal(both[:2], edges.follow_isophote(capped[:2], snr, 1.0))
