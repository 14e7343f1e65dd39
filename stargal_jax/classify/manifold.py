"""The study's manifold + clustering step: latent vectors -> one continuous score per object.

The baseline (V+M) sends the VAE's latent means to a manifold learner reduced to 1-D (Isomap with
10 neighbours; t-SNE and spectral embedding also tried) and thresholds that score at the prior
star fraction. Clustering (GMM, k-means) into two groups is the other unsupervised route. The
supervised ceilings (cross-validated logistic regression, and gradient boosting as a nonlinear one, on the
same latents) are the references the unsupervised numbers are read against. Host-side: numpy arrays in, numpy arrays out.

Scale: neighbour-graph embeddings cost O(N^2) (on 2 cores Isomap takes 85 s and spectral
embedding 326 s on 20,000 points), so on large sets they are fitted on a random subsample of
`fit_size` points and extended to the rest out of sample:
- isomap, pca: their own `transform` (Isomap: geodesic distances through the subsample's graph);
- spectral, tsne: neither has a transform, so a distance-weighted k-nearest-neighbour regression
  from the subsample's embedding (not a Nystrom extension).
The subsample's own points keep their fitted values. Orientation (which end is galaxy) is NOT
decided here: see `metrics.orient_score`.
"""

import warnings
from typing import Callable

import numpy as np
from scipy.sparse import SparseEfficiencyWarning
from scipy.sparse.linalg import ArpackError
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE, Isomap, SpectralEmbedding
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stargal_jax import registry
from stargal_jax.metrics import as_galaxy_mask, classification_metrics, roc_auc

TRANSFORM_BATCH = 4096  # Isomap.transform holds a (batch, fit_size) geodesic matrix
TSNE_EXACT_MAX_POINTS = 1000  # below this, exact t-SNE is faster than Barnes-Hut in 1-D


def _as_latents(latents) -> np.ndarray:
  array = np.asarray(latents, dtype=np.float64)
  if array.ndim == 1:
    array = array[:, None]
  if array.ndim != 2:
    raise ValueError(f"latents must be (N, d), got shape {array.shape}")
  if not np.all(np.isfinite(array)):
    raise ValueError(f"latents contain {np.count_nonzero(~np.isfinite(array))} non-finite values")
  return array


def _knn_extension(fit_points, fit_values, query_points, n_neighbors: int) -> np.ndarray:
  """Distance-weighted kNN regression of a fitted 1-D embedding onto new points."""
  if len(query_points) == 0:
    return np.zeros(0)
  regressor = KNeighborsRegressor(n_neighbors=min(n_neighbors, len(fit_points)), weights="distance")
  return regressor.fit(fit_points, fit_values).predict(query_points)


def _isomap(fit_points, query_points, n_neighbors: int, seed: int):
  del seed  # Isomap has no randomness beyond ARPACK's start vector (signs are fixed by sklearn)

  def fit(eigen_solver: str) -> Isomap:
    model = Isomap(n_neighbors=n_neighbors, n_components=1, eigen_solver=eigen_solver)
    with warnings.catch_warnings():
      # Two well-separated clusters leave the kNN graph disconnected; sklearn then joins the
      # components by their closest pair of points, which is what we want here.
      warnings.filterwarnings("ignore", message="The number of connected components")
      warnings.filterwarnings("ignore", category=SparseEfficiencyWarning)
      return model.fit(fit_points)

  try:
    model = fit("auto")
  except ArpackError as e:
    # Latents collapsed onto a few points (AW's tanh-saturated means did, at full size) can leave ARPACK with a
    # zero start vector; the dense eigensolver gives the same embedding without iterating.
    warnings.warn(f"Isomap: ARPACK failed ({e}); using the dense eigensolver", stacklevel=2)
    model = fit("dense")
  fitted = model.embedding_[:, 0]
  if len(query_points) == 0:
    return fitted, np.zeros(0)
  extended = np.concatenate([model.transform(query_points[start:start + TRANSFORM_BATCH])[:, 0]
                             for start in range(0, len(query_points), TRANSFORM_BATCH)])
  return fitted, extended


def _pca(fit_points, query_points, n_neighbors: int, seed: int):
  del n_neighbors
  model = PCA(n_components=1, random_state=seed).fit(fit_points)
  extended = model.transform(query_points)[:, 0] if len(query_points) else np.zeros(0)
  return model.transform(fit_points)[:, 0], extended


