"""Per-band normalisation of nanomaggy cutouts: fitted on a training sample, applied anywhere.

Raw SDSS pixel histograms are extremely heavy-tailed (sky noise around 0, objects thousands of
sigma above it), so statistics are robust (median and 1.4826 MAD, which equals sigma for Gaussian
noise) and are fitted once on a sample of training images, then stored with the run as JSON.

  zscore: (x - median) / (1.4826 MAD) per band: sky noise becomes unit width; bright pixels stay large.
  asinh:  y = asinh(x / (2 b)), the form of SDSS "luptitudes" (which are an affine function of it),
          with the softening b per band = the background noise (1.4826 MAD of the pixels) unless given
          (e.g. SDSS_SOFTENING_NANOMAGGIES); then (y - median(y)) / (1.4826 MAD(y)). Linear for
          noise, logarithmic for objects, so the outputs stay O(1-10).
  asinh_shape: the shape of each object separated from its flux. Every cutout is divided by its own flux F
          (r-band flux within SHAPE_FLUX_RADIUS_PX of the centre, floored at SHAPE_FLUX_FLOOR_SIGMA times that
          aperture's background noise, the same F for all five bands so colours are kept), then
          y = asinh((x / F) / (2 s)) with one softening s per band in these unit-flux units, the median over the
          sample of (background noise / F): the noise of a typical object. Standardised as asinh. Why: with
          the global stretch an object's weight in a pixel loss grows with its brightness, so a faint object's
          profile (where stars and galaxies differ least) is worth almost nothing to an autoencoder; at unit
          flux every object's shape counts alike, and the brightness no longer takes up latent units.

`normalize(params, x)` works on numpy and jax.numpy arrays (also under jit) of shape (..., 5, H, W).
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable, NamedTuple, Sequence

import numpy as np

from stargal_jax import registry

BANDS = ("u", "g", "r", "i", "z")
MAD_TO_SIGMA = 1.4826
# The SDSS asinh-magnitude softening b (u 1.4e-10 ... z 7.4e-10 maggies) in nanomaggies.
SDSS_SOFTENING_NANOMAGGIES = (0.14, 0.09, 0.12, 0.18, 0.74)
PARAMS_VERSION = 1
SHAPE_FLUX_BAND = 2  # r: the detection band
SHAPE_FLUX_RADIUS_PX = 6.0  # 2.4": most of a point source's flux in any seeing, little of a neighbour's
SHAPE_FLUX_FLOOR_SIGMA = 3.0  # F >= 3 sigma of the aperture's noise: no division by noise or negative flux


def robust_center_scale(values: np.ndarray) -> tuple[float, float]:
  """Median and 1.4826 * median absolute deviation of the finite values."""
  values = np.asarray(values, dtype=np.float64).reshape(-1)
  values = values[np.isfinite(values)]
  if values.size == 0:
    raise ValueError("no finite values to estimate robust statistics from")
  center = float(np.median(values))
  return center, MAD_TO_SIGMA * float(np.median(np.abs(values - center)))


def _checked_scales(scales: Sequence[float], what: str) -> list[float]:
  for band, scale in zip(BANDS, scales):
    if not (np.isfinite(scale) and scale > 0):
      raise ValueError(f"band {band}: {what} is {scale}; cannot normalise (constant or empty band in the sample?)")
  return [float(s) for s in scales]


def _fit_zscore(sample: np.ndarray) -> dict:
  stats = [robust_center_scale(sample[:, b]) for b in range(sample.shape[1])]
  return {"center": [c for c, _ in stats], "scale": _checked_scales([s for _, s in stats], "1.4826 MAD")}


def _fit_asinh(sample: np.ndarray, softening: Sequence[float] | None = None) -> dict:
  if softening is None:
    softening = [robust_center_scale(sample[:, b])[1] for b in range(sample.shape[1])]
  softening = _checked_scales(softening, "the softening b")
  if len(softening) != sample.shape[1]:
    raise ValueError(f"softening has {len(softening)} values for {sample.shape[1]} bands")
  stats = [robust_center_scale(np.arcsinh(sample[:, b].astype(np.float64) / (2 * b_)))
           for b, b_ in enumerate(softening)]
  return {"softening": softening, "center": [c for c, _ in stats],
          "scale": _checked_scales([s for _, s in stats], "1.4826 MAD of asinh(x / 2b)")}


def _shape_aperture(height: int, width: int) -> np.ndarray:
  """(H, W) 1 inside SHAPE_FLUX_RADIUS_PX of the centre pixel (H // 2, W // 2), else 0."""
  y, x = np.indices((height, width), dtype=np.float64)
  return (np.hypot(y - height // 2, x - width // 2) <= SHAPE_FLUX_RADIUS_PX).astype(np.float64)


def object_flux(x, flux_floor: float, xp=np):
  """(...,) each cutout's flux F of `asinh_shape` (nanomaggies), floored at `flux_floor`."""
  aperture = xp.asarray(_shape_aperture(*x.shape[-2:]), dtype=x.dtype)
  flux = xp.sum(x[..., SHAPE_FLUX_BAND, :, :] * aperture, axis=(-2, -1))
  return xp.maximum(flux, xp.asarray(flux_floor, dtype=x.dtype))


def _fit_asinh_shape(sample: np.ndarray) -> dict:
  sample = sample.astype(np.float64)
  noise = [robust_center_scale(sample[:, b])[1] for b in range(sample.shape[1])]
  floor = SHAPE_FLUX_FLOOR_SIGMA * noise[SHAPE_FLUX_BAND] * math.sqrt(_shape_aperture(*sample.shape[-2:]).sum())
  flux = object_flux(sample, floor)
  softening = _checked_scales([float(np.median(n / flux)) for n in noise], "the unit-flux softening")
  shapes = sample / flux[:, None, None, None]
  stats = [robust_center_scale(np.arcsinh(shapes[:, b] / (2 * s_))) for b, s_ in enumerate(softening)]
  return {"softening": softening, "flux_floor": [float(floor)] * sample.shape[1], "center": [c for c, _ in stats],
          "scale": _checked_scales([s for _, s in stats], "1.4826 MAD of asinh(x / F / 2s)")}


def _apply_asinh_shape(params: dict, x, xp):
  n = len(params["center"])
  flux = object_flux(x, params["flux_floor"][0], xp)[..., None, None, None]
  y = xp.asinh(x / flux / (2 * _band_constant(xp, params["softening"], x.dtype, n)))
  return (y - _band_constant(xp, params["center"], x.dtype, n)) / _band_constant(xp, params["scale"], x.dtype, n)


def _namespace(x):
  """numpy or jax.numpy, whichever `x` belongs to (jax arrays and tracers name theirs)."""
  return x.__array_namespace__() if hasattr(x, "__array_namespace__") else np


def _band_constant(xp, values: Sequence[float], dtype, n_bands: int):
  return xp.asarray(np.asarray(values, np.float64).reshape(n_bands, 1, 1), dtype=dtype)


def _apply_zscore(params: dict, x, xp):
  n = len(params["center"])
  return (x - _band_constant(xp, params["center"], x.dtype, n)) / _band_constant(xp, params["scale"], x.dtype, n)


def _apply_asinh(params: dict, x, xp):
  n = len(params["center"])
  y = xp.asinh(x / (2 * _band_constant(xp, params["softening"], x.dtype, n)))
  return (y - _band_constant(xp, params["center"], x.dtype, n)) / _band_constant(xp, params["scale"], x.dtype, n)


class Normalizer(NamedTuple):
  fit: Callable[..., dict]  # (sample (N, bands, H, W) float, **options) -> per-band constants
  apply: Callable  # (params, x, array namespace) -> normalised x
  keys: tuple[str, ...]  # per-band lists the params must hold


NORMALIZERS = {
    "zscore": Normalizer(_fit_zscore, _apply_zscore, ("center", "scale")),
    "asinh": Normalizer(_fit_asinh, _apply_asinh, ("softening", "center", "scale")),
    "asinh_shape": Normalizer(_fit_asinh_shape, _apply_asinh_shape, ("softening", "flux_floor", "center", "scale")),
}


def get_normalizer(method: str) -> Normalizer:
  return registry.lookup(NORMALIZERS, method, "normalisation")


def _sample_images(images, max_images: int, seed: int) -> np.ndarray:
  """Up to max_images images, a fixed random subset (sorted reads: kind to memmaps and stores)."""
  n = len(images)
  if n == 0:
    raise ValueError("cannot fit a normaliser on zero images")
  chosen = np.arange(n) if n <= max_images else np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))
  read = getattr(images, "read", None)  # a packed Store
  sample = read(chosen) if read is not None else np.asarray(images[chosen] if n > max_images else images)
  if sample.ndim != 4:
    raise ValueError(f"expected images (N, bands, H, W), got shape {sample.shape}")
  return sample


def fit_normalizer(images, method: str, max_images: int = 1024, seed: int = 0, **options) -> dict:
  """Per-band statistics from (a fixed sample of) training images (N, 5, H, W) or a packed Store."""
  normalizer = get_normalizer(method)
  sample = _sample_images(images, max_images, seed)
  params = {"method": method, "version": PARAMS_VERSION, "bands": list(BANDS[:sample.shape[1]]),
            "n_images": int(len(sample)), "max_images": int(max_images), "seed": int(seed)}
  params.update(normalizer.fit(sample, **options))
  return validate_params(params)


def validate_params(params: dict) -> dict:
  """Checks a params dict (e.g. loaded from JSON) before it is used; returns it."""
  normalizer = get_normalizer(params.get("method"))
  n_bands = len(params.get("center", ()))
  for key in normalizer.keys:
    values = params.get(key)
    if not isinstance(values, list) or len(values) != n_bands or not np.all(np.isfinite(values)):
      raise ValueError(f"normaliser params: {key!r} must be a list of {n_bands} finite floats, got {values!r}")
  _checked_scales(params["scale"], "scale")
  return params


def normalize(params: dict, x):
  """Normalises images (..., bands, H, W) (band axis -3), numpy or jax.numpy, keeping float dtypes."""
  xp = _namespace(x)
  x = xp.asarray(x)
  if not xp.isdtype(x.dtype, "real floating"):
    x = xp.astype(x, xp.float32)
  n_bands = len(params["center"])
  if x.ndim < 3 or x.shape[-3] != n_bands:
    raise ValueError(f"expected images (..., {n_bands}, H, W), got shape {x.shape}")
  return get_normalizer(params["method"]).apply(params, x, xp)


def save_normalizer(path: str | os.PathLike, params: dict) -> None:
  """Stores the fitted statistics with the run as JSON."""
  with open(path, "w") as f:
    json.dump(validate_params(params), f, indent=1)


def load_normalizer(path: str | os.PathLike) -> dict:
  with open(path) as f:
    return validate_params(json.load(f))
