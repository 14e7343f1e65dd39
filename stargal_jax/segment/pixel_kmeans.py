"""k-means on hypercolumn pixels and the label-free object/background call of each cluster.

Per-pixel feature vectors (hypercolumns, numpy `(N, H, W, C)`) are standardised and clustered with k-means
fitted on a uniform pixel sample; each cluster is called object or background from the mean detection S/N of
its sampled pixels (`FOREGROUND_RULES`; no labels, no truth). numpy / scikit-learn only.
"""

import dataclasses
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans

from stargal_jax import registry
from stargal_jax.segment import pixels


@dataclasses.dataclass(frozen=True)
class PixelKMeans:
  """k-means on standardised per-pixel features: x -> (x - mean) / scale, nearest of `centres`."""
  mean: np.ndarray    # (C,)
  scale: np.ndarray   # (C,)
  centres: np.ndarray  # (k, C), in standardised units
  inertia: float      # sum of squared distances on the fitted sample

  @property
  def k(self) -> int:
    return self.centres.shape[0]


KMEANS_ALGORITHMS: dict[str, Callable[[int, int], Any]] = {
  # Lloyd's k-means: exact, deterministic given the seed; fine for a 200k-pixel sample.
  "kmeans": lambda k, seed: KMeans(n_clusters=k, n_init=4, random_state=seed),
  "minibatch": lambda k, seed: MiniBatchKMeans(n_clusters=k, n_init=3, batch_size=4096,
                                               random_state=seed),
}


def _standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
  z = (np.asarray(x, dtype=np.float64) - mean) / scale
  z[~np.isfinite(z)] = 0.0  # a NaN feature sits at the feature's mean: it does not pull any cluster
  return z


def fit_pixel_kmeans(hypercolumns: np.ndarray, k: int, sample_pixels: int = 200_000, seed: int = 0,
                     algorithm: str = "kmeans", weights: np.ndarray | None = None) -> PixelKMeans:
  """Fits k-means on a random sample of pixels' feature vectors, standardised per feature.

  hypercolumns (N, H, W, C) (a memmap is fine: only the sampled rows are read). `weights` (C,) multiply the
  standardised features (folded into `scale`, so assignment needs nothing else).
  """
  make = registry.lookup(KMEANS_ALGORITHMS, algorithm, "k-means algorithm")
  flat = hypercolumns.reshape(-1, hypercolumns.shape[-1])
  rng = np.random.default_rng(seed)
  n = flat.shape[0]
  rows = np.sort(rng.choice(n, size=sample_pixels, replace=False)) if n > sample_pixels else np.arange(n)
  sample = np.asarray(flat[rows], dtype=np.float64)
  with pixels.quiet_nan_warnings():
    mean = np.nan_to_num(np.nanmean(sample, axis=0))
    scale = np.nanstd(sample, axis=0)
  scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)  # constant feature: leave unscaled
  if weights is not None:
    scale = scale / np.asarray(weights, dtype=np.float64)
  z = _standardise(sample, mean, scale)
  estimator = make(k, seed).fit(z)
  return PixelKMeans(mean=mean, scale=scale, centres=np.asarray(estimator.cluster_centers_),
                     inertia=float(estimator.inertia_))


def assign_pixels(model: PixelKMeans, hypercolumns: np.ndarray, chunk_pixels: int = 1 << 18) -> np.ndarray:
  """Cluster id of every pixel, (N, H, W) int32: nearest centre in standardised units, in chunks."""
  n_img, h, w, c = hypercolumns.shape
  per_chunk = max(1, chunk_pixels // (h * w))
  centre_sq = np.sum(model.centres ** 2, axis=1)
  out = np.empty((n_img, h, w), dtype=np.int32)
  for start in range(0, n_img, per_chunk):
    z = _standardise(hypercolumns[start:start + per_chunk].reshape(-1, c), model.mean, model.scale)
    # argmin |z - c|^2 = argmin (|c|^2 - 2 z.c); |z|^2 is common to all centres.
    ids = np.argmin(centre_sq[None, :] - 2.0 * z @ model.centres.T, axis=1)
    out[start:start + per_chunk] = ids.reshape(-1, h, w)
  return out


def cluster_mean_snr(cluster_ids: np.ndarray, snr: np.ndarray, k: int | None = None) -> np.ndarray:
  """Mean detection S/N of each cluster over all its pixels in all images; NaN for empty clusters."""
  k = int(cluster_ids.max()) + 1 if k is None else k
  ids = cluster_ids.ravel()
  counts = np.bincount(ids, minlength=k).astype(np.float64)
  sums = np.bincount(ids, weights=snr.ravel().astype(np.float64), minlength=k)
  with np.errstate(invalid="ignore", divide="ignore"):
    return sums / counts


def _snr_threshold_rule(cluster_snr: np.ndarray, snr_threshold: float) -> np.ndarray:
  return np.nan_to_num(cluster_snr, nan=-np.inf) > snr_threshold


def _faintest_is_background_rule(cluster_snr: np.ndarray, snr_threshold: float) -> np.ndarray:
  del snr_threshold  # unused by this rule
  is_object = np.isfinite(cluster_snr)
  is_object[np.nanargmin(cluster_snr)] = False
  return is_object


# Rule: cluster S/N (k,) -> is-object (k,). Empty clusters are background under both.
FOREGROUND_RULES: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
  "snr_threshold": _snr_threshold_rule,            # object iff mean S/N > snr_threshold
  "faintest_is_background": _faintest_is_background_rule,  # only the lowest-S/N cluster is background
}


