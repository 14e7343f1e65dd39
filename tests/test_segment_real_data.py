"""segment.real_data and the wing on real pixels: SDSS frame cutouts and HSC scenes (skip without shared data)."""

import numpy as np
import pytest
from scipy import ndimage

from stargal_jax import paths
from stargal_jax.paths import shared_data_dir
from stargal_jax.segment import labelling, pixels, real_data, sep_baseline
from synthetic_scenes import fit_and_segment


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
  _, sigma = pixels.robust_background(images)
  # The cutout noise estimate agrees with SEP's background rms over the whole frame region, even
  # for cutouts of bright stars whose wings cover most of the cutout (clipping alone: up to 1.6x).
  np.testing.assert_allclose(sigma[:, 2], frame_rms, rtol=0.15)
  snr = np.nan_to_num(images[:, 2:3]) / sigma[:, 2, None, None, None]
  features = np.arcsinh(np.moveaxis(ndimage.gaussian_filter(snr, (0, 0, 1, 1)), 1, -1))
  ours, _ = fit_and_segment(features, images, k=4, seed=0, bands="r")
  base = sep_baseline.sep_segment(images, band="r", thresh_sigma=2.0)
  assert (ours == 1).any(axis=(1, 2)).all() and (base == 1).any(axis=(1, 2)).all()
  np.testing.assert_array_equal(sep_baseline.sep_segment(images[:2], band="gri", thresh_sigma=2.0), base[:2])
  # Ours traces a lower isophote than SEP at 2 sigma (no deblending either), so it must contain
  # SEP's central object rather than equal it.
  inside = ((ours == 1) & (base == 1)).sum(axis=(1, 2)) / (base == 1).sum(axis=(1, 2))
  assert inside.min() > 0.9
  masked = labelling.mask_neighbours(images, ours, seed=0)
  assert np.all(np.isnan(masked[:, 0])) and np.all(np.isfinite(masked[:, 2]))


def test_hsc_scene_noise_matched_to_training_sigma():
  path = paths.shared_data_dir() / "hsc_scarlet" / "hsc_cosmos_35.npz"
  if not path.is_file():
    pytest.skip(f"HSC scenes not found at {path}")
  sigma = np.array([0.06, 0.02, 0.03, 0.05, 0.2])
  cutout = real_data.hsc_scene_cutout(path, sigma)
  assert cutout.shape == (5, 64, 64) and np.isfinite(cutout).all()
  _, measured = pixels.robust_background(cutout[None].astype(np.float64))
  np.testing.assert_allclose(measured[0], sigma, rtol=0.15)
  # u is the g band at u's noise level: the same picture, scaled by the ratio of the sigmas.
  with np.load(path, allow_pickle=False) as f:
    h, w = f["images"].shape[1:]
  inside = np.s_[(64 - h) // 2:(64 - h) // 2 + h, (64 - w) // 2:(64 - w) // 2 + w]
  np.testing.assert_allclose(cutout[0][inside] * sigma[1] / sigma[0], cutout[1][inside], rtol=1e-4, atol=1e-6)