def _spectral(fit_points, query_points, n_neighbors: int, seed: int):
  model = SpectralEmbedding(n_components=1, affinity="nearest_neighbors",
                            n_neighbors=n_neighbors, random_state=seed)
  with warnings.catch_warnings():
    # A disconnected graph is exactly the two-cluster case; the embedding is still usable.
    warnings.filterwarnings("ignore", message="Graph is not fully connected")
    fitted = model.fit_transform(fit_points)[:, 0]
  return fitted, _knn_extension(fit_points, fitted, query_points, n_neighbors)


def _tsne(fit_points, query_points, n_neighbors: int, seed: int):
  # Standard perplexity 30, capped below N/3 as t-SNE needs 3 * perplexity neighbours.
  perplexity = float(min(30.0, max(2.0, (len(fit_points) - 1) / 3.0)))
  # sklearn's Barnes-Hut costs ~18 s even at N = 1000 in 1-D (exact: 13 s; at 2000: 20 s vs 84 s).
  method = "exact" if len(fit_points) <= TSNE_EXACT_MAX_POINTS else "barnes_hut"
  model = TSNE(n_components=1, perplexity=perplexity, init="pca", random_state=seed, method=method)
  fitted = model.fit_transform(fit_points)[:, 0]
  return fitted, _knn_extension(fit_points, fitted, query_points, n_neighbors)


EMBEDDINGS: dict[str, Callable] = {
    "isomap": _isomap,
    "tsne": _tsne,
    "spectral": _spectral,
    "pca": _pca,
}


def embed_1d(latents, method: str = "isomap", n_neighbors: int = 10, fit_size: int = 5000,
             seed: int = 0) -> np.ndarray:
  """(N,) one-dimensional embedding of `latents` (N, d) by `method` (a key of EMBEDDINGS).

  Fitted on a random subsample of `fit_size` points (drawn with `seed`) when N is larger, and
  extended to the others out of sample (see the module docstring). Deterministic given the seed.
  Latents that are already 1-D ((N,) or (N, 1)) are returned as they are (as float64).
  """
  embed = registry.lookup(EMBEDDINGS, method, "embedding")
  points = _as_latents(latents)
  if points.shape[1] == 1:
    return points[:, 0].copy()
  n = len(points)
  is_fit = np.zeros(n, dtype=bool)
  if n > fit_size:
    is_fit[np.random.default_rng(seed).choice(n, size=fit_size, replace=False)] = True
  else:
    is_fit[:] = True
  fitted, extended = embed(points[is_fit], points[~is_fit], n_neighbors, seed)
  score = np.empty(n)
  score[is_fit], score[~is_fit] = fitted, extended
  return score


def _canonical_order(centres: np.ndarray) -> np.ndarray:
  """Index order putting the component with the larger first latent coordinate second (label 1)."""
  return np.argsort(centres[:, 0], kind="stable")


def _gmm(points, seed: int):
  model = GaussianMixture(n_components=2, covariance_type="full", n_init=3, random_state=seed)
  model.fit(points)
  order = _canonical_order(model.means_)
  posterior = model.predict_proba(points)[:, order]
  return np.argmax(posterior, axis=1), posterior[:, 1]


def _kmeans(points, seed: int):
  model = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(points)
  distances = model.transform(points)[:, _canonical_order(model.cluster_centers_)]
  score = distances[:, 0] - distances[:, 1]  # > 0: nearer centre 1
  return (score > 0).astype(np.int64), score


CLUSTERERS: dict[str, Callable] = {"gmm": _gmm, "kmeans": _kmeans}