def sample_pixel_rows(n_pixels: int, sample_pixels: int, seed: int) -> np.ndarray:
  """Sorted flat pixel indices of the k-means sample: the very draw `fit_pixel_kmeans`
  makes, so the chunked fit equals the unchunked one."""
  rng = np.random.default_rng(seed)
  if n_pixels <= sample_pixels:
    return np.arange(n_pixels)
  return np.sort(rng.choice(n_pixels, size=sample_pixels, replace=False))


@dataclasses.dataclass(frozen=True)
class PixelSample:
  features: np.ndarray  # (S, C) float32 hypercolumn vectors
  snr: np.ndarray       # (S,) detection S/N of the same pixels (pixels.snr_image)
  rows: np.ndarray      # (S,) flat pixel indices over (N, H, W)


@dataclasses.dataclass(frozen=True)
class Segmenter:
  """A fitted pixel classifier: k-means on hypercolumns, and which clusters are objects."""
  kmeans: PixelKMeans
  is_object: np.ndarray    # (k,) bool
  cluster_snr: np.ndarray  # (k,) mean detection S/N of each cluster's sampled pixels (NaN: empty)
  cluster_fraction: np.ndarray  # (k,) fraction of the sampled pixels in each cluster
  # Object-pixel fraction of a cutout above which it counts as flooded (`crowding`): measured on the fitting
  # cutouts (`fitted_model.fit_segmentation`); 1 = never.
  flood_limit: float = 1.0

  @property
  def k(self) -> int:
    return self.kmeans.k


def fit_segmenter(sample: PixelSample, k: int, seed: int = 0, algorithm: str = "kmeans",
                  rule: str = "snr_threshold", snr_threshold: float = 1.0,
                  weights: np.ndarray | None = None) -> Segmenter:
  """k-means on the sample; a cluster is object or background by `rule` on its sampled pixels' mean
  S/N (the sample is uniform over pixels, so this estimates the mean over all pixels)."""
  decide = registry.lookup(FOREGROUND_RULES, rule, "foreground rule")
  as_image = sample.features[None, None]  # (1, 1, S, C): every row used, in order
  kmeans = fit_pixel_kmeans(as_image, k, sample_pixels=len(sample.features), seed=seed,
                            algorithm=algorithm, weights=weights)
  ids = assign_pixels(kmeans, as_image).ravel()
  cluster_snr = cluster_mean_snr(ids, sample.snr, k)
  is_object = decide(cluster_snr, snr_threshold)
  fraction = np.bincount(ids, minlength=k) / max(len(ids), 1)
  return Segmenter(kmeans, np.asarray(is_object, bool), cluster_snr, fraction)


def assign_clusters(segmenters: Mapping[int, Segmenter],
                    chunks: Iterator[tuple[np.ndarray, np.ndarray]], n: int) -> dict[int, np.ndarray]:
  """Cluster ids (N, H, W) int16 of every pixel under each segmenter, from one hypercolumn pass."""
  ids: dict[int, np.ndarray] = {}
  for idx, hc in chunks:
    for key, segmenter in segmenters.items():
      if key not in ids:
        ids[key] = np.empty((n,) + hc.shape[1:3], dtype=np.int16)
      ids[key][idx] = assign_pixels(segmenter.kmeans, hc)
  return ids
