"""Tests for stargal_jax.morphology on synthetic cutouts drawn here with numpy (and real SDSS pixels).

Point sources are circular Gaussians of known flux and width; galaxies are exponential discs
convolved with the Gaussian PSF (by FFT on a padded grid). Expected numbers come from closed
forms (enclosed flux of a Gaussian, the Gaussian-Gaussian matched-filter ratio) or from the
known input flux, not from the code under test.
"""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from stargal_jax import morphology, paths, photometry

SIZE = 64
CENTRE = SIZE // 2  # stargal_jax.CUTOUT_CENTRE
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def gaussian_stamp(flux, sigma, size=SIZE):
  y, x = np.indices((size, size))
  g = np.exp(-0.5 * ((y - CENTRE) ** 2 + (x - CENTRE) ** 2) / sigma ** 2)
  return flux * g / g.sum()


def exponential_stamp(flux, scale, psf_sigma, size=SIZE, pad=64):
  """Exponential disc (scale length `scale` px) convolved with a Gaussian PSF; total flux `flux`."""
  n = size + 2 * pad
  y, x = np.indices((n, n))
  r = np.hypot(y - n // 2, x - n // 2)
  disc = np.fft.ifftshift(np.exp(-r / scale))
  psf = np.fft.ifftshift(np.exp(-0.5 * (r / psf_sigma) ** 2))
  image = np.fft.fftshift(np.real(np.fft.ifft2(np.fft.fft2(disc) * np.fft.fft2(psf))))
  return (flux * image / image.sum())[pad:pad + size, pad:pad + size]


def five_bands(stamp):
  return np.repeat(stamp[None], 5, axis=0)


def make_sample(n_stars, n_galaxies, psf_sigma=1.5, noise=0.005, seed=0, background=0.0):
  """(images float32 (N, 5, 64, 64), is_galaxy, true flux): bright enough for clean separation."""
  rng = np.random.default_rng(seed)
  stamps, is_galaxy, fluxes = [], [], []
  for index in range(n_stars + n_galaxies):
    flux = 10 ** rng.uniform(1.5, 3.0)  # 30 - 1000 nanomaggies: r = 15 - 18.8
    galaxy = index >= n_stars
    stamp = (exponential_stamp(flux, rng.uniform(1.5, 4.0), psf_sigma) if galaxy
             else gaussian_stamp(flux, psf_sigma))
    stamps.append(five_bands(stamp) + background + rng.normal(0, noise, (5, SIZE, SIZE)))
    is_galaxy.append(galaxy)
    fluxes.append(flux)
  return np.array(stamps, np.float32), np.array(is_galaxy), np.array(fluxes)


@pytest.mark.parametrize("radius", [1.5, 5.0, morphology.PETROSIAN_LIKE_RADIUS_PX])
def test_aperture_weights_have_the_circle_area(radius):
  assert morphology.aperture_weights(radius).sum() == pytest.approx(math.pi * radius ** 2, rel=2e-3)


def test_r_magnitude_recovers_known_flux_with_background_offset():
  rng = np.random.default_rng(1)
  fluxes = 10 ** rng.uniform(1.3, 3.0, 12)  # r = 15 - 19.3
  stars = [five_bands(gaussian_stamp(f, 1.5)) for f in fluxes[:6]]
  galaxies = [five_bands(exponential_stamp(f, 2.0, 1.5)) for f in fluxes[6:]]
  # A constant residual sky of 0.2 nmgy/pixel (220 nmgy over the aperture) must be removed.
  images = np.array(stars + galaxies) + 0.2 + rng.normal(0, 0.005, (12, 5, SIZE, SIZE))
  expected = 22.5 - 2.5 * np.log10(fluxes)
  # Aperture noise 0.005 * sqrt(1097) = 0.17 nmgy: < 0.01 mag at 20 nmgy. An exponential of
  # scale 2 px holds 99.9% of its flux inside 18.7 px (1 - (1 + 9.3) exp(-9.3)).
  np.testing.assert_allclose(morphology.r_magnitude(images.astype(np.float32)), expected, atol=0.03)


def test_non_positive_flux_is_clipped_to_faint_magnitude():
  images = np.zeros((2, 5, SIZE, SIZE), np.float32)
  images[1, 2] = -gaussian_stamp(50.0, 1.5)
  np.testing.assert_array_equal(morphology.r_magnitude(images), [morphology.FAINT_MAG] * 2)


def test_concentration_of_gaussian_matches_enclosed_flux_formula():
  sigma = 2.5
  image = five_bands(gaussian_stamp(100.0, sigma))[None]
  enclosed = lambda r: 1.0 - math.exp(-r ** 2 / (2 * sigma ** 2))
  expected = enclosed(1.5) / enclosed(5.0)  # 0.1905
  assert morphology.concentration_index(image)[0] == pytest.approx(expected, rel=0.02)


def test_psf_flux_of_gaussian_galaxy_matches_closed_form():
  # Unit-sum Gaussians: sum(G_g G_p) / sum(G_p^2) = 2 s_p^2 / (s_g^2 + s_p^2).
  psf_sigma, galaxy_sigma, flux = 1.5, 3.0, 200.0
  images = np.array([five_bands(gaussian_stamp(flux, psf_sigma)),
                     five_bands(gaussian_stamp(flux, galaxy_sigma))])
  psf_flux = morphology.psf_weighted_flux(images, psf_sigma)
  expected_ratio = 2 * psf_sigma ** 2 / (galaxy_sigma ** 2 + psf_sigma ** 2)  # 0.4
  np.testing.assert_allclose(psf_flux, [flux, flux * expected_ratio], rtol=1e-3)
  difference = morphology.psf_minus_extended(images, psf_fwhm_px=psf_sigma * FWHM_PER_SIGMA,
                                            aperture_correction_mag=0.0)
  np.testing.assert_allclose(difference, [0.0, -2.5 * math.log10(expected_ratio)], atol=0.005)


@pytest.mark.parametrize("psf_sigma", [1.5, 2.0])
def test_adaptive_size_and_psf_estimate_recover_known_width(psf_sigma):
  images, is_galaxy, _ = make_sample(18, 42, psf_sigma=psf_sigma, seed=int(psf_sigma * 10))
  sizes = morphology.adaptive_size(images)
  np.testing.assert_allclose(sizes[~is_galaxy], psf_sigma, rtol=0.01)
  assert np.all(sizes[is_galaxy] > 1.2 * psf_sigma)
  fwhm = morphology.estimate_psf_fwhm(images, bright_fraction=1.0)
  assert fwhm == pytest.approx(psf_sigma * FWHM_PER_SIGMA, rel=0.03)


def test_classical_baselines_separate_points_from_extended():
  images, is_galaxy, _ = make_sample(15, 35, seed=3)
  concentration = morphology.concentration_index(images)
  difference = morphology.psf_minus_extended(images)  # PSF estimated from the images
  assert concentration[~is_galaxy].min() > concentration[is_galaxy].max()
  assert np.abs(difference[~is_galaxy]).max() < 0.05
  assert difference[is_galaxy].min() > morphology.SDSS_EXTENDED_CUT_MAG
  for name, score in morphology.classical_baseline_scores(images).items():
    assert roc_auc_score(is_galaxy, score) == 1.0, name
  np.testing.assert_allclose(morphology.extendedness(images), difference)


def test_aperture_correction_puts_winged_psf_stars_at_zero():
  # A realistic PSF: Gaussian core plus 15% of the flux in a wider wing, which the Gaussian
  # matched filter misses; stars then look ~0.1 mag "extended" until the correction.
  rng = np.random.default_rng(6)
  winged = lambda flux: 0.85 * gaussian_stamp(flux, 1.5) + 0.15 * gaussian_stamp(flux, 4.0)
  stars = [five_bands(winged(10 ** rng.uniform(1.5, 3))) for _ in range(15)]
  galaxies = [five_bands(exponential_stamp(10 ** rng.uniform(1.5, 3), rng.uniform(2, 4), 1.5))
              for _ in range(25)]
  images = np.array(stars + galaxies, np.float32) + rng.normal(0, 0.003, (40, 5, SIZE, SIZE))
  estimate = morphology.estimate_psf(images)
  raw = morphology.psf_minus_extended(images, psf_fwhm_px=estimate.fwhm_px, aperture_correction_mag=0)
  corrected = morphology.psf_minus_extended(images)
  assert raw[:15].min() > 0.05 and estimate.n_locus >= 5
  assert np.abs(corrected[:15]).max() < 0.02
  np.testing.assert_allclose(corrected, raw - estimate.aperture_correction_mag)
  assert corrected[15:].min() > morphology.SDSS_EXTENDED_CUT_MAG


def test_sdss_model_criteria_need_no_aperture_correction():
  # The same winged PSF: the model fits use the stacked PSF itself, wings included, so stars sit at 0
  # without the aperture correction the Gaussian matched filter needs.
  rng = np.random.default_rng(6)
  winged = lambda flux: 0.85 * gaussian_stamp(flux, 1.5) + 0.15 * gaussian_stamp(flux, 4.0)
  stars = [five_bands(winged(10 ** rng.uniform(1.5, 3))) for _ in range(15)]
  galaxies = [five_bands(exponential_stamp(10 ** rng.uniform(1.5, 3), rng.uniform(2, 4), 1.5))
              for _ in range(25)]
  images = np.array(stars + galaxies, np.float32) + rng.normal(0, 0.003, (40, 5, SIZE, SIZE))
  scores = morphology.classical_baseline_scores(images)
  difference = scores["sdss_psf_minus_cmodel"]
  assert np.abs(difference[:15]).max() < 0.03
  assert difference[15:].min() > morphology.SDSS_EXTENDED_CUT_MAG
  significance = scores["sdss_psf_minus_cmodel_significance"]
  assert significance[15:].min() > significance[:15].max()
  # A given PSF (here the true one, as a two-component mixture) goes through the same fits.
  truth = photometry.GaussianMixture(np.array([0.85, 0.15]), np.array([2.25 * np.eye(2), 16.0 * np.eye(2)]))
  given = morphology.sdss_model_criteria(images, psf=truth)
  expected = photometry.psf_minus_cmodel(photometry.fit_models(images, truth))
  np.testing.assert_allclose(given["psf_minus_cmodel"], expected)
  assert np.abs(given["psf_minus_cmodel"][:15]).max() < 0.03


def test_nan_pixels_do_not_propagate():
  images, _, _ = make_sample(2, 2, seed=4)
  holed = images.copy()
  holed[:, :, 31, 31] = np.nan  # a core pixel
  holed[:, :, 40:42, 10:14] = np.nan  # a patch in the wings
  holed[:, :, 0, :] = np.nan  # a row of the background region
  fwhm = 1.5 * FWHM_PER_SIGMA
  for measure in (morphology.r_magnitude, morphology.concentration_index):
    clean, with_holes = measure(images), measure(holed)
    assert np.all(np.isfinite(with_holes))
    np.testing.assert_allclose(with_holes, clean, rtol=0.02)
  raw = dict(psf_fwhm_px=fwhm, aperture_correction_mag=0.0)
  np.testing.assert_allclose(morphology.psf_minus_extended(holed, **raw),
                             morphology.psf_minus_extended(images, **raw), atol=0.02)
  empty = np.full((1, 5, SIZE, SIZE), np.nan, np.float32)
  both = np.concatenate([images, empty])
  assert morphology.r_magnitude(empty)[0] == morphology.FAINT_MAG
  scores = morphology.classical_baseline_scores(both, psf_fwhm_px=fwhm)
  assert all(np.all(np.isfinite(score)) for score in scores.values())


def test_chunked_and_memory_mapped_match(tmp_path, monkeypatch):
  images, _, _ = make_sample(3, 4, seed=5)
  whole = morphology.concentration_index(images)
  np.save(tmp_path / "images.npy", images, allow_pickle=False)
  mapped = np.load(tmp_path / "images.npy", mmap_mode="r", allow_pickle=False)
  monkeypatch.setattr(morphology, "CHUNK_SIZE", 3)
  np.testing.assert_allclose(morphology.concentration_index(mapped), whole, rtol=1e-12)


def _real_r_frame_stamps(max_stamps=150):
  """64 x 64 r-band stamps centred on isolated bright peaks of one real SDSS frame."""
  from astropy.io import fits
  from scipy import ndimage
  frame_dir = paths.shared_data_dir() / "sdss_frames" / "001035-6-0017"
  frame_path = frame_dir / "frame-r-001035-6-0017.fits.bz2"
  if not frame_path.is_file():
    pytest.skip(f"real SDSS frames not found under {frame_dir}")
  with fits.open(frame_path) as hdus:
    frame = np.asarray(hdus[0].data, dtype=np.float64)
  smooth = ndimage.gaussian_filter(frame, 1.5)
  peaks = (smooth == ndimage.maximum_filter(smooth, size=41)) & (smooth > 0.5)
  ys, xs = np.nonzero(peaks)
  keep = (ys >= 40) & (ys < frame.shape[0] - 40) & (xs >= 40) & (xs < frame.shape[1] - 40)
  stamps = []
  for y, x in zip(ys[keep], xs[keep]):
    # Shift the peak's centroid onto the array centre with a sub-pixel spline shift.
    box = frame[y - 40:y + 40, x - 40:x + 40]
    inner = np.clip(box[37:44, 37:44], 0, None)
    dy, dx = (np.array(ndimage.center_of_mass(inner)) - 3.0)
    shifted = ndimage.shift(box, (-dy, -dx), order=3, mode="nearest")  # centroid to (32, 32)
    stamps.append(shifted[8:72, 8:72])
  stamps = np.array(stamps[:max_stamps])
  return np.repeat(stamps[:, None], 5, axis=1).astype(np.float32)


def test_real_sdss_frame_psf_and_baselines_agree():
  images = _real_r_frame_stamps()
  assert len(images) >= 30
  fwhm = morphology.estimate_psf_fwhm(images)
  # SDSS seeing is 0.9" - 2.2" FWHM (2.3 - 5.6 px at 0.396"/px).
  assert 2.3 < fwhm < 5.6
  scores = morphology.classical_baseline_scores(images, psf_fwhm_px=fwhm)
  from scipy.stats import spearmanr
  # Two independent morphological measures must rank the same objects as extended.
  assert spearmanr(scores["concentration"], scores["psf_minus_extended"]).statistic > 0.6
  assert spearmanr(scores["concentration"], scores["sdss_psf_minus_cmodel"]).statistic > 0.6
