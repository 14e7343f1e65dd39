"""Object pixels -> masks: connected components, the central object (label 1) and its neighbours (2, 3, ... by
decreasing size; 0 is background), and neighbours replaced by noise for the masked classification (seg_cvae).

Masks are integer `(N, H, W)`.
"""

import dataclasses

import numpy as np
from scipy import ndimage

from stargal_jax import registry
from stargal_jax.segment import deblend, pixel_kmeans, pixels


MASK_DTYPE = np.int16  # labels 0 .. a few tens; int16 keeps a 240k-cutout mask file at 2 GB, not 4


# Square structure = 8-connectivity (diagonal neighbours join), cross = 4-connectivity.
CONNECTIVITY_STRUCTURES = {4: ndimage.generate_binary_structure(2, 1),
                           8: ndimage.generate_binary_structure(2, 2)}


def _centre_distance(shape: tuple[int, int]) -> np.ndarray:
  h, w = shape
  yy, xx = np.mgrid[0:h, 0:w]
  return np.hypot(yy - (h - 1) / 2.0, xx - (w - 1) / 2.0)


def order_segments(segments: np.ndarray, min_area: int = 5, centre_radius: float = 5.0) -> np.ndarray:
  """Relabels one image's segments (H, W) int (0 = none) to 0 / 1 central / 2, 3, ... neighbours.

  Segments with fewer than `min_area` pixels are dropped. The central object is the segment whose
  nearest pixel is closest to the array centre (a segment covering one of the four central pixels
  is at 0.71 px), provided that distance is <= `centre_radius`; ties go to the larger segment.
  The remaining segments become 2, 3, ... by decreasing size (ties: original id order).
  """
  segments = np.asarray(segments)
  ids = np.unique(segments[segments > 0])
  out = np.zeros(segments.shape, dtype=np.int32)
  if ids.size == 0:
    return out
  sizes = np.asarray(ndimage.sum_labels(np.ones(segments.shape), segments, ids))
  ids, sizes = ids[sizes >= min_area], sizes[sizes >= min_area]
  if ids.size == 0:
    return out
  dist = np.asarray(ndimage.minimum(_centre_distance(segments.shape), segments, ids))
  new_label = np.zeros(ids.size, dtype=np.int32)
  nearest = np.lexsort((-sizes, dist))[0]
  has_central = dist[nearest] <= centre_radius
  if has_central:
    new_label[nearest] = 1
  others = [i for i in np.argsort(-sizes, kind="stable") if not (has_central and i == nearest)]
  new_label[others] = np.arange(2, 2 + len(others))
  lut = np.zeros(int(segments.max()) + 1, dtype=np.int32)
  lut[ids] = new_label
  return lut[np.clip(segments, 0, None)]


def label_objects(foreground: np.ndarray, min_area: int = 5, connectivity: int = 8,
                  centre_radius: float = 5.0, snr: np.ndarray | None = None,
                  deblending: deblend.DeblendOptions | None = None) -> np.ndarray:
  """Connected components of foreground (N, H, W) bool -> masks (N, H, W) int32 (see order_segments).
  With `deblending`, each component with several significant peaks of the smoothed S/N map `snr` (N, H, W)
  is split first (`deblend.deblend_segments`)."""
  structure = registry.lookup(CONNECTIVITY_STRUCTURES, connectivity, "connectivity")
  if deblending is not None and snr is None:
    raise ValueError("deblending needs the smoothed S/N map of the same cutouts")
  masks = np.zeros(foreground.shape, dtype=np.int32)
  for i, fg in enumerate(np.asarray(foreground, dtype=bool)):
    components, _ = ndimage.label(fg, structure=structure)
    if deblending is not None:
      components = deblend.deblend_segments(components, snr[i], deblending)
    masks[i] = order_segments(components, min_area, centre_radius)
  return masks


@dataclasses.dataclass(frozen=True)
class LabelOptions:
  """Connected components -> mask labels (see `label_objects`)."""
  min_area: int = 5
  connectivity: int = 8
  centre_radius: float = 5.0

  @classmethod
  def from_config(cls, seg_config) -> "LabelOptions":
    return cls(int(seg_config.min_area), int(seg_config.connectivity), float(seg_config.centre_radius))


def masks_from_clusters(segmenter: pixel_kmeans.Segmenter, cluster_ids: np.ndarray,
                        options: LabelOptions) -> np.ndarray:
  """(N, H, W) masks: object clusters -> foreground -> connected components, central = 1."""
  foreground = segmenter.is_object[cluster_ids]
  return label_objects(foreground, options.min_area, options.connectivity,
                           options.centre_radius).astype(MASK_DTYPE)


def neighbour_region(masks: np.ndarray, dilate: int = 2) -> np.ndarray:
  """Pixels to replace, (N, H, W) bool: neighbour pixels (label >= 2) grown by `dilate` pixels
  (square steps, so diagonal wings go too), never the central object's pixels (label 1)."""
  region = np.asarray(masks) >= 2
  if dilate > 0:
    structure = CONNECTIVITY_STRUCTURES[8][None]  # grow within each image, not across the batch
    region = ndimage.binary_dilation(region, structure=structure, iterations=dilate)
  return region & (np.asarray(masks) != 1)


def mask_neighbours(images: np.ndarray, masks: np.ndarray, seed: int = 0,
                    noise_sigma: float | np.ndarray | None = None, dilate: int = 2,
                    min_background_pixels: int = 32, index_offset: int = 0) -> np.ndarray:
  """Replaces neighbour pixels (dilated) with noise consistent with the image, not zeros.

  Per image and band: level = robust median of the background pixels (label 0 and outside the
  replaced region, whose ring holds neighbour wings), sigma = their robust 1.4826 x MAD, or
  `noise_sigma` (scalar or broadcastable to (N, 5)) when given. With fewer than
  `min_background_pixels` such pixels, all pixels outside the region are used. Non-finite
  pixels are ignored in the estimates, so a few NaNs do not spread; a band with no finite pixel
  to imitate stays NaN in the replaced pixels.
  Replaced pixels are level + sigma x N(0, 1), drawn per image from default_rng([seed, index_offset
  + i]): pass the batch's first global index as `index_offset` and the result does not depend on
  batching. Returns a new float32 array; all other pixels are unchanged.
  """
  images = np.asarray(images)
  region = neighbour_region(masks, dilate)
  background = (np.asarray(masks) == 0) & ~region
  few = background.reshape(len(background), -1).sum(axis=1) < min_background_pixels
  background[few] = ~region[few]
  level, sigma = pixels.robust_background(images, exclude=~background)
  if noise_sigma is not None:
    sigma = np.broadcast_to(np.asarray(noise_sigma, dtype=np.float64), level.shape)
  out = np.array(images, dtype=np.float32, copy=True)
  for i in np.flatnonzero(region.reshape(len(region), -1).any(axis=1)):
    rng = np.random.default_rng([seed, index_offset + int(i)])
    noise = rng.standard_normal(out.shape[1:])
    fill = level[i, :, None, None] + sigma[i, :, None, None] * noise
    out[i][:, region[i]] = fill[:, region[i]].astype(np.float32)
  return out
