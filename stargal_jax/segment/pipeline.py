"""Raw cutouts -> masks by the whole method: the fitted hypercolumn k-means (the study's segmentation), then the
two additions, each switchable for the ablation: the crowded-field rule (`crowding`) and the deblending of
touching sources (`deblend`). Both read the gri S/N map smoothed by a Gaussian matched to the PSF."""

import dataclasses

import numpy as np

from stargal_jax.segment import crowding, deblend, hypercolumns, labelling, pixel_kmeans, pixels


@dataclasses.dataclass(frozen=True)
class Refinements:
  """What follows the clusters: deblending (None = off), the crowded-field rule, and their S/N map."""
  deblending: deblend.DeblendOptions | None = None
  crowding: bool = False
  local_box: int = 16  # mesh of the local background of flooded cutouts (px)
  snr_sigma_px: float = 1.2  # Gaussian smoothing of the gri S/N map (SDSS PSF sigma ~1.5 px)

  @classmethod
  def from_config(cls, seg_config) -> "Refinements":
    deblending = deblend.DeblendOptions.from_config(seg_config) if seg_config.deblend else None
    return cls(deblending, bool(seg_config.crowding), int(seg_config.local_box),
               float(seg_config.detection_sigma_px))


def smoothed_snr(images: np.ndarray, sigma_px: float) -> np.ndarray:
  """(N, H, W) the gri S/N map filtered by a Gaussian of `sigma_px`, in sigma of the filtered map, unclipped."""
  return pixels.detection_image(np.asarray(images), "gri", sigma_px, clip=None)


def foreground(fitted, k: int, images: np.ndarray, chunk: int = 64) -> np.ndarray:
  """(N, H, W) bool: the pixels whose hypercolumn cluster (under the fitted segmenter for `k`) is an object."""
  segmenter = fitted.segmenters[k]
  x = pixels.model_inputs(images, fitted.normalizer)
  chunks = hypercolumns.iter_hypercolumns(fitted.hypercolumn_fn, lambda idx: x[idx], len(x), chunk)
  ids = pixel_kmeans.assign_clusters({k: segmenter}, chunks, len(x))[k]
  return segmenter.is_object[ids]


def refine(fitted, k: int, object_pixels: np.ndarray, images: np.ndarray, options: labelling.LabelOptions,
           refinements: Refinements, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """Object pixels (N, H, W) of raw cutouts `images` -> (masks (N, H, W), flooded (N,) bool).

  Crowding: a cutout whose object fraction exceeds the segmenter's `flood_limit` is segmented again after its
  local background (`crowding.local_background`) is removed, and its object pixels are then cut to the limit
  (`crowding.cap_foreground`). Deblending: every component is split at its significant peaks."""
  object_pixels = np.array(object_pixels, bool)
  snr = smoothed_snr(images, refinements.snr_sigma_px)
  flooded = np.zeros(len(images), bool)
  limit = float(fitted.segmenters[k].flood_limit)
  if refinements.crowding and limit < 1.0:
    flooded = crowding.object_fraction(object_pixels) > limit
    if flooded.any():
      local = (np.asarray(images, np.float64)[flooded]
               - crowding.local_background(np.asarray(images)[flooded], refinements.local_box)).astype(np.float32)
      snr_local = smoothed_snr(local, refinements.snr_sigma_px)
      object_pixels[flooded] = crowding.cap_foreground(foreground(fitted, k, local, chunk), snr_local, limit)
      snr[flooded] = snr_local
  masks = labelling.label_objects(object_pixels, options.min_area, options.connectivity, options.centre_radius,
                                  snr=snr, deblending=refinements.deblending)
  return masks.astype(labelling.MASK_DTYPE), flooded


def segment_images(fitted, k: int, images: np.ndarray, options: labelling.LabelOptions = labelling.LabelOptions(),
                   refinements: Refinements = Refinements(), chunk: int = 64,
                   sky_subtract: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Raw ugriz cutouts (N, 5, H, W), nanomaggies -> (masks, flooded) by the whole method (`refine`). With
  `sky_subtract`, each cutout's robust background level is removed first (`pixels.subtract_sky`: real frames)."""
  images = pixels.subtract_sky(images) if sky_subtract else np.asarray(images, np.float32)
  return refine(fitted, k, foreground(fitted, k, images, chunk), images, options, refinements, chunk)


def segment_store(fitted, k: int, read, n: int, options: labelling.LabelOptions, refinements: Refinements,
                  chunk: int = 64, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """`segment_images` over rows 0..n-1 of a store (`read(indices)` -> raw images), `block` rows at a time."""
  masks = np.zeros((n, 64, 64), labelling.MASK_DTYPE)
  flooded = np.zeros(n, bool)
  for start in range(0, n, block):
    idx = np.arange(start, min(start + block, n))
    m, f = segment_images(fitted, k, read(idx), options, refinements, chunk)
    masks[idx], flooded[idx] = m, f
  return masks, flooded
