"""Synthetic cutouts with known truth for the segmentation tests (imported by them; no tests here)."""

import numpy as np
from scipy import ndimage
from stargal_jax.segment import scoring


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
  table = {f: [] for f in scoring.NEIGHBOUR_FIELDS}
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
      for f, v in zip(scoring.NEIGHBOUR_FIELDS, (i, j + 2, 22.5 - 2.5 * np.log10(2 * np.pi * s * s * a), x, y)):
        table[f].append(v)
  return images, masks, {f: np.asarray(v) for f, v in table.items()}


def perfect_features(images):
  """A 'perfect' hypercolumn: asinh of the lightly smoothed per-band S/N, NHWC."""
  smooth = ndimage.gaussian_filter(images, (0, 0, 1.0, 1.0)) / NOISE[None, :, None, None]
  return np.arcsinh(np.moveaxis(smooth, 1, -1)).astype(np.float32)


def two_blob_scenes(n, seed=0, size=64):
  """Noise + a central Gaussian blob + one off-centre neighbour; truth-like masks (1 central, 2 neighbour)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size]
  images = rng.normal(0.0, 0.05, (n, 5, size, size)).astype(np.float32)
  masks = np.zeros((n, size, size), np.int32)
  for i in range(n):
    nx, ny = rng.uniform(8, 20), rng.uniform(40, 56)
    central = np.exp(-0.5 * ((xx - 32) ** 2 + (yy - 32) ** 2) / 3.0 ** 2)
    neighbour = np.exp(-0.5 * ((xx - nx) ** 2 + (yy - ny) ** 2) / 2.0 ** 2)
    images[i] += (2.0 * central + 1.0 * neighbour)[None].astype(np.float32)
    masks[i][central > 0.05] = 1
    masks[i][neighbour > 0.05] = 2
  return images, masks


def fit_and_segment(features, images, k, seed=0, bands="gri"):
  """The segmentation wing's own path on given hypercolumns (N, H, W, C), with every pixel as the k-means
  sample: (masks, segmenter)."""
  from stargal_jax.segment import fitted_model, labelling, pixel_kmeans, pixels
  features = np.asarray(features, np.float32)
  snr = pixels.snr_image(images, bands)
  sample = pixel_kmeans.PixelSample(features.reshape(-1, features.shape[-1]), snr.reshape(-1),
                                    np.arange(snr.size))
  segmenter = pixel_kmeans.fit_segmenter(sample, k, seed)
  masks = fitted_model.segment_set({k: segmenter}, lambda x: x, lambda idx: features[idx], len(features), 64,
                                   labelling.LabelOptions())[k]
  return masks, segmenter
