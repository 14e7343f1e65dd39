"""Tests for stargal_jax.segmentation against hand computations and synthetic scenes with known truth."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from stargal_jax import segmentation as seg
from stargal_jax.paths import shared_data_dir

NOISE = np.array([0.08, 0.03, 0.04, 0.05, 0.12])  # per-band noise sigma, nanomaggies
SED = np.array([0.3, 0.8, 1.0, 1.2, 1.3])         # per-band flux relative to r


def _blob(size, x, y, s):
  yy, xx = np.mgrid[0:size, 0:size]
  return np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / s ** 2)


def make_scenes(n, seed=0, size=64, pedestal=0.0):
  """Central Gaussian blob + 1-2 fainter neighbours + Gaussian noise; truth = profile > 1 sigma(r)."""
  rng = np.random.default_rng(seed)
  images = np.zeros((n, 5, size, size), np.float32)
  masks = np.zeros((n, size, size), np.uint8)
  table = {f: [] for f in seg.NEIGHBOUR_FIELDS}
  c = (size - 1) / 2
  for i in range(n):
    objs = [(c + rng.uniform(-1, 1), c + rng.uniform(-1, 1), rng.uniform(2.5, 4), rng.uniform(0.5, 1.5))]
    for _ in range(rng.integers(1, 3)):
      angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(15, 24)
      objs.append((c + dist * np.cos(angle), c + dist * np.sin(angle), rng.uniform(1.5, 2.5),
                   rng.uniform(0.2, 0.6)))
    profiles = np.stack([a * _blob(size, x, y, s) for x, y, s, a in objs])
    images[i] = ((SED[:, None, None, None] * profiles[None]).sum(1) + pedestal
                 + NOISE[:, None, None] * rng.standard_normal((5, size, size)))
    masks[i] = np.where(profiles.max(0) > NOISE[2], profiles.argmax(0) + 1, 0)
    for j, (x, y, s, a) in enumerate(objs[1:]):
      for f, v in zip(seg.NEIGHBOUR_FIELDS, (i, j + 2, 22.5 - 2.5 * np.log10(2 * np.pi * s * s * a), x, y)):
        table[f].append(v)
  return images, masks, {f: np.asarray(v) for f, v in table.items()}


def perfect_features(images):
  """A 'perfect' hypercolumn: asinh of the lightly smoothed per-band S/N, NHWC."""
  smooth = ndimage.gaussian_filter(images, (0, 0, 1.0, 1.0)) / NOISE[None, :, None, None]
  return np.arcsinh(np.moveaxis(smooth, 1, -1)).astype(np.float32)


@pytest.fixture(scope="module")
def scenes():
  return make_scenes(8, seed=1)


# --------------------------------------------------------------------------- background, S/N, k-means

def test_robust_background_ignores_objects_and_nans():
  rng = np.random.default_rng(0)
  noise = rng.normal(2.0, 0.5, (3, 2, 64, 64))
  images = noise.copy()
  images[:, :, 20:40, 20:40] += 50.0  # a bright object on 10% of the pixels
  images[0, 0, :5] = np.nan
  images[2, 1] = np.nan               # a band with no data at all
  level, sigma = seg.robust_background(images)
  assert np.isnan(level[2, 1]) and np.isnan(sigma[2, 1])
  ok = np.isfinite(level)
  np.testing.assert_allclose(level[ok], 2.0, atol=0.05)
  np.testing.assert_allclose(sigma[ok], noise.std(axis=(2, 3))[ok], rtol=0.06)
  # Excluding the object pixels gives the plain median of the rest (no clipping needed).
  exclude = np.zeros((3, 64, 64), bool)
  exclude[:, 20:40, 20:40] = True
  # Chunking is invisible.
  chunked = seg.robust_background(images, chunk=2)
  np.testing.assert_array_equal(chunked[0], level)
  np.testing.assert_array_equal(chunked[1], sigma)
  level_ex, _ = seg.robust_background(images[1:2], exclude=exclude[1:2], n_iter=0, source_rounds=0)
  np.testing.assert_allclose(level_ex[0], np.median(images[1][:, ~exclude[1]], axis=1))


def test_snr_image_by_hand():
  images = np.zeros((1, 5, 2, 2))
  images[0, 1], images[0, 2], images[0, 3] = 3.0, 5.0, 7.0
  level = np.array([[0.0, 1.0, 1.0, 1.0, 0.0]])
  sigma = np.array([[1.0, 2.0, 4.0, 3.0, 1.0]])
  expected = ((3 - 1) / 2 + (5 - 1) / 4 + (7 - 1) / 3) / np.sqrt(3)
  np.testing.assert_allclose(seg.snr_image(images, "gri", level, sigma), expected, rtol=1e-6)
  np.testing.assert_allclose(seg.snr_image(images, "r", level, sigma), 1.0, rtol=1e-6)
  sigma[0, 3] = np.nan  # i has no noise estimate: g and r alone, over sqrt(2)
  np.testing.assert_allclose(seg.snr_image(images, "gri", level, sigma), (1 + 1) / np.sqrt(2), rtol=1e-6)


def test_kmeans_assignment_is_nearest_standardised_centre():
  rng = np.random.default_rng(0)
  truth = rng.integers(0, 3, size=(4, 8, 8))
  centres = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 500.0], [0.0, 8.0, -500.0]])
  feats = centres[truth] + rng.normal(0, [1.0, 1.0, 50.0], size=(4, 8, 8, 3))
  model = seg.fit_pixel_kmeans(feats, k=3, sample_pixels=10_000, seed=0)  # all 256 pixels
  flat = feats.reshape(-1, 3)
  np.testing.assert_allclose(model.mean, flat.mean(0))
  np.testing.assert_allclose(model.scale, flat.std(0))
  ids = seg.assign_pixels(model, feats)
  brute = cdist((flat - flat.mean(0)) / flat.std(0), model.centres).argmin(1).reshape(4, 8, 8)
  np.testing.assert_array_equal(ids, brute)
  np.testing.assert_array_equal(seg.assign_pixels(model, feats, chunk_pixels=1), ids)
  assert adjusted_rand_score(truth.ravel(), ids.ravel()) == 1.0
  # Sampling fewer pixels than exist is seeded: same seed, same model.
  a = seg.fit_pixel_kmeans(feats, 3, sample_pixels=100, seed=5)
  b = seg.fit_pixel_kmeans(feats, 3, sample_pixels=100, seed=5)
  np.testing.assert_array_equal(a.centres, b.centres)
  # A NaN feature sits at the feature mean instead of breaking the fit or the assignment.
  feats[0, 0, 0, 2] = np.nan
  assert seg.assign_pixels(seg.fit_pixel_kmeans(feats, 3, seed=0), feats).min() >= 0


def test_feature_weights_scale_the_standardised_features():
  rng = np.random.default_rng(3)
  feats = rng.normal(size=(2, 8, 8, 3)) * [1.0, 5.0, 0.2]
  weights = np.array([1.0, 1.0, 4.0])
  weighted = seg.fit_pixel_kmeans(feats, 3, sample_pixels=10_000, seed=0, weights=weights)
  plain = seg.fit_pixel_kmeans(feats, 3, sample_pixels=10_000, seed=0)
  np.testing.assert_allclose(weighted.scale, plain.scale / weights)
  # Same as k-means on the standardised features with the last one multiplied by 4, done by hand.
  flat = feats.reshape(-1, 3)
  by_hand = KMeans(3, n_init=4, random_state=0).fit((flat - flat.mean(0)) / flat.std(0) * weights)
  assert adjusted_rand_score(by_hand.labels_, seg.assign_pixels(weighted, feats).ravel()) == 1.0


def test_detection_image_has_unit_noise_and_peaks_on_a_faint_point_source():
  rng = np.random.default_rng(4)
  images = rng.normal(0.0, 1.0, size=(20, 5, 64, 64))
  noise_only = seg.detection_image(images, "gri", sigma_px=1.5, clip=(-50, 50))
  assert abs(noise_only[:, 16:48, 16:48].std() - 1.0) < 0.05  # filtered, rescaled: unit noise again
  yy, xx = np.mgrid[:64, :64]
  psf = np.exp(-((yy - 40) ** 2 + (xx - 20) ** 2) / (2 * 1.5**2))
  faint = images[:1] + 1.0 * psf  # peak S/N 1 per pixel per band: invisible pixel by pixel
  det = seg.detection_image(faint, "gri", sigma_px=1.5)
  peak = np.unravel_index(np.argmax(det[0]), (64, 64))
  assert np.hypot(peak[0] - 40, peak[1] - 20) <= 1.5  # noise moves the filtered peak by about a pixel
  # Expected there: 1.73 per-pixel S/N x sqrt(4 pi) 1.5 / 2 matched-filter gain = 4.6, less noise.
  assert det[0, 40, 20] > 3 and det.max() <= 50 and det.min() >= -5


def test_clusters_to_foreground_rules_by_hand():
  ids = np.array([[[0, 1], [2, 2]]])
  snr = np.array([[[0.1, 3.0], [0.9, 1.5]]])
  np.testing.assert_allclose(seg.cluster_mean_snr(ids, snr, k=4), [0.1, 3.0, 1.2, np.nan])
  images = np.zeros((1, 5, 8, 8))
  images[0, :, :4] = 1.0  # top half bright in every band; background level/sigma come from noise below
  images += np.random.default_rng(0).normal(0, 0.1, images.shape)
  cluster_ids = np.zeros((1, 8, 8), int)
  cluster_ids[0, :4] = 1
  cluster_ids[0, 4:, :4] = 2  # a cluster of pure noise
  fg = seg.clusters_to_foreground(cluster_ids, images, "snr_threshold", snr_threshold=1.0)
  np.testing.assert_array_equal(fg, cluster_ids == 1)
  fg2 = seg.clusters_to_foreground(cluster_ids, images, "faintest_is_background")
  snr_means = seg.cluster_mean_snr(cluster_ids, seg.snr_image(images))
  np.testing.assert_array_equal(fg2, cluster_ids != np.argmin(snr_means))


def test_registries_fail_listing_valid_names():
  with pytest.raises(KeyError, match="faintest_is_background"):
    seg.clusters_to_foreground(np.zeros((1, 4, 4), int), np.zeros((1, 5, 4, 4)), rule="otsu")
  with pytest.raises(KeyError, match="minibatch"):
    seg.fit_pixel_kmeans(np.zeros((1, 4, 4, 2)), 2, algorithm="gmm")
  with pytest.raises(KeyError, match="'u'"):
    seg.band_indices("gry")
  with pytest.raises(KeyError, match="4, 8"):
    seg.label_objects(np.zeros((1, 4, 4), bool), connectivity=6)


# --------------------------------------------------------------------------- components and centre rule

def test_label_objects_centre_rule_and_ordering():
  fg = np.zeros((3, 64, 64), bool)
  fg[0, 30:33, 30:33] = True      # covers the centre: central (9 px)
  fg[0, 2:12, 2:12] = True        # 100 px: first neighbour
  fg[0, 50:54, 50:54] = True      # 16 px: second neighbour
  fg[0, 5:7, 50:52] = True        # 4 px < min_area: dropped
  fg[1, 35:38, 31:34] = True      # off centre: nearest pixel (35, 31) is 3.54 px from (31.5, 31.5)
  fg[1, 2:12, 2:12] = True
  fg[2, 10:13, 10:13] = True      # two squares touching only at a corner
  fg[2, 13:16, 13:16] = True
  masks = seg.label_objects(fg[:2], min_area=5, centre_radius=5.0)
  expected0 = np.zeros((64, 64), int)
  expected0[30:33, 30:33], expected0[2:12, 2:12], expected0[50:54, 50:54] = 1, 2, 3
  np.testing.assert_array_equal(masks[0], expected0)
  assert masks[1, 36, 32] == 1 and masks[1, 5, 5] == 2
  strict = seg.label_objects(fg[1:2], centre_radius=3.0)
  assert (strict == 1).sum() == 0 and set(np.unique(strict)) == {0, 2, 3}
  assert strict[0, 5, 5] == 2 and strict[0, 36, 32] == 3  # ordered by size: 100 px before 9 px
  assert set(np.unique(seg.label_objects(fg[2:], connectivity=8))) == {0, 2}
  assert set(np.unique(seg.label_objects(fg[2:], connectivity=4))) == {0, 2, 3}


# --------------------------------------------------------------------------- scoring by hand

def _tiny_masks():
  true = np.zeros((2, 6, 6), int)
  pred = np.zeros((2, 6, 6), int)
  true[0, 1:3, 1:3] = 1
  true[0, 2:4, 4:6] = 2
  true[0, 5, 0] = 3
  pred[0, 1:3, 1:3] = 1
  pred[0, 1, 3] = 1
  pred[0, 2, 5] = 2                  # overlaps true neighbour 2
  pred[0, 5, 3:5] = 3                # noise: overlaps nothing
  true[1, 1:3, 2:4] = 1
  pred[1, 1, 2:4] = 1
  pred[1, 2, 3] = 1
  pred[1, 2, 2] = 2                  # a shred of the central object
  pred[1, 4, 4] = 3                  # contains the centre of a neighbour with no truth pixels
  table = {"nb_object": np.array([0, 0, 1]), "nb_label": np.array([2, 3, 2]),
           "nb_mag_r": np.array([19.0, 21.0, 23.0]), "nb_x": np.array([4.5, 0.3, 4.2]),
           "nb_y": np.array([2.5, 5.1, 4.4])}
  return pred, true, table


def test_score_masks_against_hand_computation():
  pred, true, table = _tiny_masks()
  s = seg.score_masks(pred, true, table, mag_bins=(18, 20, 22))
  np.testing.assert_allclose(s["central_iou_per_image"], [4 / 5, 3 / 4])
  assert s["central_iou"] == pytest.approx((0.8 + 0.75) / 2)
  assert s["object_iou_pooled"] == pytest.approx(9 / 17)
  assert s["object_iou_mean"] == pytest.approx((5 / 12 + 4 / 5) / 2)
  assert s["false_object_pixels_fraction"] == pytest.approx(4 / 59)
  assert s["missed_object_pixels_fraction"] == pytest.approx(4 / 13)
  assert (s["n_true_neighbours"], s["n_pred_neighbours"]) == (3, 4)
  assert s["neighbour_completeness"] == pytest.approx(2 / 3)
  assert s["neighbour_purity"] == pytest.approx(2 / 4)
  bins = s["completeness_by_mag"]
  assert [b["n"] for b in bins] == [0, 1, 1, 1]
  np.testing.assert_array_equal([b["completeness"] for b in bins], [np.nan, 1.0, 0.0, 1.0])
  by_central = seg.score_masks(pred, true, table, mag_bins=(18, 20), central_mag=np.array([19.5, 25.0]))
  assert [b["n"] for b in by_central["central_iou_by_mag"]] == [0, 1, 1]
  np.testing.assert_allclose([b["central_iou"] for b in by_central["central_iou_by_mag"]], [np.nan, 0.8, 0.75])
  # Without the table the truth neighbours come from the masks: the no-pixel neighbour is unknown.
  s2 = seg.score_masks(pred, true)
  assert s2["neighbour_completeness"] == pytest.approx(1 / 2)
  assert s2["neighbour_purity"] == pytest.approx(1 / 4)


def test_component_magnitudes_by_hand():
  images = np.zeros((1, 5, 6, 6))
  masks = np.zeros((1, 6, 6), int)
  masks[0, :2, :2] = 2
  images[0, 2, :2, :2] = 2.5           # 10 nanomaggies in r -> magnitude 20
  images[0, 2, 4:, 4:] = 0.0
  mags = seg.component_magnitudes(images, masks, np.array([0]), np.array([2]))
  np.testing.assert_allclose(mags, [20.0])
  # Purity by measured magnitude: give each predicted neighbour of the tiny masks a known r flux.
  pred, true, table = _tiny_masks()
  images = np.zeros((2, 5, 6, 6))
  images[0, 2, 2, 5] = 10.0                        # real, r = 20.0
  images[0, 2, 5, 3:5] = 0.5                       # false (noise), r = 22.5
  images[1, 2, 2, 2] = 100.0                       # false (shred), r = 17.5
  images[1, 2, 4, 4] = 10 ** ((22.5 - 19.0) / 2.5)  # real, r = 19.0
  bins = seg.score_masks(pred, true, table, mag_bins=(18, 20, 22), images=images)["purity_by_mag"]
  assert [b["n"] for b in bins] == [1, 1, 1, 1]
  assert [b["purity"] for b in bins] == [0.0, 1.0, 1.0, 0.0]


# --------------------------------------------------------------------------- pipeline on synthetic scenes

def test_segment_recovers_central_and_neighbours(scenes):
  images, truth, table = scenes
  masks = seg.segment(perfect_features(images), images, k=4, seed=0)
  s = seg.score_masks(masks, truth, table)
  assert s["central_iou"] > 0.8
  neighbour_iou = (((masks >= 2) & (truth >= 2)).sum() / ((masks >= 2) | (truth >= 2)).sum())
  assert neighbour_iou > 0.8
  assert s["neighbour_completeness"] >= 0.9 and s["neighbour_purity"] >= 0.9
  np.testing.assert_array_equal(seg.segment(perfect_features(images), images, k=4, seed=0), masks)


def test_sweep_k_one_row_per_k(scenes):
  images, truth, table = scenes
  rows = seg.sweep_k(perfect_features(images), images, truth, ks=(2, 4, 8), nb_table=table)
  assert [r["k"] for r in rows] == [2, 4, 8]
  for r in rows:
    for key in ("central_iou", "object_iou", "neighbour_completeness", "neighbour_purity",
                "false_object_pixels_fraction"):
      assert 0.0 <= r[key] <= 1.0
  # Typically more clusters call more noise pixels object; reported, not asserted (not monotone).
  print("sweep_k:", [(r["k"], round(r["false_object_pixels_fraction"], 4)) for r in rows])


def test_sep_baseline_finds_the_blobs(scenes):
  images, truth, table = scenes
  s = seg.score_masks(seg.sep_segment(images, band="gri", thresh_sigma=2.0), truth, table)
  assert s["central_iou"] > 0.8 and s["neighbour_completeness"] == 1.0
  best, grid = seg.tune_sep(images[:3], truth[:3], bands=("r", "gri"), thresholds=(1.0, 3.0))
  assert len(grid) == 4 and best["central_iou"] == max(r["central_iou"] for r in grid)


# --------------------------------------------------------------------------- masking neighbours

def test_neighbour_region_is_chebyshev_dilation_without_central():
  masks = np.zeros((1, 12, 12), int)
  masks[0, 5:7, 5:7] = 2
  masks[0, 4, 4:8] = 1
  dist = ndimage.distance_transform_cdt(masks[0] < 2, metric="chessboard")
  expected = (dist <= 2) & (masks[0] != 1)
  np.testing.assert_array_equal(seg.neighbour_region(masks, dilate=2)[0], expected)


def test_mask_neighbours_replaces_with_background_like_noise():
  images, truth, _ = make_scenes(6, seed=3, pedestal=0.5)
  images[0, 2, 0, :8] = np.nan  # a few bad pixels in the background
  out = seg.mask_neighbours(images, truth, seed=7, dilate=2)
  region = seg.neighbour_region(truth, dilate=2)
  keep = np.broadcast_to(~region[:, None], images.shape)
  np.testing.assert_array_equal(out[keep], images[keep])  # central + background untouched (NaNs too)
  assert np.all(np.isfinite(out[~keep])) and not np.any(out[~keep] == 0.0)
  for b in range(5):
    filled = out[:, b][region]
    assert abs(filled.mean() - 0.5) < 4 * NOISE[b] / np.sqrt(filled.size)
    assert filled.std() == pytest.approx(NOISE[b], rel=0.1)
  np.testing.assert_array_equal(seg.mask_neighbours(images, truth, seed=7), out)
  assert not np.array_equal(seg.mask_neighbours(images, truth, seed=8), out)
  # Batching does not change the draw of an image; a given sigma overrides the estimate.
  np.testing.assert_array_equal(
      seg.mask_neighbours(images[1:2], truth[1:2], seed=7, index_offset=1)[0], out[1])
  loud = seg.mask_neighbours(images, truth, seed=7, noise_sigma=1.0)
  assert loud[:, 2][region].std() == pytest.approx(1.0, rel=0.1)


# --------------------------------------------------------------------------- real SDSS pixels

def _real_r_cutouts(n=8, size=64):
  """r-band cutouts around bright isolated sources of one SDSS frame; other bands NaN."""
  fits = pytest.importorskip("astropy.io.fits")
  import sep
  path = shared_data_dir() / "sdss_frames" / "001035-6-0017" / "frame-r-001035-6-0017.fits.bz2"
  if not path.exists():
    pytest.skip(f"shared data absent: {path}")
  with fits.open(path) as hdul:
    frame = np.ascontiguousarray(hdul[0].data[:600, :800], dtype=np.float64)
  bkg = sep.Background(frame)
  objects = sep.extract(frame - bkg.back(), 5.0, err=bkg.globalrms, minarea=10)
  half = size // 2
  inside = ((objects["x"] > half) & (objects["x"] < frame.shape[1] - half)
            & (objects["y"] > half) & (objects["y"] < frame.shape[0] - half))
  brightest = objects[inside][np.argsort(-objects["flux"][inside])][:n]
  images = np.full((len(brightest), 5, size, size), np.nan, np.float32)
  for i, o in enumerate(brightest):
    # The source lands within half a pixel of the array centre (31.5, 31.5).
    r0, c0 = int(round(o["y"] - (size - 1) / 2)), int(round(o["x"] - (size - 1) / 2))
    images[i, 2] = frame[r0:r0 + size, c0:c0 + size]
  return images, bkg.globalrms


def test_real_sdss_cutouts_pipeline_and_sep_agree():
  images, frame_rms = _real_r_cutouts()
  _, sigma = seg.robust_background(images)
  # The cutout noise estimate agrees with SEP's background rms over the whole frame region, even
  # for cutouts of bright stars whose wings cover most of the cutout (clipping alone: up to 1.6x).
  np.testing.assert_allclose(sigma[:, 2], frame_rms, rtol=0.15)
  snr = np.nan_to_num(images[:, 2:3]) / sigma[:, 2, None, None, None]
  features = np.arcsinh(np.moveaxis(ndimage.gaussian_filter(snr, (0, 0, 1, 1)), 1, -1))
  ours = seg.segment(features, images, k=4, bands="r", seed=0)
  base = seg.sep_segment(images, band="r", thresh_sigma=2.0)
  assert (ours == 1).any(axis=(1, 2)).all() and (base == 1).any(axis=(1, 2)).all()
  np.testing.assert_array_equal(seg.sep_segment(images[:2], band="gri", thresh_sigma=2.0), base[:2])
  # Ours traces a lower isophote than SEP at 2 sigma (no deblending either), so it must contain
  # SEP's central object rather than equal it.
  inside = ((ours == 1) & (base == 1)).sum(axis=(1, 2)) / (base == 1).sum(axis=(1, 2))
  assert inside.min() > 0.9
  masked = seg.mask_neighbours(images, ours, seed=0)
  assert np.all(np.isnan(masked[:, 0])) and np.all(np.isfinite(masked[:, 2]))