def cluster_2(latents, method: str = "gmm", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(labels in {0, 1}, continuous score): two clusters of `latents` by `method` (a key of CLUSTERERS).

  gmm: full-covariance Gaussian mixture, score = posterior probability of component 1;
  kmeans: score = distance to centre 0 minus distance to centre 1. Component 1 is the one whose
  centre has the larger first latent coordinate (a fixed naming, not a galaxy/star decision).
  """
  cluster = registry.lookup(CLUSTERERS, method, "clusterer")
  labels, score = cluster(_as_latents(latents), seed)
  return labels.astype(np.int64), score.astype(np.float64)


def uncorrelated_with(latents, nuisance, seed: int = 0) -> np.ndarray:
  """(N,) the part of `latents` (N, d >= 2) carrying no linear trace of `nuisance` (N,), e.g. r magnitude.

  Why: a 2-unit latent mixes morphology with brightness, and in which proportions changes from seed to
  seed (on the embedded data the KL unit carries the morphology in some seeds and brightness in others;
  a GMM on both units then splits by brightness in about a third of the seeds). Brightness is measured on
  the images without labels, so its direction can be removed: the latents are whitened, and the score is
  their projection onto the directions uncorrelated with the nuisance. With d = 2 that is one direction,
  a . cov(z, nuisance) = 0 (independent of any linear reparameterisation of the latent); with d > 2 the
  (d-1)-dimensional remainder goes to the 2-component GMM of `cluster_2`. Objects with a non-finite
  nuisance are scored but do not enter the fit.
  """
  points = _as_latents(latents)
  values = np.asarray(nuisance, dtype=np.float64).ravel()
  if len(values) != len(points):
    raise ValueError(f"{len(points)} latents but {len(values)} nuisance values")
  if points.shape[1] < 2:
    raise ValueError(f"uncorrelated_with needs latents with >= 2 units, got {points.shape[1]}")
  usable = np.isfinite(values)
  if usable.sum() <= points.shape[1] + 1:
    raise ValueError(f"only {int(usable.sum())} finite nuisance values for {points.shape[1]} latent units")
  centre = points[usable].mean(axis=0)
  variances, axes = np.linalg.eigh(np.cov(points[usable] - centre, rowvar=False))
  keep = variances > 1e-12 * variances.max()  # a collapsed unit carries nothing to keep
  white = (points - centre) @ (axes[:, keep] / np.sqrt(variances[keep]))
  link = white[usable].T @ (values[usable] - values[usable].mean()) / usable.sum()
  if white.shape[1] < 2 or not np.any(link):
    raise ValueError("latents have fewer than 2 non-constant directions, or none varies with the nuisance")
  complement = np.linalg.svd(link[None, :])[2][1:]  # orthonormal rows spanning {a : a . link = 0}
  remainder = white @ complement.T
  if remainder.shape[1] == 1:
    return remainder[:, 0]
  return cluster_2(remainder, method="gmm", seed=seed)[1]


def _logistic(seed: int):
  return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def _boosting(seed: int):
  # A nonlinear ceiling that needs no feature scaling and little tuning; early stopping on an inner split.
  return HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, early_stopping=True,
                                        validation_fraction=0.15, random_state=seed)


# The supervised ceilings: a linear one (the study's latents read off by a line) and a nonlinear one.
CEILING_MODELS: dict[str, Callable] = {"logistic": _logistic, "boosting": _boosting}


def cross_validated_probability(features, is_galaxy, model: str = "logistic", seed: int = 0,
                                folds: int = 5) -> np.ndarray:
  """(N,) out-of-fold galaxy probability of `model` (a key of CEILING_MODELS) trained on `features` (N, d):
  each object's prediction comes from the fold that did not train on it (stratified, shuffled with `seed`)."""
  build = registry.lookup(CEILING_MODELS, model, "supervised ceiling model")
  points = _as_latents(features)
  labels = as_galaxy_mask(is_galaxy)
  if len(labels) != len(points):
    raise ValueError(f"{len(points)} feature rows but {len(labels)} labels")
  splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
  return cross_val_predict(build(seed), points, labels, cv=splitter, method="predict_proba")[:, 1]


def supervised_ceiling(latents, is_galaxy, seed: int = 0, folds: int = 5, model: str = "logistic",
                       r_mag=None, mag_bins=None) -> dict:
  """Cross-validated supervised classifier on the latents: the upper reference for the label-free score.

  `model`: 'logistic' (standardised logistic regression, the default) or 'boosting' (histogram gradient
  boosting, a nonlinear ceiling). AUC from the out-of-fold galaxy probability, accuracy at probability 0.5;
  with `r_mag` and `mag_bins`, also the AUC per r-magnitude bin (`by_mag`, as `metrics.classification_metrics`
  bins them).
  """
  labels = as_galaxy_mask(is_galaxy)
  probability = cross_validated_probability(latents, labels, model, seed, folds)
  out = {"auc": roc_auc(labels, probability), "accuracy": float(np.mean((probability > 0.5) == labels)),
         "folds": int(folds), "n": int(len(labels)), "model": model}
  if r_mag is not None and mag_bins is not None:
    out["by_mag"] = [{"label": b["label"], "auc": b["auc"], "n": b["n"]} for b in classification_metrics(
        labels, probability, 0.5, r_mag, mag_bins)["by_mag"]]
  return out
