"""The photutils baseline: `detect_sources` + `deblend_sources` (multi-thresholding and watershed) on each
cutout's matched-filtered detection S/N image, labelled by the same rule as every other method."""

import warnings

import numpy as np
from astropy.convolution import convolve
from photutils.segmentation import deblend_sources, detect_sources, make_2dgaussian_kernel
from photutils.utils.exceptions import NoDetectionsWarning

from stargal_jax.segment import labelling, pixels


def detection_kernel(fwhm_px: float) -> np.ndarray:
  """photutils' unit-sum 2-d Gaussian kernel of `fwhm_px`, in a square of side ~2 FWHM + 1 (odd)."""
  size = 2 * int(np.ceil(fwhm_px)) + 1
  return np.asarray(make_2dgaussian_kernel(fwhm_px, size=size).array, np.float64)


def filtered_snr(snr: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """A unit-noise S/N image (H, W) convolved with `kernel` and divided by the filtered noise sigma
  sqrt(sum K^2), so a threshold stays in sigma of the filtered image."""
  smoothed = convolve(np.asarray(snr, np.float64), kernel, boundary="extend", normalize_kernel=False)
  return smoothed / np.sqrt(np.sum(kernel ** 2))


def photutils_segment(images: np.ndarray, band: str = "gri", nsigma: float = 3.0, n_pixels: int = 5,
                      fwhm_px: float = 2.5, n_levels: int = 32, contrast: float = 0.001,
                      min_area: int = 5, centre_radius: float = 5.0, snr: np.ndarray | None = None) -> np.ndarray:
  """photutils on each cutout -> masks (N, H, W) int32 (0 / 1 central / 2, 3, ... neighbours).

  Detection image: the `band` S/N image (`pixels.snr_image`: robust per-cutout background, unit noise per
  pixel), filtered by a Gaussian of `fwhm_px` (`filtered_snr`), thresholded at `nsigma` filtered sigma with
  `n_pixels` connected pixels (8-connectivity); `deblend_sources` with `n_levels` exponential levels and
  `contrast`; each segment then goes through `labelling.order_segments`. `snr` (N, H, W) may be passed when
  already computed for `band`."""
  snr = pixels.snr_image(np.asarray(images), band) if snr is None else np.asarray(snr)
  kernel = detection_kernel(fwhm_px)
  masks = np.zeros(snr.shape, np.int32)
  for i, one in enumerate(snr):
    detection = filtered_snr(one, kernel)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", NoDetectionsWarning)  # an empty cutout is an answer (no objects), not a fault
      segm = detect_sources(detection, nsigma, n_pixels)
    if segm is None:
      continue
    if contrast < 1.0:
      segm = deblend_sources(detection, segm, n_pixels, n_levels=n_levels, contrast=contrast,
                             progress_bar=False)
    masks[i] = labelling.order_segments(segm.data, min_area, centre_radius)
  return masks
