"""Raw cutouts -> masks by the whole method: the fitted hypercolumn k-means (the study's segmentation), then the
additions, each switchable for the ablation: the crowded-field rule (`crowding`), the faint sources the clusters
miss (`faint`), the deblending of touching sources (`deblend`) and mask edges at an isophote (`edges`). All read the gri S/N map smoothed by a
Gaussian matched to the PSF."""

import dataclasses

import numpy as np

from stargal_jax.segment import crowding, deblend, edges, faint, hypercolumns, labelling, pixel_kmeans, pixels


@dataclasses.dataclass(frozen=True)
class Refinements:
  """What follows the clusters: deblending (None = off), the crowded-field rule, the faint sources (None = off),
  the isophote the mask edges move to (None = off), and their S/N map."""
  deblending: deblend.DeblendOptions | None = None
  crowding: bool = False
  faint_sources: faint.FaintOptions | None = None
  local_box: int = 16  # mesh of the local background of flooded cutouts (px)
  snr_sigma_px: float = 1.2  # Gaussian smoothing of the gri S/N map (SDSS PSF sigma ~1.5 px)
  edge_options: edges.EdgeOptions | None = None

  @classmethod
  def from_config(cls, seg_config) -> "Refinements":
    deblending = deblend.DeblendOptions.from_config(seg_config) if seg_config.deblend else None
    faint_options = faint.FaintOptions.from_config(seg_config) if seg_config.faint else None
    edge_options = edges.EdgeOptions.from_config(seg_config) if seg_config.get("edges", False) else None
    return cls(deblending, bool(seg_config.crowding), faint_options, int(seg_config.local_box),
               float(seg_config.detection_sigma_px), edge_options)


def smoothed_snr(images: np.ndarray, sigma_px: float) -> np.ndarray:
  """(N, H, W) the gri S/N map filtered by a Gaussian of `sigma_px`, unclipped, in units of its own robust
  noise: the filtered map's level and sigma are measured per cutout (`pixels.robust_background`), so correlated
  pixel noise (resampled frames) does not inflate the significance that white-noise scaling would assume; near
  the cutout's edge, where the filter leaves more noise, in units of the noise there (`pixels.filtered_noise_gain`)."""
  filtered = pixels.detection_image(np.asarray(images), "gri", sigma_px, clip=None)
  filtered = filtered / pixels.filtered_noise_gain(*filtered.shape[-2:], sigma_px).astype(np.float32)
  level, sigma = pixels.robust_background(filtered[:, None])
  sigma = np.where(np.isfinite(sigma) & (sigma > 0), sigma, 1.0)
  return ((filtered - np.nan_to_num(level)[:, :, None]) / sigma[:, :, None]).astype(np.float32)


def foreground(fitted, k: int, images: np.ndarray, chunk: int = 64) -> np.ndarray:
  """(N, H, W) bool: the pixels whose hypercolumn cluster (under the fitted segmenter for `k`) is an object."""
  segmenter = fitted.segmenters[k]
  x = pixels.model_inputs(images, fitted.normalizer)
  chunks = hypercolumns.iter_hypercolumns(fitted.hypercolumn_fn, lambda idx: x[idx], len(x), chunk)
  ids = pixel_kmeans.assign_clusters({k: segmenter}, chunks, len(x))[k]
  return segmenter.is_object[ids]


def refine(fitted, k: int, object_pixels: np.ndarray, images: np.ndarray, options: labelling.LabelOptions,
           refinements: Refinements, chunk: int = 64,
           snr: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Object pixels (N, H, W) of raw cutouts `images` -> (masks (N, H, W), flooded (N,) bool). `snr`: the
  images' `smoothed_snr` at `refinements.snr_sigma_px` when the caller has it (computed here otherwise).

  Crowding: a cutout whose object fraction exceeds the segmenter's `flood_limit` is segmented again after its
  local background (`crowding.local_background`) is removed, and its object pixels are then cut to the limit
  (`crowding.cap_foreground`). Faint: significant peaks outside the object pixels are added
  (`faint.add_missed_sources`). Deblending: every component is split at its significant peaks. Edges: every
  segment's outline moved to an isophote (`edges.follow_isophote`), after deblending, in the cutouts the
  crowded-field rule left alone; there, with `min_peak`, neighbour segments without a significant peak are then
  dropped (`edges.keep_significant`)."""
  object_pixels = np.array(object_pixels, bool)
  snr = smoothed_snr(images, refinements.snr_sigma_px) if snr is None else np.array(snr, np.float32)
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
  if refinements.faint_sources is not None:
    object_pixels = faint.add_missed_sources(object_pixels, snr, refinements.faint_sources)
  masks = labelling.label_objects(object_pixels, options.min_area, options.connectivity, options.centre_radius,
                                  snr=snr, deblending=refinements.deblending)
  if refinements.edge_options is not None:  # not where the crowded-field rule capped the object pixels: an
    # isophote would fill the sky between crowded sources again
    keep = ~flooded
    masks[keep] = edges.follow_isophote(masks[keep], snr[keep], refinements.edge_options.level,
                                        refinements.edge_options.peak_fraction)
    if refinements.edge_options.min_peak is not None:
      masks[keep] = edges.keep_significant(masks[keep], snr[keep], refinements.edge_options.min_peak)
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
