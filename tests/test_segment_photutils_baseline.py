"""segment.photutils_baseline: without deblending it equals a direct threshold of the filtered S/N image (scipy
convolution, connected components); with it, two touching Gaussians become two segments."""

import numpy as np
from scipy import ndimage

from stargal_jax.segment import labelling, photutils_baseline


def _scene(seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:64, 0:64]
  snr = rng.normal(0.0, 1.0, (64, 64))
  for x, y, a, s in ((31.5, 31.5, 6.0, 2.5), (10, 50, 3.0, 1.5), (50, 12, 2.0, 2.0), (24.5, 31.5, 5.0, 2.0)):
    snr += a * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / s ** 2)
  return snr


def test_without_deblending_it_is_a_direct_threshold_of_the_filtered_snr():
  snr = _scene()
  fwhm, nsigma, npix = 2.5, 3.0, 5
  masks = photutils_baseline.photutils_segment(np.zeros((1, 5, 64, 64)), nsigma=nsigma, n_pixels=npix, fwhm_px=fwhm,
                                               contrast=1.0, snr=snr[None])
  kernel = photutils_baseline.detection_kernel(fwhm)
  # Direct: convolve (edge pixels repeated), divide by the filtered noise sigma, threshold, 8-connected, >= npix.
  filtered = ndimage.convolve(snr, kernel, mode="nearest") / np.sqrt((kernel ** 2).sum())
  components, _ = ndimage.label(filtered > nsigma, structure=np.ones((3, 3)))
  expected = labelling.order_segments(components, min_area=npix)
  np.testing.assert_array_equal(masks[0], expected)
  assert masks[0].max() >= 2  # the central pair and at least one neighbour


def test_filtered_noise_has_unit_sigma():
  rng = np.random.default_rng(1)
  noise = rng.normal(size=(256, 256))
  filtered = photutils_baseline.filtered_snr(noise, photutils_baseline.detection_kernel(2.5))
  assert abs(filtered[8:-8, 8:-8].std() - 1.0) < 0.05


def test_deblending_splits_two_touching_gaussians():
  yy, xx = np.mgrid[0:64, 0:64]
  snr = sum(40.0 * np.exp(-0.5 * ((xx - x) ** 2 + (yy - 31.5) ** 2) / 2.0 ** 2) for x in (26.0, 36.0))
  kw = dict(nsigma=2.0, n_pixels=5, fwhm_px=2.5, snr=snr[None])
  one = photutils_baseline.photutils_segment(np.zeros((1, 5, 64, 64)), contrast=1.0, **kw)[0]
  two = photutils_baseline.photutils_segment(np.zeros((1, 5, 64, 64)), contrast=0.001, **kw)[0]
  assert one.max() == 1 and two.max() == 2
  np.testing.assert_array_equal(one > 0, two > 0)
